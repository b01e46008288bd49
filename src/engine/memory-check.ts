/**
 * The check before a load: the estimated peak RSS (memory-estimate.ts) against the memory this process
 * may use (os.totalmem, or the cgroup limit when lower). A first load converts the checkpoint into
 * graphs and peaks higher than a load from the graph cache; entries built from the same checkpoint
 * files at the same precisions (graph-source.ts) count as cached.
 */
import { readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ModelConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { formatBytes } from '../io/progress.js';
import { defaultGraphCacheDir } from './graph-cache.js';
import { listGraphCacheEntries } from './graph-source.js';
import {
  describePrecision,
  estimateMemory,
  type MemoryEstimate,
  type MemoryPrecision,
  precisionFlags,
  REPORTED_PRECISIONS,
} from './memory-estimate.js';
import type { VitDtype, WeightDtype } from './precision.js';

export interface AvailableMemory {
  bytes: number;
  /** Where the number comes from: 'os.totalmem()' or the cgroup file. */
  source: string;
}

const CGROUP_LIMIT_FILES = [
  '/sys/fs/cgroup/memory.max', // cgroup v2
  '/sys/fs/cgroup/memory/memory.limit_in_bytes', // cgroup v1
];

export const MEMORY_LIMIT_ENV = 'INTERNVL_MEMORY_LIMIT';

/** `12G`, `512M`, `1.5G` or a number of bytes; undefined for anything else. */
export function parseByteSize(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) return undefined;
  const scale = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[m[2].toUpperCase()] ?? 1;
  return Math.floor(Number(m[1]) * scale);
}

/**
 * The memory this process may use: the machine's, its cgroup's limit when one is set and lower, or
 * INTERNVL_MEMORY_LIMIT (e.g. `8G`: a budget on a shared machine) when lower still.
 */
export function availableMemory(
  limitFiles: readonly string[] = CGROUP_LIMIT_FILES,
  env: NodeJS.ProcessEnv = process.env,
): AvailableMemory {
  let best: AvailableMemory = { bytes: os.totalmem(), source: 'os.totalmem()' };
  const budget = env[MEMORY_LIMIT_ENV];
  if (budget !== undefined && budget !== '') {
    const bytes = parseByteSize(budget);
    if (bytes === undefined || bytes <= 0) {
      throw new InternVLError(
        'BAD_INPUT',
        `${MEMORY_LIMIT_ENV}=${JSON.stringify(budget)} is not a size like 8G, 512M or a number of bytes`,
      );
    }
    if (bytes < best.bytes) best = { bytes, source: MEMORY_LIMIT_ENV };
  }
  for (const file of limitFiles) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8').trim();
    } catch {
      continue;
    }
    // 'max' (v2) or a huge number (v1) means no limit.
    if (!/^\d+$/.test(text)) continue;
    const bytes = Number(text);
    if (bytes > 0 && bytes < best.bytes) best = { bytes, source: file };
  }
  return best;
}

/** The precision the engine will use for these options (the defaults are fp32). */
export function memoryPrecision(options: {
  dtype?: WeightDtype;
  llmDtype?: WeightDtype;
  prefillDtype?: WeightDtype;
  vitDtype?: VitDtype;
}): MemoryPrecision {
  const llmDtype = options.llmDtype ?? options.dtype ?? 'fp32';
  return { llmDtype, prefillDtype: options.prefillDtype ?? llmDtype, vitDtype: options.vitDtype ?? 'fp32' };
}

/**
 * Whether the graph cache holds the graphs of `checkpointFiles` at `precision`, built after the files
 * last changed (as recorded in each entry's source.json; entries without one do not count).
 */
export function graphsCached(
  checkpointFiles: string[],
  precision: MemoryPrecision,
  cacheDir: string = defaultGraphCacheDir(),
): boolean {
  const files = [...checkpointFiles].map((f) => path.resolve(f)).sort();
  const newest = Math.max(...files.map((f) => statSync(f, { throwIfNoEntry: false })?.mtimeMs ?? Infinity));
  const entries = listGraphCacheEntries(cacheDir).filter((e) => {
    const s = e.source;
    if (!s || JSON.stringify([...s.files].map((f) => path.resolve(f)).sort()) !== JSON.stringify(files))
      return false;
    return (statSync(path.join(e.dir, 'model.onnx'), { throwIfNoEntry: false })?.mtimeMs ?? 0) >= newest;
  });
  const has = (component: string, dtype: string) =>
    entries.some((e) => e.source?.component === component && e.source.dtype === dtype);
  return (
    has('vision', precision.vitDtype) &&
    has('decoder', precision.llmDtype) &&
    has('decoder', precision.prefillDtype)
  );
}

export interface MemoryCheck {
  estimate: MemoryEstimate;
  /** The load converts the checkpoint (no cached graphs), so its peak is `estimate.converting`. */
  converting: boolean;
  /** The estimated peak of this load. */
  peak: number;
  available: AvailableMemory;
}

/** One line naming the precision and the estimate, for the first line of a command's output. */
export function describeMemoryCheck(check: MemoryCheck): string {
  const step = check.converting ? 'first load, converting the checkpoint' : 'graphs cached';
  return (
    `precision: ${describePrecision(check.estimate.precision)}; estimated peak memory ` +
    `${formatBytes(check.peak)} (${step}) of ${formatBytes(check.available.bytes)} available`
  );
}

/**
 * Estimates the load's peak and refuses it (OUT_OF_MEMORY, with the numbers and a precision that
 * fits) when it exceeds the available memory, unless `force`.
 */
export function checkMemory(
  config: ModelConfig,
  precision: MemoryPrecision,
  options: { converting: boolean; force?: boolean; available?: AvailableMemory },
): MemoryCheck {
  const available = options.available ?? availableMemory();
  const estimate = estimateMemory(config, precision);
  const peakOf = (e: MemoryEstimate) => (options.converting ? e.converting : e.running);
  const check = { estimate, converting: options.converting, peak: peakOf(estimate), available };
  if (check.peak <= available.bytes || options.force) return check;
  const fits = REPORTED_PRECISIONS.map((p) => estimateMemory(config, p)).find(
    (e) => peakOf(e) <= available.bytes && peakOf(e) < check.peak,
  );
  const suggestion = fits
    ? `use ${precisionFlags(fits.precision)} (${describePrecision(fits.precision)}: estimated ${formatBytes(peakOf(fits))})`
    : 'no precision fits; use a machine with more memory';
  const cachedNote =
    options.converting && estimate.running <= available.bytes
      ? `; once converted (\`internvl convert\` on a larger machine, same graph cache) a load needs ${formatBytes(estimate.running)}`
      : '';
  throw new InternVLError(
    'OUT_OF_MEMORY',
    `not enough memory for ${describePrecision(precision)}: the estimated peak is ${formatBytes(check.peak)}` +
      `${options.converting ? ' (the first load converts the checkpoint into graphs)' : ''}, ` +
      `${formatBytes(available.bytes)} available (${available.source}); ${suggestion}${cachedNote}; ` +
      'or force the load (--ignore-memory-check, pipeline option ignoreMemoryCheck)',
  );
}
