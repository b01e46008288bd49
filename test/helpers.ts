import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Checkpoint } from '../src/io/safetensors.js';

/** Repository root (tests run from anywhere). */
export const REPO_ROOT = path.resolve(import.meta.dirname, '..');
/** The shared golden data, beside the repository (../shared/golden); never copied into the repo. */
export const GOLDEN_DIR = path.resolve(REPO_ROOT, '../shared/golden');
export const GOLDEN_MODELS = [
  'tiny-internvl2_5-qwen2',
  'tiny-internvl2_5-vit6b-qwen2',
  'tiny-internvl2_5-internlm2',
  'tiny-internvl3_5-qwen3',
];
export const goldenModelDir = (name: string): string => path.join(GOLDEN_DIR, 'models', name);

/** Largest |a[i] − b[i]|; the lengths must match, and a NaN anywhere makes the result NaN (a failure). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= max)) max = d;
  }
  return max;
}

/** A golden case's prompt ids, with its pixel values when it has an image. */
export async function readGoldenCase(
  model: string,
  name: string,
): Promise<{ ids: number[]; image?: { pixelValues: Float32Array; numTiles: number } }> {
  const dir = path.join(GOLDEN_DIR, 'cases', model);
  const c = await Checkpoint.open(path.join(dir, `${name}.safetensors`));
  const ids = Array.from(await c.readInt64('input_ids'), Number);
  await c.close();
  const meta = JSON.parse(readFileSync(path.join(dir, `${name}.json`), 'utf8'));
  if (!meta.pixel_values_file) return { ids };
  const px = await Checkpoint.open(path.join(dir, meta.pixel_values_file));
  const image = { pixelValues: await px.readFloat32('pixel_values'), numTiles: meta.pixel_values_shape[0] };
  await px.close();
  return { ids, image };
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `internvl ...args` (the source entry under tsx) with `env` over this process's and `stdin` written and closed. */
export function runInternvl(args: string[], env: Record<string, string>, stdin = ''): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', path.join(REPO_ROOT, 'src/cli/main-entry.ts'), ...args],
      { cwd: REPO_ROOT, env: { ...process.env, ...env } },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}
