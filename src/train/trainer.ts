/**
 * Trainer: fp32 master weights in JS, one ORT session run per micro-batch for the loss and the
 * gradients of the trainable parameters (the training graph with its backward pass appended),
 * AdamW in JS, checkpoints in the HF format (bf16 safetensors + the source folder's config and
 * tokenizer files) plus optimiser state for resuming.
 */
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { ModelConfig } from '../config/model-config.js';
import { llmQuantization } from '../config/quantization-config.js';
import { createSession } from '../engine/session.js';
import { InternVLError } from '../errors.js';
import { float32ToBf16 } from '../io/float-formats.js';
import { Checkpoint } from '../io/safetensors.js';
import { type TensorToWrite, writeSafetensors } from '../io/safetensors-write.js';
import { loadTokenizer } from '../io/tokenizer-files.js';
import { loadModelConfig } from '../models/model-config.js';
import { appendBackward, GRAD_PREFIX } from './autodiff.js';
import { type PreparedBatch, prepareBatch, type TrainBatch } from './batch.js';
import { verifyCheckpointFiles } from './checkpoint-integrity.js';
import { buildTrainingGraph } from './model-graph.js';
import {
  type AdamState,
  adamwUpdate,
  clipGradNorm,
  learningRate,
  type OptimizerOptions,
  type ResolvedOptimizer,
  resolveOptimizer,
} from './optimizer.js';
import { BATCH_INPUTS, loraParameterNames, type NoiseInput } from './param-graph.js';
import { dropPathRates, keepMask, keyedRandom } from './random.js';
import {
  excludedFromWeightDecay,
  type LoraSetup,
  type Parameter,
  setUpLora,
  type TrainableSetOptions,
  type TrainingStage,
  trainableParameters,
} from './trainable.js';
import {
  loadTrainerState,
  readSideFiles,
  STATE_FILE,
  saveTrainerState,
  type TrainerStateParts,
} from './trainer-state.js';

export type { TrainBatch } from './batch.js';
export type { TrainingStage } from './trainable.js';
export interface TrainerOptions extends TrainableSetOptions {
  /** Checkpoint folder (config.json, model.safetensors, tokenizer files). */
  model: string;
  stage: TrainingStage;
  optimizer: OptimizerOptions;
  /** Recorded in the state; makes data order reproducible for callers that draw from it. */
  seed?: number;
  /** Continue from the optimiser state saved in `model` by `save` (step, moments, fp32 masters). */
  resume?: boolean;
  threads?: number;
  /** ViT drop-path rate (the official `--drop_path_rate`); default `vision_config.drop_path_rate`. */
  dropPathRate?: number;
}

export interface StepResult {
  loss: number;
  gradNorm: number;
  lr: number;
  /** Supervised tokens in the step's micro-batches. */
  tokens: number;
  step: number;
}

interface CompiledGraph {
  session: ort.InferenceSession;
  params: string[];
  wrt: string[];
  noise: NoiseInput[];
}

const SESSION_CACHE = 4;

export class Trainer {
  #closed = false;
  #step = 0;
  #resumedExtra: Record<string, unknown> | undefined;
  readonly #sessions = new Map<string, Promise<CompiledGraph>>();
  readonly #moments = new Map<string, AdamState>();

  private constructor(
    readonly config: ModelConfig,
    readonly modelDir: string,
    readonly stage: TrainingStage,
    readonly trainable: readonly string[],
    private readonly params: Map<string, Parameter>,
    private readonly order: string[],
    private readonly optimizer: ResolvedOptimizer,
    private readonly imageContextTokenId: number,
    private readonly threads: number | undefined,
    readonly seed: number,
    /** LoRA adapter groups (LLM, ViT); empty without LoRA. */
    private readonly lora: readonly LoraSetup[],
    /** Drop-path rate of each ViT encoder layer (all zero: none). */
    readonly dropPathRates: readonly number[],
    /** The source folder's other files (config, tokenizer…), read at creation: the folder may go away. */
    private readonly sideFiles: ReadonlyMap<string, Uint8Array>,
  ) {}

  static async create(options: TrainerOptions): Promise<Trainer> {
    const dir = path.resolve(options.model);
    // A checkpoint to resume from is checked against its saved checksums before any file is read.
    if (options.resume) await verifyCheckpointFiles(dir, STATE_FILE);
    const config = await loadModelConfig(dir);
    const quantization = llmQuantization(config);
    if (quantization) {
      throw new InternVLError(
        'UNSUPPORTED',
        `${dir}: a 4-bit (${quantization.method}) checkpoint cannot be trained; train its 16-bit original instead`,
      );
    }
    if (config.checkpoint_layout === 'transformers') {
      throw new InternVLError(
        'UNSUPPORTED',
        `${dir}: a transformers-layout (InternVLForConditionalGeneration) checkpoint cannot be trained yet; train the original InternVLChatModel checkpoint`,
      );
    }
    const optimizer = resolveOptimizer(options.optimizer);
    const tokenizer = await loadTokenizer(dir);
    const imageContextTokenId = tokenizer.tokenToId('<IMG_CONTEXT>');
    if (imageContextTokenId === undefined) {
      throw new InternVLError('BAD_TOKENIZER', `${dir}: the tokenizer has no <IMG_CONTEXT> token`);
    }
    const checkpoint = await Checkpoint.open(dir);
    const params = new Map<string, Parameter>();
    const order = checkpoint.names();
    try {
      for (const name of order) {
        const info = checkpoint.info(name);
        if (!['F32', 'BF16', 'F16', 'F64'].includes(info.dtype)) {
          throw new InternVLError(
            'UNSUPPORTED',
            `${checkpoint.source}: tensor ${name} is ${info.dtype}; training needs float tensors`,
          );
        }
        params.set(name, {
          shape: [...info.shape],
          dtype: info.dtype,
          data: Float32Array.from(await checkpoint.readFloat32(name)),
        });
      }
    } finally {
      await checkpoint.close();
    }
    const lora: LoraSetup[] = [];
    if (options.llmLora) lora.push(setUpLora(order, params, options.llmLora, options.seed ?? 0, 'llmLora'));
    if (options.vitLora) lora.push(setUpLora(order, params, options.vitLora, options.seed ?? 0, 'vitLora'));
    const trainable = trainableParameters(order, config, options.stage, options);
    for (const w of lora.flatMap((l) => l.targets)) trainable.push(...Object.values(loraParameterNames(w)));
    const dropPathRate = options.dropPathRate ?? config.vision_config.drop_path_rate;
    if (!(dropPathRate >= 0 && dropPathRate < 1)) {
      throw new InternVLError('BAD_INPUT', `dropPathRate must be in [0, 1), got ${dropPathRate}`);
    }
    const trainer = new Trainer(
      config,
      dir,
      options.stage,
      trainable,
      params,
      order,
      optimizer,
      imageContextTokenId,
      options.threads,
      options.seed ?? 0,
      lora,
      dropPathRates(dropPathRate, config.vision_config.num_hidden_layers),
      await readSideFiles(dir),
    );
    if (options.resume) {
      const { step, extra } = await loadTrainerState(dir, trainer.#stateParts());
      trainer.#step = step;
      trainer.#resumedExtra = extra;
    }
    return trainer;
  }

  /** Optimizer steps taken (including those before a resume). */
  get stepCount(): number {
    return this.#step;
  }

  /** The `extra` object given to the `save` this trainer resumed from (e.g. the CLI's data position). */
  get resumedExtra(): Record<string, unknown> | undefined {
    return this.#resumedExtra;
  }

  /** A copy of the current fp32 master of a checkpoint tensor or LoRA adapter (un-merged). */
  parameter(name: string): Float32Array {
    const p = this.params.get(name);
    if (!p) throw new InternVLError('NOT_FOUND', `parameter ${name} is not in the model`);
    return p.data.slice();
  }

  parameterNames(): string[] {
    return [...this.order];
  }

  /** Loss of one packed batch and the gradients of the trainable parameters (nothing is updated). */
  async lossAndGradients(batch: TrainBatch): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
    const { loss, grads } = await this.#lossAndGradients(this.#prepare(batch, true), 0);
    return { loss, grads };
  }

  /**
   * One optimizer step. An array of micro-batches accumulates their gradients (averaged, as the HF
   * Trainer divides each micro-batch loss by the accumulation count); the reported loss is their mean.
   */
  async step(batch: TrainBatch | readonly TrainBatch[]): Promise<StepResult> {
    const micro = Array.isArray(batch) ? batch : [batch as TrainBatch];
    if (micro.length === 0) throw new InternVLError('BAD_INPUT', 'step needs at least one batch');
    const total = new Map<string, Float32Array>();
    let lossSum = 0;
    let tokens = 0;
    for (const [index, b] of micro.entries()) {
      const prepared = this.#prepare(b, true);
      const { loss, grads } = await this.#lossAndGradients(prepared, index);
      lossSum += loss;
      tokens += prepared.tokens;
      for (const [name, g] of grads) {
        const acc = total.get(name);
        if (!acc) total.set(name, g);
        else for (let i = 0; i < g.length; i++) acc[i] += g[i];
      }
    }
    if (micro.length > 1)
      for (const g of total.values()) for (let i = 0; i < g.length; i++) g[i] /= micro.length;
    const gradNorm =
      this.optimizer.maxGradNorm !== undefined
        ? clipGradNorm(total.values(), this.optimizer.maxGradNorm)
        : Math.sqrt([...total.values()].reduce((s, g) => s + g.reduce((a, x) => a + x * x, 0), 0));
    const lr = learningRate(this.optimizer, this.#step);
    const stepNumber = this.#step + 1;
    for (const name of this.trainable) {
      const p = this.params.get(name)!;
      let state = this.#moments.get(name);
      if (!state) {
        state = { expAvg: new Float32Array(p.data.length), expAvgSq: new Float32Array(p.data.length) };
        this.#moments.set(name, state);
      }
      const weightDecay =
        this.optimizer.decayNormsAndBiases || !excludedFromWeightDecay(name) ? this.optimizer.weightDecay : 0;
      adamwUpdate(p.data, total.get(name)!, state, { ...this.optimizer, lr, weightDecay }, stepNumber);
    }
    this.#step = stepNumber;
    return { loss: lossSum / micro.length, gradNorm, lr, tokens, step: this.#step };
  }

  /** Logits of every position of a batch's sequence, [T, vocab] (labels and weights unused). */
  async logits(
    batch: Pick<TrainBatch, 'inputIds' | 'cuSeqlens' | 'pixelValues' | 'numTiles'>,
  ): Promise<Float32Array> {
    const T = batch.inputIds.length;
    const prepared = this.#prepare(
      { ...batch, labels: new Int32Array(T).fill(-100), lossWeight: new Float32Array(T) },
      false,
    );
    const compiled = await this.#compiled(prepared, 'logits');
    const out = await compiled.session.run(this.#feeds(prepared, compiled, 0), ['logits']);
    return Float32Array.from(out.logits.data as Float32Array);
  }

  /**
   * Writes an HF-format checkpoint to `dir`: model.safetensors (bf16; other dtypes kept; LoRA merged
   * into the base weights as W + (α/r)·B·A so the engine and the official code load it), every other
   * file of the source folder (config.json, tokenizer files…), and the optimiser state for `resume`,
   * with `extra` (JSON) kept for `resumedExtra`. Each file is written atomically and the state file
   * last, after removing the old one: a folder without trainer_state.json is never resumed from.
   */
  async save(dir: string, extra?: Record<string, unknown>): Promise<void> {
    this.#assertOpen();
    const out = path.resolve(dir);
    await mkdir(out, { recursive: true });
    await rm(path.join(out, STATE_FILE), { force: true });
    for (const [name, bytes] of this.sideFiles) {
      const target = path.join(out, name);
      await writeFile(`${target}.tmp`, bytes);
      await rename(`${target}.tmp`, target);
    }
    const merged = this.#mergedLoraWeights();
    const tensors: Record<string, TensorToWrite> = {};
    for (const name of this.order) {
      const p = this.params.get(name)!;
      const data = merged.get(name) ?? p.data;
      tensors[name] =
        p.dtype === 'F32'
          ? { dtype: 'F32', shape: p.shape, data }
          : { dtype: 'BF16', shape: p.shape, data: float32ToBf16(data) };
    }
    await writeSafetensors(path.join(out, 'model.safetensors'), tensors, { format: 'pt' });
    await saveTrainerState(out, this.#step, this.#stateParts(), extra);
  }

  /** W + scale·B·A for every LoRA target (fp32, accumulated in float64 per element). */
  #mergedLoraWeights(): Map<string, Float32Array> {
    const merged = new Map<string, Float32Array>();
    for (const { rank, scale, targets } of this.lora)
      for (const w of targets) {
        const base = this.params.get(w)!;
        const names = loraParameterNames(w);
        const A = this.params.get(names.a)!.data;
        const B = this.params.get(names.b)!.data;
        const [rows, cols] = base.shape;
        const out = new Float32Array(base.data.length);
        const delta = new Float64Array(cols);
        for (let o = 0; o < rows; o++) {
          delta.fill(0);
          for (let k = 0; k < rank; k++) {
            const b = B[o * rank + k];
            if (b === 0) continue;
            for (let i = 0; i < cols; i++) delta[i] += b * A[k * cols + i];
          }
          for (let i = 0; i < cols; i++) out[o * cols + i] = base.data[o * cols + i] + scale * delta[i];
        }
        merged.set(w, out);
      }
    return merged;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const sessions = [...this.#sessions.values()];
    this.#sessions.clear();
    for (const s of sessions) await (await s.catch(() => undefined))?.session.release();
  }

  #assertOpen(): void {
    if (this.#closed) throw new InternVLError('BAD_INPUT', 'the trainer is closed');
  }

  #prepare(batch: TrainBatch, loss: boolean): PreparedBatch {
    this.#assertOpen();
    return prepareBatch(this.config, batch, {
      imageContextTokenId: this.imageContextTokenId,
      padSeqTo: loss ? 32 : 1,
      padRowsTo: loss ? 16 : 1,
      loss,
    });
  }

  async #lossAndGradients(
    prepared: PreparedBatch,
    micro: number,
  ): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
    const compiled = await this.#compiled(prepared, 'loss');
    const out = await compiled.session.run(this.#feeds(prepared, compiled, micro));
    const loss = (out.loss.data as Float32Array)[0];
    if (!Number.isFinite(loss)) throw new InternVLError('INTERNAL', `training loss is ${loss}`);
    const grads = new Map<string, Float32Array>();
    for (const name of this.trainable) {
      const t = out[`${GRAD_PREFIX}${name}`];
      grads.set(
        name,
        t ? Float32Array.from(t.data as Float32Array) : new Float32Array(this.params.get(name)!.data.length),
      );
    }
    return { loss, grads };
  }

  #compiled(prepared: PreparedBatch, mode: 'loss' | 'logits'): Promise<CompiledGraph> {
    const key = `${mode}:${prepared.seqLen}:${prepared.numTiles}:${prepared.numSupervised}`;
    let entry = this.#sessions.get(key);
    if (entry) {
      this.#sessions.delete(key);
      this.#sessions.set(key, entry);
      return entry;
    }
    entry = this.#build(prepared, mode);
    this.#sessions.set(key, entry);
    if (this.#sessions.size > SESSION_CACHE) {
      const [oldestKey, oldest] = this.#sessions.entries().next().value as [string, Promise<CompiledGraph>];
      this.#sessions.delete(oldestKey);
      void oldest.then((c) => c.session.release()).catch(() => {});
    }
    entry.catch(() => this.#sessions.delete(key));
    return entry;
  }

  async #build(prepared: PreparedBatch, mode: 'loss' | 'logits'): Promise<CompiledGraph> {
    const shapes = new Map<string, number[]>();
    for (const [name, p] of this.params) shapes.set(name, p.shape);
    const forward = await buildTrainingGraph({
      config: this.config,
      paramShapes: shapes,
      seqLen: prepared.seqLen,
      numTiles: prepared.numTiles,
      numSupervised: prepared.numSupervised,
      mode,
      lora:
        this.lora.length === 0
          ? undefined
          : {
              targets: new Map(
                this.lora.flatMap(({ scale, dropout, targets }) =>
                  targets.map((w) => [w, { scale, dropout }] as const),
                ),
              ),
            },
      dropPathRates: this.dropPathRates,
    });
    const used = new Set(forward.params);
    const wrt = mode === 'loss' ? this.trainable.filter((n) => used.has(n)) : [];
    const graph = wrt.length > 0 ? appendBackward(forward.graph, { loss: 'loss', wrt }) : forward.graph;
    const session = await createSession(graph, { threads: this.threads });
    return { session, params: forward.params, wrt, noise: forward.noise };
  }

  #feeds(b: PreparedBatch, compiled: CompiledGraph, micro: number): Record<string, ort.Tensor> {
    const T = b.seqLen;
    const d = this.config.llm_config.head_dim;
    const feeds: Record<string, ort.Tensor> = {
      [BATCH_INPUTS.inputIds]: new ort.Tensor('int64', b.inputIds, [T]),
      [BATCH_INPUTS.segmentIds]: new ort.Tensor('int64', b.segmentIds, [T]),
      [BATCH_INPUTS.positionIds]: new ort.Tensor('int64', b.positionIds, [T]),
      [BATCH_INPUTS.ropeCos]: new ort.Tensor('float32', b.ropeCos, [T, d]),
      [BATCH_INPUTS.ropeSin]: new ort.Tensor('float32', b.ropeSin, [T, d]),
    };
    if (b.numTiles > 0 && b.pixelValues) {
      const S = Math.sqrt(b.pixelValues.length / (b.numTiles * this.config.vision_config.num_channels));
      feeds[BATCH_INPUTS.pixelValues] = new ort.Tensor('float32', b.pixelValues, [
        b.numTiles,
        this.config.vision_config.num_channels,
        S,
        S,
      ]);
      feeds[BATCH_INPUTS.imageRows] = new ort.Tensor('int64', b.imageRows, [b.imageRows.length, 1]);
    }
    if (b.numSupervised > 0 && b.lossRows.length > 0) {
      const K = b.numSupervised;
      feeds[BATCH_INPUTS.lossRows] = new ort.Tensor('int64', b.lossRows, [K]);
      feeds[BATCH_INPUTS.lossTargets] = new ort.Tensor('int64', b.lossTargets, [K, 1]);
      feeds[BATCH_INPUTS.lossWeights] = new ort.Tensor('float32', b.lossWeights, [K]);
    }
    for (const name of compiled.params) {
      const p = this.params.get(name)!;
      feeds[name] = new ort.Tensor('float32', p.data, p.shape);
    }
    for (const noise of compiled.noise) {
      feeds[noise.name] = new ort.Tensor('float32', this.noiseScales(noise, micro), noise.shape);
    }
    return feeds;
  }

  /**
   * The inverted-dropout scales fed to a noise input (LoRA dropout or ViT drop-path) at the current
   * step and micro-batch: a pure function of (seed, step, micro-batch, input name), so runs repeat.
   */
  noiseScales(noise: NoiseInput, micro: number): Float32Array {
    const count = noise.shape.reduce((a, b) => a * b, 1);
    return keepMask(
      count,
      noise.dropProbability,
      keyedRandom(this.seed, 'noise', this.#step, micro, noise.name),
    );
  }

  #stateParts(): TrainerStateParts {
    return {
      stage: this.stage,
      seed: this.seed,
      trainable: this.trainable,
      params: this.params,
      moments: this.#moments,
      loraTargets: this.lora.flatMap((l) => l.targets),
      sideFiles: [...this.sideFiles.keys()],
    };
  }
}
