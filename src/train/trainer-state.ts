/**
 * The trainer's resumable state beside a saved checkpoint: step, stage, seed and trainable set in
 * `trainer_state.json` (with checksums of every file saved), fp32 masters, AdamW moments and LoRA bases
 * in `optimizer_state.safetensors`.
 */
import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { float32ToBf16 } from '../io/float-formats.js';
import { Checkpoint } from '../io/safetensors.js';
import { type TensorToWrite, writeSafetensors } from '../io/safetensors-write.js';
import { checksumFiles } from './checkpoint-integrity.js';
import type { AdamState } from './optimizer.js';
import type { Parameter } from './trainable.js';

export const STATE_FILE = 'trainer_state.json';
const OPTIMIZER_FILE = 'optimizer_state.safetensors';

/** What of a trainer its state holds. */
export interface TrainerStateParts {
  stage: number;
  seed: number;
  trainable: readonly string[];
  params: Map<string, Parameter>;
  moments: Map<string, AdamState>;
  /** LoRA-adapted base weights (their frozen values are saved: model.safetensors holds the merged ones). */
  loraTargets: readonly string[];
  /** The checkpoint's other files, checksummed with the weights. */
  sideFiles: readonly string[];
}

export async function saveTrainerState(
  dir: string,
  step: number,
  parts: TrainerStateParts,
  extra: Record<string, unknown> | undefined,
): Promise<void> {
  const tensors: Record<string, TensorToWrite> = {};
  for (const name of parts.trainable) {
    const p = parts.params.get(name)!;
    tensors[`master.${name}`] = { dtype: 'F32', shape: p.shape, data: p.data };
    const m = parts.moments.get(name);
    if (m) {
      tensors[`exp_avg.${name}`] = { dtype: 'F32', shape: p.shape, data: m.expAvg };
      tensors[`exp_avg_sq.${name}`] = { dtype: 'F32', shape: p.shape, data: m.expAvgSq };
    }
  }
  for (const name of parts.loraTargets) {
    const p = parts.params.get(name)!;
    tensors[`lora_base.${name}`] =
      p.dtype === 'BF16'
        ? { dtype: 'BF16', shape: p.shape, data: float32ToBf16(p.data) }
        : { dtype: 'F32', shape: p.shape, data: p.data };
  }
  await writeSafetensors(path.join(dir, OPTIMIZER_FILE), tensors);
  const state = {
    step,
    stage: parts.stage,
    seed: parts.seed,
    trainable: parts.trainable,
    ...(extra ? { extra } : {}),
    // Every file save wrote, so a resume can tell a damaged checkpoint from an intact one.
    files: await checksumFiles(dir, [...parts.sideFiles, 'model.safetensors', OPTIMIZER_FILE]),
  };
  const file = path.join(dir, STATE_FILE);
  await writeFile(`${file}.tmp`, `${JSON.stringify(state, null, 1)}\n`);
  await rename(`${file}.tmp`, file);
}

/** Reads the state saved in `dir` into `parts` (params, moments); returns the step and the saved extra. */
export async function loadTrainerState(
  dir: string,
  parts: TrainerStateParts,
): Promise<{ step: number; extra: Record<string, unknown> | undefined }> {
  let state: { step?: unknown; trainable?: unknown; extra?: unknown };
  try {
    state = JSON.parse(await readFile(path.join(dir, STATE_FILE), 'utf8'));
  } catch (err) {
    throw new InternVLError('NOT_FOUND', `${dir}: no readable ${STATE_FILE} to resume from`, {
      cause: err,
    });
  }
  if (!Number.isInteger(state.step) || (state.step as number) < 0) {
    throw new InternVLError(
      'BAD_CHECKPOINT',
      `${path.join(dir, STATE_FILE)}: "step" must be a non-negative integer`,
    );
  }
  if (Array.isArray(state.trainable)) {
    const saved = [...(state.trainable as string[])].sort();
    const now = [...parts.trainable].sort();
    if (saved.length !== now.length || saved.some((n, i) => n !== now[i])) {
      throw new InternVLError(
        'BAD_INPUT',
        `${path.join(dir, STATE_FILE)}: the checkpoint trained ${saved.length} tensors, this run would train ${now.length} (resume with the same stage, freeze and LoRA options)`,
      );
    }
  }
  const file = path.join(dir, OPTIMIZER_FILE);
  const saved = await Checkpoint.open(file);
  try {
    for (const name of parts.loraTargets) {
      if (!saved.has(`lora_base.${name}`)) {
        throw new InternVLError('BAD_CHECKPOINT', `${file}: lora_base.${name} is missing`);
      }
      parts.params.get(name)!.data.set(await saved.readFloat32(`lora_base.${name}`));
    }
    for (const name of parts.trainable) {
      const p = parts.params.get(name)!;
      if (saved.has(`master.${name}`)) p.data.set(await saved.readFloat32(`master.${name}`));
      if (saved.has(`exp_avg.${name}`)) {
        parts.moments.set(name, {
          expAvg: Float32Array.from(await saved.readFloat32(`exp_avg.${name}`)),
          expAvgSq: Float32Array.from(await saved.readFloat32(`exp_avg_sq.${name}`)),
        });
      }
    }
  } finally {
    await saved.close();
  }
  const extra =
    state.extra && typeof state.extra === 'object' ? (state.extra as Record<string, unknown>) : undefined;
  return { step: state.step as number, extra };
}

/** Every file of a checkpoint folder but its weights and trainer state. */
export async function readSideFiles(dir: string): Promise<Map<string, Uint8Array>> {
  const files = new Map<string, Uint8Array>();
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (!entry.isFile()) continue;
    if (entry.name.endsWith('.safetensors') || entry.name === 'model.safetensors.index.json') continue;
    if (entry.name === STATE_FILE || entry.name.endsWith('.tmp')) continue;
    files.set(entry.name, await readFile(path.join(dir, entry.name)));
  }
  return files;
}
