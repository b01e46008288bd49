/**
 * The Trainer's ORT sessions: the training graph (with its backward pass when computing the loss)
 * built for one batch shape, a small most-recently-used cache of them, and the feeds of one run.
 */
import * as ort from 'onnxruntime-node';
import type { ModelConfig } from '../config/model-config.js';
import { createSession } from '../engine/session.js';
import { appendBackward } from './autodiff.js';
import type { PreparedBatch } from './batch.js';
import { buildTrainingGraph } from './model-graph.js';
import { BATCH_INPUTS, type NoiseInput } from './param-graph.js';
import type { LoraSetup, Parameter } from './trainable.js';

export type GraphMode = 'loss' | 'logits';

export interface CompiledGraph {
  session: ort.InferenceSession;
  params: string[];
  wrt: string[];
  noise: NoiseInput[];
}

/** What a training graph is built from, besides the batch shape. */
export interface TrainingGraphSpec {
  config: ModelConfig;
  params: ReadonlyMap<string, Parameter>;
  trainable: readonly string[];
  lora: readonly LoraSetup[];
  dropPathRates: readonly number[];
  threads: number | undefined;
}

/** Sessions kept, most recently used last; the oldest beyond this many is released. */
const SESSION_CACHE = 4;

/** Compiled graphs by batch shape and mode, built on first use. */
export class CompiledGraphCache {
  readonly #entries = new Map<string, Promise<CompiledGraph>>();

  constructor(private readonly spec: TrainingGraphSpec) {}

  get(prepared: PreparedBatch, mode: GraphMode): Promise<CompiledGraph> {
    const key = `${mode}:${prepared.seqLen}:${prepared.numTiles}:${prepared.numSupervised}`;
    let entry = this.#entries.get(key);
    if (entry) {
      this.#entries.delete(key);
      this.#entries.set(key, entry);
      return entry;
    }
    entry = buildCompiledGraph(this.spec, prepared, mode);
    this.#entries.set(key, entry);
    if (this.#entries.size > SESSION_CACHE) {
      const [oldestKey, oldest] = this.#entries.entries().next().value as [string, Promise<CompiledGraph>];
      this.#entries.delete(oldestKey);
      void oldest.then((c) => c.session.release()).catch(() => {});
    }
    entry.catch(() => this.#entries.delete(key));
    return entry;
  }

  /** Releases every session (those that failed to build are skipped). */
  async releaseAll(): Promise<void> {
    const sessions = [...this.#entries.values()];
    this.#entries.clear();
    for (const s of sessions) await (await s.catch(() => undefined))?.session.release();
  }
}

async function buildCompiledGraph(
  spec: TrainingGraphSpec,
  prepared: PreparedBatch,
  mode: GraphMode,
): Promise<CompiledGraph> {
  const shapes = new Map<string, number[]>();
  for (const [name, p] of spec.params) shapes.set(name, p.shape);
  const forward = await buildTrainingGraph({
    config: spec.config,
    paramShapes: shapes,
    seqLen: prepared.seqLen,
    numTiles: prepared.numTiles,
    numSupervised: prepared.numSupervised,
    mode,
    lora:
      spec.lora.length === 0
        ? undefined
        : {
            targets: new Map(
              spec.lora.flatMap(({ scale, dropout, targets }) =>
                targets.map((w) => [w, { scale, dropout }] as const),
              ),
            ),
          },
    dropPathRates: spec.dropPathRates,
  });
  const used = new Set(forward.params);
  const wrt = mode === 'loss' ? spec.trainable.filter((n) => used.has(n)) : [];
  const graph = wrt.length > 0 ? appendBackward(forward.graph, { loss: 'loss', wrt }) : forward.graph;
  const session = await createSession(graph, { threads: spec.threads });
  return { session, params: forward.params, wrt, noise: forward.noise };
}

/**
 * The feeds of one run: the prepared batch, the current fp32 masters of the graph's parameters, and
 * `noiseScales` of each noise input (LoRA dropout, ViT drop-path).
 */
export function batchFeeds(
  config: ModelConfig,
  b: PreparedBatch,
  compiled: CompiledGraph,
  params: ReadonlyMap<string, Parameter>,
  noiseScales: (noise: NoiseInput) => Float32Array,
): Record<string, ort.Tensor> {
  const T = b.seqLen;
  const d = config.llm_config.head_dim;
  const feeds: Record<string, ort.Tensor> = {
    [BATCH_INPUTS.inputIds]: new ort.Tensor('int64', b.inputIds, [T]),
    [BATCH_INPUTS.segmentIds]: new ort.Tensor('int64', b.segmentIds, [T]),
    [BATCH_INPUTS.positionIds]: new ort.Tensor('int64', b.positionIds, [T]),
    [BATCH_INPUTS.ropeCos]: new ort.Tensor('float32', b.ropeCos, [T, d]),
    [BATCH_INPUTS.ropeSin]: new ort.Tensor('float32', b.ropeSin, [T, d]),
  };
  if (b.numTiles > 0 && b.pixelValues) {
    const S = Math.sqrt(b.pixelValues.length / (b.numTiles * config.vision_config.num_channels));
    feeds[BATCH_INPUTS.pixelValues] = new ort.Tensor('float32', b.pixelValues, [
      b.numTiles,
      config.vision_config.num_channels,
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
    const p = params.get(name)!;
    feeds[name] = new ort.Tensor('float32', p.data, p.shape);
  }
  for (const noise of compiled.noise) {
    feeds[noise.name] = new ort.Tensor('float32', noiseScales(noise), noise.shape);
  }
  return feeds;
}
