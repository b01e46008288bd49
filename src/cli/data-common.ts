/** What `internvl data stats|filter|pack` share: output, option parsing, issue reporting, model settings. */
import { numImageTokens } from '../config/model-config.js';
import { type DataIssue, formatIssue } from '../data/meta.js';
import type { PrepareOptions } from '../data/prepare.js';
import { InternVLError } from '../errors.js';
import { createTaskProgress } from '../io/progress.js';
import { loadTokenizer } from '../io/tokenizer-files.js';
import { loadModelConfig } from '../models/model-config.js';

import { UsageError } from './args.js';

export { UsageError };

/** Where the command writes; progress bars are drawn only when `stderr.isTTY`. */
export interface DataIo {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown; isTTY?: boolean };
}

export function intOption(value: string | undefined, name: string, fallback: number, min = 0): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min)
    throw new UsageError(`--${name} must be an integer ≥ ${min}, got '${value}'`);
  return n;
}

export function numberOption(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got '${value}'`);
  return n;
}

/** A one-line counter on stderr, drawn only when stderr is a terminal; the line ends when done. */
export function progressLine(io: DataIo, label: string): (done: number, total: number) => void {
  const draw = createTaskProgress(io.stderr);
  return (done, total) => draw({ label, done, total });
}

export function reportIssues(io: DataIo, issues: readonly DataIssue[]): void {
  for (const issue of issues) io.stderr.write(`${formatIssue(issue)}\n`);
}

/**
 * Reports a sample that failed after its line was read (e.g. while tokenising or decoding), as
 * FILE:LINE: message, and records it; with `strict` it is fatal instead.
 */
export function issueRecorder(
  io: DataIo,
  strict: boolean | undefined,
  into: DataIssue[],
): (where: { dataset: string; file: string; line: number }, message: string) => void {
  return ({ dataset, file, line }, message) => {
    const issue = { dataset, file, line, message };
    if (strict) throw new InternVLError('BAD_INPUT', formatIssue(issue));
    io.stderr.write(`${formatIssue(issue)}\n`);
    into.push(issue);
  };
}

export async function loadPrepareOptions(
  modelDir: string,
  maxDynamicPatch: string | undefined,
): Promise<PrepareOptions> {
  const [config, tokenizer] = await Promise.all([loadModelConfig(modelDir), loadTokenizer(modelDir)]);
  return {
    tokenizer,
    numImageToken: numImageTokens(config),
    maxDynamicPatch: intOption(maxDynamicPatch, 'max-dynamic-patch', config.max_dynamic_patch, 1),
    minDynamicPatch: config.min_dynamic_patch,
    useThumbnail: config.use_thumbnail,
    tileSize: config.force_image_size ?? config.vision_config.image_size,
  };
}
