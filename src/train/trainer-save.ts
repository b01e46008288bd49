/**
 * The model files of a Trainer checkpoint: the source folder's other files as they were, and
 * model.safetensors with LoRA merged into the base weights, so the engine and the official code load it.
 */
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { float32ToBf16 } from '../io/float-formats.js';
import { type TensorToWrite, writeSafetensors } from '../io/safetensors-write.js';
import { loraParameterNames } from './param-graph.js';
import type { LoraSetup, Parameter } from './trainable.js';
import { STATE_FILE } from './trainer-state.js';

export interface ModelFiles {
  /** Checkpoint tensor names in the order they are written. */
  order: readonly string[];
  params: ReadonlyMap<string, Parameter>;
  lora: readonly LoraSetup[];
  /** The source folder's other files (config, tokenizer…), by file name. */
  sideFiles: ReadonlyMap<string, Uint8Array>;
}

/**
 * Creates `out` and removes its optimiser state first (the caller writes it last), then writes each
 * side file atomically and model.safetensors (bf16; F32 tensors kept as F32).
 */
export async function writeModelFiles(out: string, files: ModelFiles): Promise<void> {
  await mkdir(out, { recursive: true });
  await rm(path.join(out, STATE_FILE), { force: true });
  for (const [name, bytes] of files.sideFiles) {
    const target = path.join(out, name);
    await writeFile(`${target}.tmp`, bytes);
    await rename(`${target}.tmp`, target);
  }
  const merged = mergedLoraWeights(files.params, files.lora);
  const tensors: Record<string, TensorToWrite> = {};
  for (const name of files.order) {
    const p = files.params.get(name)!;
    const data = merged.get(name) ?? p.data;
    tensors[name] =
      p.dtype === 'F32'
        ? { dtype: 'F32', shape: p.shape, data }
        : { dtype: 'BF16', shape: p.shape, data: float32ToBf16(data) };
  }
  await writeSafetensors(path.join(out, 'model.safetensors'), tensors, { format: 'pt' });
}

/** W + scale·B·A for every LoRA target (fp32, accumulated in float64 per element). */
function mergedLoraWeights(
  params: ReadonlyMap<string, Parameter>,
  lora: readonly LoraSetup[],
): Map<string, Float32Array> {
  const merged = new Map<string, Float32Array>();
  for (const { rank, scale, targets } of lora)
    for (const w of targets) {
      const base = params.get(w)!;
      const names = loraParameterNames(w);
      const A = params.get(names.a)!.data;
      const B = params.get(names.b)!.data;
      const [rows, cols] = base.shape;
      const out = new Float32Array(base.data.length);
      const delta = new Float64Array(cols);
      for (let o = 0; o < rows; o++) {
        delta.fill(0);
        for (let k = 0; k < rank; k++) {
          const b = B[o * rank + k];
          if (b === 0) continue;
          for (let i = 0; i < cols; i++) delta[i] += b * A[k * cols + i];
        }
        for (let i = 0; i < cols; i++) out[o * cols + i] = base.data[o * cols + i] + scale * delta[i];
      }
      merged.set(w, out);
    }
  return merged;
}
