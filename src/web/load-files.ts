/**
 * The web loader's file work: downloading a web model folder's files (with progress, through the
 * Cache API), opening its graphs on onnxruntime-web and reading its embedding table.
 */
import * as ort from '../engine/ort.js';
import { InternVLError } from '../errors.js';
import { fetchBytes, type ResponseCache } from './fetch-cache.js';
import { manifestFiles, type WebGraphEntry, type WebManifest } from './manifest.js';

export type WebExecutionProvider = 'wasm' | 'webgpu';

export interface LoadProgress {
  /** Bytes of all model files received (from the network or the cache). */
  loaded: number;
  total: number;
  /** The file being read, relative to the model URL. */
  file: string;
  /** Bytes that came from the Cache API so far. */
  fromCache: number;
}

export function joinUrl(base: string, file: string): string {
  return new URL(file, base.endsWith('/') ? base : `${base}/`).href;
}

/** Downloads every file of the manifest into `into` (path → bytes). */
export async function downloadAll(
  baseUrl: string,
  manifest: WebManifest,
  cache: ResponseCache | undefined,
  onProgress: ((progress: LoadProgress) => void) | undefined,
  into: Map<string, Uint8Array>,
): Promise<void> {
  const entries = manifestFiles(manifest);
  const total = entries.reduce((n, f) => n + f.bytes, 0);
  let finished = 0;
  let fromCache = 0;
  for (const entry of entries) {
    let cached = false;
    const bytes = await fetchBytes(joinUrl(baseUrl, entry.path), {
      cache,
      expectedBytes: entry.bytes,
      onProgress: (p) => {
        cached = p.fromCache;
        onProgress?.({
          loaded: finished + p.loaded,
          total,
          file: entry.path,
          fromCache: fromCache + (p.fromCache ? p.loaded : 0),
        });
      },
    });
    into.set(entry.path, bytes);
    finished += bytes.byteLength;
    if (cached) fromCache += bytes.byteLength;
  }
}

/** An onnxruntime-web session for one graph of the manifest, from the downloaded files. */
export async function createWebSession(
  files: Map<string, Uint8Array>,
  graph: WebGraphEntry,
  provider: WebExecutionProvider,
): Promise<ort.InferenceSession> {
  const model = files.get(graph.model.path) as Uint8Array;
  const externalData = graph.externalData.map((e) => ({
    path: e.name,
    data: files.get(e.path) as Uint8Array,
  }));
  try {
    return await ort.InferenceSession.create(model, {
      executionProviders:
        provider === 'webgpu' ? ['webgpu', ort.CPU_EXECUTION_PROVIDER] : [ort.CPU_EXECUTION_PROVIDER],
      graphOptimizationLevel: 'all',
      externalData,
    });
  } catch (err) {
    throw new InternVLError(
      'INTERNAL',
      `onnxruntime-web (${provider}) could not open ${graph.model.path}: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/** The token-embedding table from its raw little-endian bytes (bf16 bit patterns or float32). */
export function embeddingTable(bytes: Uint8Array, manifest: WebManifest): Float32Array | Uint16Array {
  const { dtype, shape, path } = manifest.embeddings;
  const count = shape[0] * shape[1];
  const width = dtype === 'bf16' ? 2 : 4;
  if (bytes.byteLength !== count * width) {
    throw new InternVLError(
      'BAD_CHECKPOINT',
      `${path}: ${bytes.byteLength} bytes, [${shape}] ${dtype} needs ${count * width}`,
    );
  }
  const copy = bytes.slice().buffer;
  return dtype === 'bf16' ? new Uint16Array(copy) : new Float32Array(copy);
}
