/**
 * Trainer: fp32 master weights in JS, one ORT session run per micro-batch for the loss and the
 * gradients of the trainable parameters (the training graph with its backward pass appended),
 * AdamW in JS, checkpoints in the HF format (bf16 safetensors + the source folder's config and
 * tokenizer files) plus optimiser state for resuming.
 */
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { loadModelConfig, type ModelConfig } from '../config/model-config.js';
import { createSession } from '../engine/session.js';
import { InternVLError } from '../errors.js';
import { Checkpoint, float32ToBf16, type TensorToWrite, writeSafetensors } from '../io/safetensors.js';
import { loadTokenizer } from '../io/tokenizer-files.js';
import { appendBackward, GRAD_PREFIX } from './autodiff.js';
import { type PreparedBatch, prepareBatch, type TrainBatch } from './batch.js';
import { BATCH_INPUTS, buildTrainingGraph } from './model-graph.js';
import {
  type AdamState,
  adamwUpdate,
  clipGradNorm,
  learningRate,
  type OptimizerOptions,
  type ResolvedOptimizer,
  resolveOptimizer,
} from './optimizer.js';

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

export interface TrainerOptions extends FreezeOptions {
  /** Checkpoint folder (config.json, model.safetensors, tokenizer files). */
  model: string;
  stage: TrainingStage;
  optimizer: OptimizerOptions;
  /** Recorded in the state; makes data order reproducible for callers that draw from it. */
  seed?: number;
  /** Continue from the optimiser state saved in `model` by `save` (step, moments, fp32 masters). */
  resume?: boolean;
  threads?: number;
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

/** The checkpoint names that train under a stage and freeze flags (internvl_chat_finetune.py semantics). */
export function trainableParameters(
  names: readonly string[],
  config: ModelConfig,
  stage: TrainingStage,
  flags: FreezeOptions = {},
): string[] {
  if (stage !== 1 && stage !== 1.5 && stage !== 2) {
    throw new InternVLError('BAD_INPUT', `stage must be 1, 1.5 or 2, got ${JSON.stringify(stage)}`);
  }
  const freezeLlm = flags.freezeLlm ?? stage !== 2;
  const freezeBackbone = flags.freezeBackbone ?? stage === 1;
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
    if (isLmHeadParameter(name) && flags.unfreezeLmHead) return true;
    return !freezeLlm;
  });
}

export class Trainer {
  #closed = false;
  #step = 0;
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
  ) {}

  static async create(options: TrainerOptions): Promise<Trainer> {
    const dir = path.resolve(options.model);
    const config = await loadModelConfig(dir);
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
    const trainable = trainableParameters(order, config, options.stage, options);
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
    );
    if (options.resume) await trainer.#loadState(dir);
    return trainer;
  }

  /** Optimizer steps taken (including those before a resume). */
  get stepCount(): number {
    return this.#step;
  }

  /** A copy of the current fp32 master of a checkpoint tensor. */
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
    const { loss, grads } = await this.#lossAndGradients(this.#prepare(batch, true));
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
    for (const b of micro) {
      const prepared = this.#prepare(b, true);
      const { loss, grads } = await this.#lossAndGradients(prepared);
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
      adamwUpdate(p.data, total.get(name)!, state, { ...this.optimizer, lr }, stepNumber);
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
    const out = await compiled.session.run(this.#feeds(prepared, compiled.params), ['logits']);
    return Float32Array.from(out.logits.data as Float32Array);
  }

  /**
   * Writes an HF-format checkpoint to `dir`: model.safetensors (bf16; other dtypes kept), every other
   * file of the source folder (config.json, tokenizer files…), and the optimiser state for `resume`.
   */
  async save(dir: string): Promise<void> {
    this.#assertOpen();
    const out = path.resolve(dir);
    await mkdir(out, { recursive: true });
    if (out !== this.modelDir) {
      for (const entry of await readdir(this.modelDir, { withFileTypes: true })) {
        if (!entry.isFile()) continue;
        if (entry.name.endsWith('.safetensors') || entry.name === 'model.safetensors.index.json') continue;
        if (entry.name === STATE_FILE) continue;
        await copyFile(path.join(this.modelDir, entry.name), path.join(out, entry.name));
      }
    }
    const tensors: Record<string, TensorToWrite> = {};
    for (const name of this.order) {
      const p = this.params.get(name)!;
      tensors[name] =
        p.dtype === 'F32'
          ? { dtype: 'F32', shape: p.shape, data: p.data }
          : { dtype: 'BF16', shape: p.shape, data: float32ToBf16(p.data) };
    }
    await writeSafetensors(path.join(out, 'model.safetensors'), tensors, { format: 'pt' });
    await this.#saveState(out);
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
  ): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
    const compiled = await this.#compiled(prepared, 'loss');
    const out = await compiled.session.run(this.#feeds(prepared, compiled.params));
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
    const forward = buildTrainingGraph({
      config: this.config,
      paramShapes: shapes,
      seqLen: prepared.seqLen,
      numTiles: prepared.numTiles,
      numSupervised: prepared.numSupervised,
      mode,
    });
    const used = new Set(forward.params);
    const wrt = mode === 'loss' ? this.trainable.filter((n) => used.has(n)) : [];
    const graph = wrt.length > 0 ? appendBackward(forward.graph, { loss: 'loss', wrt }) : forward.graph;
    const session = await createSession(graph, { threads: this.threads });
    return { session, params: forward.params, wrt };
  }

  #feeds(b: PreparedBatch, params: readonly string[]): Record<string, ort.Tensor> {
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
    for (const name of params) {
      const p = this.params.get(name)!;
      feeds[name] = new ort.Tensor('float32', p.data, p.shape);
    }
    return feeds;
  }

  async #saveState(dir: string): Promise<void> {
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
    await writeSafetensors(path.join(dir, OPTIMIZER_FILE), tensors);
    const state = { step: this.#step, stage: this.stage, seed: this.seed, trainable: this.trainable };
    await writeFile(path.join(dir, STATE_FILE), `${JSON.stringify(state, null, 1)}\n`);
  }

  async #loadState(dir: string): Promise<void> {
    let state: { step?: unknown };
    try {
      state = JSON.parse(await readFile(path.join(dir, STATE_FILE), 'utf8'));
    } catch (err) {
      throw new InternVLError('NOT_FOUND', `${dir}: no readable ${STATE_FILE} to resume from`, {
        cause: err,
      });
    }
    if (!Number.isInteger(state.step) || (state.step as number) < 0) {
      throw new InternVLError(
        'BAD_INPUT',
        `${path.join(dir, STATE_FILE)}: "step" must be a non-negative integer`,
      );
    }
    const file = path.join(dir, OPTIMIZER_FILE);
    const saved = await Checkpoint.open(file);
    try {
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
  }
}
