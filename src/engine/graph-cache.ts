/**
 * Built ONNX graphs cached on disk, keyed by the checkpoint and the build options, so a second load
 * skips the conversion. Each entry is a folder holding model.onnx, weights.bin (external data) and
 * checksums.json (each file's size and SHA-256); it is written under a temporary name and renamed
 * into place, so a half-written entry never looks complete, and the manifest is part of the rename.
 *
 * On load an entry is checked against its manifest: file sizes always, the SHA-256 of model.onnx
 * always (it is small: the graph without its float weights), and the SHA-256 of weights.bin only
 * when asked (`verify: 'full'`, as `internvl convert` does). Hashing reads the file: measured
 * 0.87–1.16 s per GiB (SHA-256, Node's OpenSSL with SHA-NI, warm page cache, the 2-core EPYC dev
 * machine), so every chat or server start would pay about 2 s for InternVL2_5-1B's fp32 graphs and
 * minutes for the largest models; sizes catch truncation, the model.onnx hash catches a damaged graph,
 * and a load ONNX Runtime refuses is rebuilt too (see session.ts). A damaged entry is rebuilt with a
 * warning naming it. Temporary folders left by a killed conversion (`<key>.tmp-<pid>-<time>.<n>-<host>`
 * whose process on this host is gone) are removed; one whose process still runs, or that another host
 * is writing into a shared cache, is left alone.
 */
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Graph } from '../onnx/graph.js';
import { serializeModel } from '../onnx/serialize.js';
import { collectGarbage } from './collect-garbage.js';
import { ExternalDataFile, withWeightSink } from './external-data.js';
import { type GraphSource, writeGraphSource } from './graph-source.js';

export type { GraphSource } from './graph-source.js';

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

const MANIFEST = 'checksums.json';
const MANIFEST_FORMAT = 'internvl-ts.graph-cache-entry.v1';

interface ManifestFile {
  name: string;
  bytes: number;
  sha256: string;
}

interface EntryManifest {
  format: typeof MANIFEST_FORMAT;
  files: ManifestFile[];
}

function sha256File(file: string): string {
  const hash = createHash('sha256');
  const fd = openSync(file, 'r');
  try {
    const buffer = Buffer.allocUnsafe(8 << 20);
    for (let n = readSync(fd, buffer); n > 0; n = readSync(fd, buffer)) hash.update(buffer.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

/** How thoroughly a cache entry is checked: sizes and the model.onnx hash, or every file's hash. */
export type GraphCacheVerify = 'sizes' | 'full';

/**
 * Why the entry in `dir` cannot be used (missing or unreadable manifest, a file missing, of another size
 * or, where hashed, with other content), or undefined when it matches its manifest.
 */
export function graphEntryProblem(dir: string, verify: GraphCacheVerify = 'sizes'): string | undefined {
  let manifest: EntryManifest;
  try {
    manifest = JSON.parse(readFileSync(path.join(dir, MANIFEST), 'utf8'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT'
      ? `${MANIFEST} is missing (an older or incomplete entry)`
      : `${MANIFEST} is unreadable (${(err as Error).message})`;
  }
  if (manifest?.format !== MANIFEST_FORMAT || !Array.isArray(manifest.files)) {
    return `${MANIFEST} is not a ${MANIFEST_FORMAT} manifest`;
  }
  for (const { name, bytes, sha256 } of manifest.files) {
    const file = path.join(dir, name);
    let size: number;
    try {
      size = statSync(file).size;
    } catch {
      return `${name} is missing`;
    }
    if (size !== bytes) return `${name} is ${size} bytes, its checksums say ${bytes}`;
    if ((verify === 'full' || name === 'model.onnx') && sha256File(file) !== sha256) {
      return `${name} does not match its SHA-256 checksum (the file changed after it was written)`;
    }
  }
  return undefined;
}

function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** `<key>.tmp-<pid>-<time>.<n>-<host>` (older versions: no `.<n>`): the host tag (hash of the host name) scopes the pid to its machine. */
const TEMP_ENTRY = /^.+\.tmp-(\d+)-\d+(?:\.\d+)?(?:-([0-9a-f]{8}))?$/;
let tempSequence = 0;
const HOST_TAG = createHash('sha256').update(os.hostname()).digest('hex').slice(0, 8);

/**
 * Removes the temporary folders of conversions whose process is gone (killed mid-write); returns their
 * paths. Folders of live processes (this one included) are being written and stay. A pid means
 * something only on its own machine (or container): folders another host is writing into a shared
 * cache are never removed here (folders without a host tag, from older versions, count as this host's).
 */
export function removeStaleTempEntries(cacheDir: string): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(cacheDir);
  } catch {
    return removed;
  }
  for (const name of names) {
    const m = TEMP_ENTRY.exec(name);
    if (!m || (m[2] !== undefined && m[2] !== HOST_TAG) || processIsAlive(Number(m[1]))) continue;
    const dir = path.join(cacheDir, name);
    rmSync(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}

/**
 * Builds a graph into `dir` as model.onnx + weights.bin + checksums.json (atomically); returns the model
 * path. The weights go to weights.bin as the build adds them (engine/external-data.ts), so the graph never
 * holds them all in memory. With `keepExisting`, an intact entry another process renamed into place
 * first is kept, not replaced: that process may be opening it; a damaged one is replaced.
 */
export async function buildGraphDir(
  build: () => Promise<Graph>,
  dir: string,
  options: { keepExisting?: boolean; source?: GraphSource } = {},
): Promise<string> {
  const modelPath = path.join(dir, 'model.onnx');
  // The sequence number keeps two builds of one process apart (one may start inside the other's build).
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}.${++tempSequence}-${HOST_TAG}`;
  mkdirSync(tmp, { recursive: true });
  try {
    const weights = new ExternalDataFile(path.join(tmp, 'weights.bin'));
    const model = new ExternalDataFile(path.join(tmp, 'model.onnx'), 1);
    let files: ManifestFile[];
    try {
      const graph = await withWeightSink(weights, build);
      const { modelChunks } = serializeModel(graph, { sink: weights });
      for (const chunk of modelChunks) model.write(chunk);
      files = [weights.close(), model.close()];
    } finally {
      weights.abandon();
      model.abandon();
    }
    // The build's tensors are garbage now; free them before a session loads the graph.
    collectGarbage();
    const manifest: EntryManifest = { format: MANIFEST_FORMAT, files };
    writeFileSync(path.join(tmp, MANIFEST), `${JSON.stringify(manifest, null, 1)}\n`);
    if (options.source) writeGraphSource(tmp, options.source);
    if (!options.keepExisting) {
      rmSync(dir, { recursive: true, force: true });
      renameSync(tmp, dir);
    } else {
      try {
        renameSync(tmp, dir);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
        if (graphEntryProblem(dir) === undefined) {
          rmSync(tmp, { recursive: true, force: true });
        } else {
          // A damaged or incomplete entry (files removed or changed by hand, an older format): replace it.
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

/** A graph already built in memory written as a graph folder (buildGraphDir). */
export function writeGraphDir(
  graph: Graph,
  dir: string,
  options: { keepExisting?: boolean; source?: GraphSource } = {},
): Promise<string> {
  return buildGraphDir(async () => graph, dir, options);
}

export interface CachedGraphOptions {
  /** Check weights.bin's SHA-256 too, not only the sizes and model.onnx's (default 'sizes'). */
  verify?: GraphCacheVerify;
  /** Rebuild even an entry that looks intact (ONNX Runtime refused to load it); `reason` says why. */
  rebuild?: { reason: string };
  /** Where a warning about a damaged entry goes (default: a line on stderr). */
  onWarning?: (message: string) => void;
  /** What the graph was built from, recorded in the entry (source.json) for `internvl ls` and `rm`. */
  source?: GraphSource;
}

/** The default warning sink: one line on stderr (forwarded to the main thread from a worker). */
export function warnOnStderr(message: string): void {
  process.stderr.write(`internvl: warning: ${message}\n`);
}

/**
 * The path of a cached model.onnx for `key`, building and writing it first when absent or damaged
 * (with a warning naming the entry and the damage). `build` runs only then. Stale temporary folders
 * of dead processes are removed first.
 */
export async function cachedGraph(
  cacheDir: string,
  key: string,
  build: () => Promise<Graph>,
  options: CachedGraphOptions = {},
): Promise<{ modelPath: string; hit: boolean }> {
  const warn = options.onWarning ?? warnOnStderr;
  const dir = path.join(cacheDir, key);
  const modelPath = path.join(dir, 'model.onnx');
  for (const stale of removeStaleTempEntries(cacheDir)) {
    warn(`removed ${stale}, left by a graph conversion whose process is gone`);
  }
  let damaged = false;
  if (existsSync(dir)) {
    const problem = options.rebuild?.reason ?? graphEntryProblem(dir, options.verify);
    if (problem === undefined) return { modelPath, hit: true };
    warn(`graph cache entry ${dir} is damaged (${problem}); rebuilding it`);
    damaged = true;
  }
  mkdirSync(cacheDir, { recursive: true });
  // The damaged entry goes first: its sizes may look right (a flipped byte) and would be kept.
  if (damaged) rmSync(dir, { recursive: true, force: true });
  await buildGraphDir(build, dir, { keepExisting: true, source: options.source });
  return { modelPath, hit: false };
}
