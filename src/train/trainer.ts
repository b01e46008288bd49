/**
 * Trainer: fp32 master weights in JS, one ORT session run per micro-batch for the loss and the
 * gradients of the trainable parameters (the training graph with its backward pass appended),
 * AdamW in JS, checkpoints in the HF format (bf16 safetensors + the source folder's config and
 * tokenizer files) plus optimiser state for resuming.
 */
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { loadModelConfig, type ModelConfig } from '../config/model-config.js';
import { llmQuantization } from '../config/quantization-config.js';
import { createSession } from '../engine/session.js';
import { InternVLError } from '../errors.js';
import { Checkpoint, float32ToBf16, type TensorToWrite, writeSafetensors } from '../io/safetensors.js';
import { loadTokenizer } from '../io/tokenizer-files.js';
import { appendBackward, GRAD_PREFIX } from './autodiff.js';
import { type PreparedBatch, prepareBatch, type TrainBatch } from './batch.js';
import { checksumFiles, verifyCheckpointFiles } from './checkpoint-integrity.js';
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
import { dropPathRates, keepMask, keyedRandom, uniform } from './random.js';

export type { TrainBatch } from './batch.js';
export type TrainingStage = 1 | 1.5 | 2;

/** The official freeze flags; a stage sets their defaults, explicit values override. */
export interface FreezeOptions {
  freezeLlm?: boolean;
  freezeBackbone?: boolean;
  freezeMlp?: boolean;
  /** k ≠ 0: ViT encoder layers[k:] are trainable even with a frozen backbone (negative k: the last |k|). */
  unfreezeVitLayers?: number;
  unfreezeLmHead?: boolean;
}

/** LoRA adapters of rank r and alpha 2r, like the official `use_llm_lora r` / `use_backbone_lora r`. */
export interface LoraOptions {
  rank: number;
  /** Dropout on the adapter input (official scripts: 0.05); default 0. */
  dropout?: number;
}

export interface TrainableSetOptions extends FreezeOptions {
  /** With LoRA the whole LLM base is frozen (PEFT's get_peft_model); only the adapters train there. */
  llmLora?: LoraOptions;
  /**
   * LoRA on InternViT's attn.qkv, attn.proj, mlp.fc1 and mlp.fc2 (`use_backbone_lora r`); the whole ViT
   * base is then frozen and only its adapters train.
   */
  vitLora?: LoraOptions;
}

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

interface Parameter {
  shape: number[];
  dtype: string;
  data: Float32Array;
}

interface CompiledGraph {
  session: ort.InferenceSession;
  params: string[];
  wrt: string[];
  noise: NoiseInput[];
}

interface LoraSetup {
  rank: number;
  scale: number;
  dropout: number;
  /** Adapted checkpoint weights, in checkpoint order. */
  targets: string[];
}

const STATE_FILE = 'trainer_state.json';
const OPTIMIZER_FILE = 'optimizer_state.safetensors';
const SESSION_CACHE = 4;

export function isVisionParameter(name: string): boolean {
  return name.startsWith('vision_model.');
}
export function isProjectorParameter(name: string): boolean {
  return name.startsWith('mlp1.');
}
export function isLmHeadParameter(name: string): boolean {
  return name === 'language_model.lm_head.weight' || name === 'language_model.output.weight';
}

const LORA_TARGET =
  /^language_model\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|attention\.(wqkv|wo)|feed_forward\.w[123])\.weight$/;

/** LLM Linear weights that `use_llm_lora` adapts (Qwen2 q/k/v/o/gate/up/down, InternLM2 wqkv/wo/w1/w2/w3). */
export function isLoraTarget(name: string): boolean {
  return LORA_TARGET.test(name);
}

const VIT_LORA_TARGET = /^vision_model\.encoder\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])\.weight$/;

/** InternViT Linear weights that `use_backbone_lora` adapts (the official wrap_backbone_lora targets). */
export function isVitLoraTarget(name: string): boolean {
  return VIT_LORA_TARGET.test(name);
}

/**
 * Parameters the HF Trainer puts in its no-decay group: biases, and the weights of normalisation
 * layers (get_decay_parameter_names excludes nn.LayerNorm parameters and names containing "bias";
 * the RMSNorm weights follow newer transformers releases, which also exclude norm layers by name).
 * `mlp1.0` is the projector's LayerNorm.
 */
export function excludedFromWeightDecay(name: string): boolean {
  if (name.includes('bias')) return true;
  if (name.startsWith('mlp1.0.')) return true;
  return /(^|\.)[^.]*norm[^.]*\.weight$/i.test(name);
}

/** The checkpoint names that train under a stage and freeze flags (internvl_chat_finetune.py semantics). */
export function trainableParameters(
  names: readonly string[],
  config: ModelConfig,
  stage: TrainingStage,
  flags: TrainableSetOptions = {},
): string[] {
  if (stage !== 1 && stage !== 1.5 && stage !== 2) {
    throw new InternVLError('BAD_INPUT', `stage must be 1, 1.5 or 2, got ${JSON.stringify(stage)}`);
  }
  const lora = flags.llmLora !== undefined;
  const freezeLlm = lora || (flags.freezeLlm ?? stage !== 2);
  const freezeBackbone = flags.vitLora !== undefined || (flags.freezeBackbone ?? stage === 1);
  const freezeMlp = flags.freezeMlp ?? false;
  const layers = config.vision_config.num_hidden_layers;
  const k = flags.unfreezeVitLayers ?? 0;
  const firstUnfrozen = k === 0 ? layers : k < 0 ? Math.max(0, layers + k) : k;
  const vitLayer = (name: string) => /^vision_model\.encoder\.layers\.(\d+)\./.exec(name);
  return names.filter((name) => {
    if (isVisionParameter(name)) {
      if (!freezeBackbone) return true;
      const m = vitLayer(name);
      return m !== null && Number(m[1]) >= firstUnfrozen;
    }
    if (isProjectorParameter(name)) return !freezeMlp;
    if (isLmHeadParameter(name) && flags.unfreezeLmHead && !lora) return true;
    return !freezeLlm;
  });
}

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
    if (options.resume) await trainer.#loadState(dir);
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
    await this.#saveState(out, extra);
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

  async #saveState(dir: string, extra: Record<string, unknown> | undefined): Promise<void> {
    const tensors: Record<string, TensorToWrite> = {};
    for (const name of this.trainable) {
      const p = this.params.get(name)!;
      tensors[`master.${name}`] = { dtype: 'F32', shape: p.shape, data: p.data };
      const m = this.#moments.get(name);
      if (m) {
        tensors[`exp_avg.${name}`] = { dtype: 'F32', shape: p.shape, data: m.expAvg };
        tensors[`exp_avg_sq.${name}`] = { dtype: 'F32', shape: p.shape, data: m.expAvgSq };
      }
    }
    // model.safetensors holds the merged weights; resuming needs the frozen base of each LoRA target.
    for (const name of this.lora.flatMap((l) => l.targets)) {
      const p = this.params.get(name)!;
      tensors[`lora_base.${name}`] =
        p.dtype === 'BF16'
          ? { dtype: 'BF16', shape: p.shape, data: float32ToBf16(p.data) }
          : { dtype: 'F32', shape: p.shape, data: p.data };
    }
    await writeSafetensors(path.join(dir, OPTIMIZER_FILE), tensors);
    const state = {
      step: this.#step,
      stage: this.stage,
      seed: this.seed,
      trainable: this.trainable,
      ...(extra ? { extra } : {}),
      // Every file save wrote, so a resume can tell a damaged checkpoint from an intact one.
      files: await checksumFiles(dir, [...this.sideFiles.keys(), 'model.safetensors', OPTIMIZER_FILE]),
    };
    const file = path.join(dir, STATE_FILE);
    await writeFile(`${file}.tmp`, `${JSON.stringify(state, null, 1)}\n`);
    await rename(`${file}.tmp`, file);
  }

  async #loadState(dir: string): Promise<void> {
    let state: { step?: unknown; trainable?: unknown; extra?: unknown };
    try {
      state = JSON.parse(await readFile(path.join(dir, STATE_FILE), 'utf8'));
    } catch (err) {
      throw new InternVLError('NOT_FOUND', `${dir}: no readable ${STATE_FILE} to resume from`, {
        cause: err,
      });
    }
    if (!Number.isInteger(state.step) || (state.step as number) < 0) {
      throw new InternVLError(
        'BAD_CHECKPOINT',
        `${path.join(dir, STATE_FILE)}: "step" must be a non-negative integer`,
      );
    }
    if (Array.isArray(state.trainable)) {
      const saved = [...(state.trainable as string[])].sort();
      const now = [...this.trainable].sort();
      if (saved.length !== now.length || saved.some((n, i) => n !== now[i])) {
        throw new InternVLError(
          'BAD_INPUT',
          `${path.join(dir, STATE_FILE)}: the checkpoint trained ${saved.length} tensors, this run would train ${now.length} (resume with the same stage, freeze and LoRA options)`,
        );
      }
    }
    const file = path.join(dir, OPTIMIZER_FILE);
    const saved = await Checkpoint.open(file);
    try {
      for (const name of this.lora.flatMap((l) => l.targets)) {
        if (!saved.has(`lora_base.${name}`)) {
          throw new InternVLError('BAD_CHECKPOINT', `${file}: lora_base.${name} is missing`);
        }
        this.params.get(name)!.data.set(await saved.readFloat32(`lora_base.${name}`));
      }
      for (const name of this.trainable) {
        const p = this.params.get(name)!;
        if (saved.has(`master.${name}`)) p.data.set(await saved.readFloat32(`master.${name}`));
        if (saved.has(`exp_avg.${name}`)) {
          this.#moments.set(name, {
            expAvg: Float32Array.from(await saved.readFloat32(`exp_avg.${name}`)),
            expAvgSq: Float32Array.from(await saved.readFloat32(`exp_avg_sq.${name}`)),
          });
        }
      }
    } finally {
      await saved.close();
    }
    this.#step = state.step as number;
    if (state.extra && typeof state.extra === 'object')
      this.#resumedExtra = state.extra as Record<string, unknown>;
  }
}

/** Every file of a checkpoint folder but its weights and trainer state. */
async function readSideFiles(dir: string): Promise<Map<string, Uint8Array>> {
  const files = new Map<string, Uint8Array>();
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (!entry.isFile()) continue;
    if (entry.name.endsWith('.safetensors') || entry.name === 'model.safetensors.index.json') continue;
    if (entry.name === STATE_FILE || entry.name.endsWith('.tmp')) continue;
    files.set(entry.name, await readFile(path.join(dir, entry.name)));
  }
  return files;
}

/**
 * Adds zero-initialised B and kaiming-uniform A (PEFT: kaiming_uniform_(a=√5), i.e. U(±1/√in)) for
 * every LoRA target of the checkpoint; A is seeded by the run seed and the weight name.
 */
function setUpLora(
  order: readonly string[],
  params: Map<string, Parameter>,
  options: LoraOptions,
  seed: number,
  option: 'llmLora' | 'vitLora',
): LoraSetup {
  const { rank } = options;
  const dropout = options.dropout ?? 0;
  if (!Number.isInteger(rank) || rank < 1) {
    throw new InternVLError('BAD_INPUT', `${option}.rank must be a positive integer, got ${rank}`);
  }
  if (!(dropout >= 0 && dropout < 1)) {
    throw new InternVLError('BAD_INPUT', `${option}.dropout must be in [0, 1), got ${dropout}`);
  }
  const targets = order.filter(option === 'llmLora' ? isLoraTarget : isVitLoraTarget);
  if (targets.length === 0) {
    throw new InternVLError(
      'BAD_CHECKPOINT',
      option === 'llmLora'
        ? 'LoRA: the checkpoint has no Qwen2 or InternLM2 Linear layers to adapt'
        : 'LoRA: the checkpoint has no InternViT attn.qkv / attn.proj / mlp.fc1 / mlp.fc2 layers to adapt',
    );
  }
  for (const w of targets) {
    const [out, inFeatures] = params.get(w)!.shape;
    const names = loraParameterNames(w);
    params.set(names.a, {
      shape: [rank, inFeatures],
      dtype: 'F32',
      data: uniform(rank * inFeatures, 1 / Math.sqrt(inFeatures), keyedRandom(seed, 'lora_A', w)),
    });
    params.set(names.b, { shape: [out, rank], dtype: 'F32', data: new Float32Array(out * rank) });
  }
  return { rank, scale: (2 * rank) / rank, dropout, targets };
}
