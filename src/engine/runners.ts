/**
 * A checkpoint's two engine runners (vision encoder, language-model decoder) with their ORT sessions,
 * built or read from the graph cache under the keys of graph-plan.ts: what EngineCore.load, the bench,
 * eval-quant and the memory profile all load.
 */
import type { ModelConfig } from '../config/model-config.js';
import type { Checkpoint } from '../io/safetensors.js';
import type { WeightSource } from '../models/weights.js';
import type { Int8Kernel } from '../onnx/quantize.js';
import { DecoderRunner, decoderDimsFromConfig } from './decoder.js';
import { defaultGraphCacheDir } from './graph-cache.js';
import { engineGraphKey, type ResolvedPrecision } from './graph-plan.js';
import { type LlmPrecision, llmCacheTag, type VitDtype, vitCacheTag, type WeightDtype } from './precision.js';
import type { GraphCacheOptions } from './session.js';
import { VisionEncoder, visionDimsFromConfig } from './vision.js';

/** The cache entry of one engine graph; undefined when graphs stay in memory. */
export type EngineGraphCache = (
  component: 'vision' | 'decoder',
  dims: unknown,
  tag: Record<string, unknown>,
) => GraphCacheOptions | undefined;

/**
 * Where each engine graph of `checkpoint` is cached: under `cacheDir` (default: the default graph
 * cache), or nowhere when it is false. Each new entry records what it was built from.
 */
export function engineGraphCache(checkpoint: Checkpoint, cacheDir?: string | false): EngineGraphCache {
  const dir = cacheDir === undefined ? defaultGraphCacheDir() : cacheDir;
  return (component, dims, tag) =>
    dir === false
      ? undefined
      : {
          dir,
          key: engineGraphKey(checkpoint, component, dims, tag),
          source: { files: checkpoint.files(), component, dtype: String(tag.dtype) },
        };
}

export interface EngineRunnerOptions {
  precision: ResolvedPrecision;
  /** Intra-op threads; default: the number of cores. */
  threads?: number;
  /** The graph cache folder; default the default graph cache, false: build in memory. */
  cacheDir?: string | false;
  /** Tiles per vision run (VisionEncoderOptions). */
  tilesPerRun?: number;
  /** Longest prefill chunk (DecoderRunnerOptions). */
  prefillChunk?: number;
  /** Counts the runners loaded (0, 1, 2 of 2): the first load of a checkpoint builds their graphs. */
  onProgress?: (done: number, total: number) => void;
}

/** The vision encoder of `config` at `vitDtype`, its graph from the cache. */
export function createVisionRunner(
  config: ModelConfig,
  weights: WeightSource,
  cache: EngineGraphCache,
  options: { vitDtype: VitDtype; int8Kernel: Int8Kernel; threads?: number; tilesPerRun?: number },
): Promise<VisionEncoder> {
  const dims = visionDimsFromConfig(config);
  const { vitDtype, int8Kernel } = options;
  return VisionEncoder.create(dims, weights, {
    threads: options.threads,
    vitDtype,
    int8Kernel,
    tilesPerRun: options.tilesPerRun,
    cache: cache('vision', dims, vitCacheTag(vitDtype, int8Kernel)),
  });
}

/** The decoder of `config` at `precision` (llmDtype, and prefillDtype for long prefill chunks). */
export function createDecoderRunner(
  config: ModelConfig,
  weights: WeightSource,
  cache: EngineGraphCache,
  options: { precision: LlmPrecision; threads?: number; prefillChunk?: number },
): Promise<DecoderRunner> {
  const dims = decoderDimsFromConfig(config);
  const { precision } = options;
  const tag = (dtype: WeightDtype) => llmCacheTag(precision, dtype);
  return DecoderRunner.create(dims, weights, {
    threads: options.threads,
    ...precision,
    prefillChunk: options.prefillChunk,
    cache: cache('decoder', dims, tag(precision.llmDtype)),
    prefillCache: cache('decoder', dims, tag(precision.prefillDtype)),
  });
}

/** Both runners of a checkpoint; the vision encoder is released if the decoder fails to load. */
export async function createEngineRunners(
  config: ModelConfig,
  checkpoint: Checkpoint,
  weights: WeightSource,
  options: EngineRunnerOptions,
): Promise<{ vision: VisionEncoder; decoder: DecoderRunner }> {
  const cache = engineGraphCache(checkpoint, options.cacheDir);
  options.onProgress?.(0, 2);
  const { precision, threads } = options;
  const vision = await createVisionRunner(config, weights, cache, {
    vitDtype: precision.vitDtype,
    int8Kernel: precision.int8Kernel,
    threads,
    tilesPerRun: options.tilesPerRun,
  });
  options.onProgress?.(1, 2);
  try {
    const decoder = await createDecoderRunner(config, weights, cache, options);
    options.onProgress?.(2, 2);
    return { vision, decoder };
  } catch (err) {
    await vision.release();
    throw err;
  }
}
