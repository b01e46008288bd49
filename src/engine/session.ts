import os from 'node:os';
import { type Graph, modelToBytes } from '../onnx/graph.js';
import { cachedGraph } from './graph-cache.js';
import * as ort from './ort.js';

export interface SessionOptions {
  /** Intra-op threads; default: the number of cores. */
  threads?: number;
}

export function defaultThreads(): number {
  return Math.max(1, os.availableParallelism());
}

/** An onnxruntime-node CPU session for a graph held in memory or a model file on disk. */
export async function createSession(
  model: Graph | Uint8Array | string,
  options: SessionOptions = {},
): Promise<ort.InferenceSession> {
  const source = typeof model === 'string' || model instanceof Uint8Array ? model : modelToBytes(model);
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: ['cpu'],
    intraOpNumThreads: options.threads ?? defaultThreads(),
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  };
  return typeof source === 'string'
    ? ort.InferenceSession.create(source, sessionOptions)
    : ort.InferenceSession.create(source, sessionOptions);
}

/** Where a runner keeps its built graph on disk (see graph-cache.ts); without it graphs stay in memory. */
export interface GraphCacheOptions {
  dir: string;
  key: string;
}

/**
 * A session for the graph `build` makes: from the on-disk cache when given (built and written on a
 * miss; required above ONNX's 2 GiB in-memory limit), else built in memory.
 */
export async function sessionForGraph(
  build: () => Promise<Graph>,
  options: SessionOptions & { cache?: GraphCacheOptions },
): Promise<ort.InferenceSession> {
  if (!options.cache) return createSession(await build(), options);
  const { modelPath } = await cachedGraph(options.cache.dir, options.cache.key, build);
  return createSession(modelPath, options);
}
