/**
 * Built ONNX graphs cached on disk, keyed by the checkpoint and the build options, so a second load
 * skips the conversion. Each entry is a folder holding model.onnx and weights.bin (external data);
 * it is written under a temporary name and renamed into place, so a half-written entry never looks
 * complete.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Graph, serializeModel } from '../onnx/graph.js';

/** Bumped whenever graph building changes in a way that invalidates cached graphs. */
export const GRAPH_FORMAT_VERSION = 5;

export function defaultGraphCacheDir(): string {
  const explicit = process.env.INTERNVL_CACHE;
  if (explicit) return path.join(explicit, 'graphs');
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'internvl-ts', 'graphs');
}

/** A key that changes when any checkpoint file changes (path, size, mtime) or the options change. */
export function graphCacheKey(files: string[], options: unknown): string {
  const h = createHash('sha256');
  h.update(`v${GRAPH_FORMAT_VERSION}\n`);
  for (const f of [...files].sort()) {
    const st = statSync(f);
    h.update(`${path.resolve(f)}\t${st.size}\t${st.mtimeMs}\n`);
  }
  h.update(JSON.stringify(options));
  return h.digest('hex').slice(0, 32);
}

function writeChunks(file: string, chunks: Iterable<{ offset?: number; data: Uint8Array }>): void {
  const fd = openSync(file, 'w');
  try {
    let position = 0;
    for (const { offset, data } of chunks) {
      if (offset !== undefined) position = offset;
      // writeSync takes at most 2 GiB per call.
      for (let start = 0; start < data.byteLength; ) {
        const n = Math.min(data.byteLength - start, 1 << 30);
        start += writeSync(fd, data, start, n, position);
        position += n;
      }
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes a graph as model.onnx + weights.bin into `dir` (atomically); returns the model path. With
 * `keepExisting`, a complete entry another process renamed into place first is kept, not replaced:
 * that process may be opening it.
 */
export function writeGraphDir(graph: Graph, dir: string, options: { keepExisting?: boolean } = {}): string {
  const modelPath = path.join(dir, 'model.onnx');
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  mkdirSync(tmp, { recursive: true });
  try {
    const { modelChunks, external } = serializeModel(graph, { externalData: { location: 'weights.bin' } });
    writeChunks(path.join(tmp, 'weights.bin'), external);
    writeChunks(
      path.join(tmp, 'model.onnx'),
      modelChunks.map((data) => ({ data })),
    );
    if (!options.keepExisting) {
      rmSync(dir, { recursive: true, force: true });
      renameSync(tmp, dir);
    } else {
      try {
        renameSync(tmp, dir);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
        if (existsSync(modelPath)) {
          rmSync(tmp, { recursive: true, force: true });
        } else {
          // An incomplete folder (files removed by hand): replace it.
          rmSync(dir, { recursive: true, force: true });
          renameSync(tmp, dir);
        }
      }
    }
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  return modelPath;
}

/**
 * The path of a cached model.onnx for `key`, building and writing it first when absent.
 * `build` runs only on a cache miss.
 */
export async function cachedGraph(
  cacheDir: string,
  key: string,
  build: () => Promise<Graph>,
): Promise<{ modelPath: string; hit: boolean }> {
  const dir = path.join(cacheDir, key);
  const modelPath = path.join(dir, 'model.onnx');
  if (existsSync(modelPath)) return { modelPath, hit: true };
  mkdirSync(cacheDir, { recursive: true });
  writeGraphDir(await build(), dir, { keepExisting: true });
  return { modelPath, hit: false };
}
