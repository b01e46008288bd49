/**
 * Trainer: fp32 master weights in JS, one ORT session run per micro-batch for the loss and the
 * gradients of the trainable parameters (the training graph with its backward pass appended),
 * AdamW in JS, checkpoints in the HF format (bf16 safetensors + the source folder's config and
 * tokenizer files) plus optimiser state for resuming.
 */
import path from 'node:path';
import type * as ort from 'onnxruntime-node';
import type { ModelConfig } from '../config/model-config.js';
import { llmQuantization } from '../config/quantization-config.js';
import { InternVLError } from '../errors.js';
import { Checkpoint } from '../io/safetensors.js';
import { loadTokenizer } from '../io/tokenizer-files.js';
import { loadModelConfig } from '../models/model-config.js';
import { GRAD_PREFIX } from './autodiff.js';
import { type PreparedBatch, prepareBatch, type TrainBatch } from './batch.js';
import { verifyCheckpointFiles } from './checkpoint-integrity.js';
import {
  type AdamState,
  adamwUpdate,
  clipGradNorm,
  learningRate,
  type OptimizerOptions,
  type ResolvedOptimizer,
  resolveOptimizer,
} from './optimizer.js';
import { loraParameterNames, type NoiseInput } from './param-graph.js';
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
import { batchFeeds, type CompiledGraph, CompiledGraphCache } from './trainer-graphs.js';
import { writeModelFiles } from './trainer-save.js';
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

export class Trainer {
  #closed = false;
  #step = 0;
  #resumedExtra: Record<string, unknown> | undefined;
  readonly #graphs: CompiledGraphCache;
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
    threads: number | undefined,
    readonly seed: number,
    /** LoRA adapter groups (LLM, ViT); empty without LoRA. */
    private readonly lora: readonly LoraSetup[],
    /** Drop-path rate of each ViT encoder layer (all zero: none). */
    readonly dropPathRates: readonly number[],
    /** The source folder's other files (config, tokenizer…), read at creation: the folder may go away. */
    private readonly sideFiles: ReadonlyMap<string, Uint8Array>,
  ) {
    this.#graphs = new CompiledGraphCache({ config, params, trainable, lora, dropPathRates, threads });
  }

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
    const compiled = await this.#graphs.get(prepared, 'logits');
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
    await writeModelFiles(out, {
      order: this.order,
      params: this.params,
      lora: this.lora,
      sideFiles: this.sideFiles,
    });
    await saveTrainerState(out, this.#step, this.#stateParts(), extra);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#graphs.releaseAll();
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
    const compiled = await this.#graphs.get(prepared, 'loss');
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

  #feeds(prepared: PreparedBatch, compiled: CompiledGraph, micro: number): Record<string, ort.Tensor> {
    return batchFeeds(this.config, prepared, compiled, this.params, (noise) =>
      this.noiseScales(noise, micro),
    );
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
