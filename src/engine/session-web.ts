/**
 * The browser entry of session.ts (swapped in by the browser bundle): onnxruntime-web sessions from
 * graph bytes held in memory, on the WASM or WebGPU execution provider. There is no on-disk graph
 * cache in a browser; downloaded graphs are cached by the web loader (src/web/fetch-cache.ts).
 */
import { InternVLError } from '../errors.js';
import type { Graph } from '../onnx/graph.js';
import { modelToBytes } from '../onnx/serialize.js';
import * as ort from './ort.js';

export type WebExecutionProvider = 'wasm' | 'webgpu';

export interface SessionOptions {
  /** WASM threads are set once for the page (ort.env.wasm.numThreads); kept for the Node signature. */
  threads?: number;
  /** Default 'wasm'. WebGPU falls back to WASM for the operators it lacks. */
  executionProvider?: WebExecutionProvider;
  /** External-data files the graph refers to, by the name stored in the graph (e.g. weights.bin). */
  externalData?: { path: string; data: Uint8Array }[];
}

export function defaultThreads(): number {
  const cores = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator
    ?.hardwareConcurrency;
  return Math.max(1, cores ?? 1);
}

/** An onnxruntime-web session for a graph built in memory or serialized graph bytes. */
export async function createSession(
  model: Graph | Uint8Array | string,
  options: SessionOptions = {},
): Promise<ort.InferenceSession> {
  if (typeof model === 'string') {
    throw new InternVLError('UNSUPPORTED', `cannot open ${model}: a browser session needs the graph's bytes`);
  }
  const bytes = model instanceof Uint8Array ? model : modelToBytes(model);
  const provider = options.executionProvider ?? 'wasm';
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders:
      provider === 'webgpu' ? ['webgpu', ort.CPU_EXECUTION_PROVIDER] : [ort.CPU_EXECUTION_PROVIDER],
    graphOptimizationLevel: 'all',
    ...(options.externalData ? { externalData: options.externalData } : {}),
  };
  try {
    return await ort.InferenceSession.create(bytes, sessionOptions);
  } catch (err) {
    throw new InternVLError(
      'INTERNAL',
      `onnxruntime-web (${provider}) could not open the graph: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/** Kept for the Node signature; a browser has no graph cache folder. */
export interface GraphCacheOptions {
  dir: string;
  key: string;
  onWarning?: (message: string) => void;
}

/** A session for the graph `build` makes, built in memory (a cache folder cannot be used here). */
export async function sessionForGraph(
  build: () => Promise<Graph>,
  options: SessionOptions & { cache?: GraphCacheOptions },
): Promise<ort.InferenceSession> {
  if (options.cache) {
    throw new InternVLError('UNSUPPORTED', 'a graph cache folder cannot be used in a browser');
  }
  return createSession(await build(), options);
}
