import os from 'node:os';
import { InternVLError } from '../errors.js';
import type { Graph } from '../onnx/graph.js';
import { modelToBytes } from '../onnx/serialize.js';
import { cachedGraph, type GraphSource, warnOnStderr } from './graph-cache.js';
import * as ort from './ort.js';

export interface SessionOptions {
  /** Intra-op threads; default: the number of cores. */
  threads?: number;
}

export function defaultThreads(): number {
  return Math.max(1, os.availableParallelism());
}

const PROVIDERS: Record<string, string[]> = { cpu: ['cpu'], cuda: ['cuda', 'cpu'] };

/**
 * The execution providers sessions use: `INTERNVL_EXECUTION_PROVIDER` = cpu (default) or cuda (CUDA
 * first, ops it lacks on the CPU). CUDA needs onnxruntime-node's CUDA libraries, which the project's
 * .npmrc skips: install with `npm install --onnxruntime-node-install=cuda12` on a machine that can
 * reach NuGet.
 */
export function executionProviders(): string[] {
  const name = (process.env.INTERNVL_EXECUTION_PROVIDER ?? 'cpu').toLowerCase();
  const providers = PROVIDERS[name];
  if (!providers) {
    throw new InternVLError(
      'BAD_CONFIG',
      `INTERNVL_EXECUTION_PROVIDER is '${name}'; supported: ${Object.keys(PROVIDERS).join(', ')}`,
    );
  }
  return providers;
}

async function openSession(
  source: string | Uint8Array,
  options: ort.InferenceSession.SessionOptions,
): Promise<ort.InferenceSession> {
  try {
    return typeof source === 'string'
      ? await ort.InferenceSession.create(source, options)
      : await ort.InferenceSession.create(source, options);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (options.executionProviders?.includes('cuda') && /Cuda|providers_shared|CUDA/.test(message)) {
      throw new InternVLError(
        'UNSUPPORTED',
        'the CUDA execution provider could not be loaded (INTERNVL_EXECUTION_PROVIDER=cuda): install ' +
          `onnxruntime-node's CUDA libraries with \`npm install --onnxruntime-node-install=cuda12\` (${message.split('\n')[0]})`,
        { cause: err },
      );
    }
    throw err;
  }
}

/** ONNX Runtime's error text made readable: no ANSI colour codes, the first line only. */
export function ortErrorText(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  const plain = message.replace(/\u001b\[[0-9;]*[A-Za-z]/g, '').trim();
  return plain.split('\n')[0] || 'unknown error';
}

/** An onnxruntime-node session (CPU, or CUDA when asked for) for a graph in memory or a model file on disk. */
export async function createSession(
  model: Graph | Uint8Array | string,
  options: SessionOptions = {},
): Promise<ort.InferenceSession> {
  const source = typeof model === 'string' || model instanceof Uint8Array ? model : modelToBytes(model);
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: executionProviders(),
    intraOpNumThreads: options.threads ?? defaultThreads(),
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  };
  return openSession(source, sessionOptions);
}

/** Where a runner keeps its built graph on disk (see graph-cache.ts); without it graphs stay in memory. */
export interface GraphCacheOptions {
  dir: string;
  key: string;
  /** Where a warning about a damaged entry goes (default: a line on stderr). */
  onWarning?: (message: string) => void;
  /** What the graph is built from, recorded in a new entry (graph-source.ts). */
  source?: GraphSource;
}

/**
 * A session for the graph `build` makes: from the on-disk cache when given (built and written on a
 * miss; required above ONNX's 2 GiB in-memory limit), else built in memory. A cached entry that fails
 * its checks, or that ONNX Runtime cannot load, is rebuilt once with a warning naming it; a graph that
 * still does not load is an error with ONNX Runtime's reason in plain text.
 */
export async function sessionForGraph(
  build: () => Promise<Graph>,
  options: SessionOptions & { cache?: GraphCacheOptions },
): Promise<ort.InferenceSession> {
  if (!options.cache) return createSession(await build(), options);
  const { dir, key } = options.cache;
  const onWarning = options.cache.onWarning ?? warnOnStderr;
  const { source } = options.cache;
  const first = await cachedGraph(dir, key, build, { onWarning, source });
  try {
    return await createSession(first.modelPath, options);
  } catch (err) {
    if (err instanceof InternVLError) throw err;
    if (!first.hit) throw unloadableGraph(first.modelPath, err);
    const rebuilt = await cachedGraph(dir, key, build, {
      onWarning,
      source,
      rebuild: { reason: `ONNX Runtime cannot load it: ${ortErrorText(err)}` },
    });
    try {
      return await createSession(rebuilt.modelPath, options);
    } catch (again) {
      if (again instanceof InternVLError) throw again;
      throw unloadableGraph(rebuilt.modelPath, again);
    }
  }
}

function unloadableGraph(modelPath: string, err: unknown): InternVLError {
  return new InternVLError(
    'INTERNAL',
    `ONNX Runtime cannot load the freshly built graph ${modelPath}: ${ortErrorText(err)}`,
    { cause: err },
  );
}
