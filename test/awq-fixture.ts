/**
 * An AWQ "gemm" packer written for the tests from the format's description (AutoAWQ WQLinear_GEMM,
 * LMDeploy lite auto_awq), independent of src/models/awq.ts: per group of input features the range
 * [min, max] maps onto 0..15 with an fp16 scale, q = clamp(round(w / s) + z), W' = (q − z) · s; qweight
 * [in, out/8] holds output column 8c + ORDER[j] in nibble j, qzeros likewise.
 * `writeAwqCheckpoint` turns a golden model into an AWQ checkpoint and its dequantised twin (the same
 * tensors with every LLM linear replaced by W' in F32), so the two must give the same model.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  Checkpoint,
  float16ToFloat32,
  float32ToFloat16,
  type TensorToWrite,
  writeSafetensors,
} from '../src/io/safetensors.js';
import type { Int4Blocks } from '../src/onnx/quantize.js';

/** Nibble j of a packed word holds output column 8c + ORDER[j] (AutoAWQ's order_map). */
const ORDER = [0, 2, 4, 6, 1, 3, 5, 7];

export interface AwqPacked {
  /** Integer weights [out, in] and zero points [out, groups], scales [out, groups] (fp16 values). */
  q: Uint8Array;
  zeros: Uint8Array;
  scales: Float32Array;
  /** The checkpoint tensors. */
  qweight: Int32Array;
  qzeros: Int32Array;
  scalesF16: Uint16Array;
  /** (q − z) · s as [out, in]. */
  dequantized: Float32Array;
}

/** Packs [rows, cols] 4-bit values (given as value(row, col)) into int32 [rows, cols/8], AWQ order. */
function packColumns(rows: number, cols: number, value: (r: number, c: number) => number): Int32Array {
  const out = new Int32Array((rows * cols) / 8);
  for (let r = 0; r < rows; r++) {
    for (let w = 0; w < cols / 8; w++) {
      let word = 0;
      for (let j = 0; j < 8; j++) word |= value(r, w * 8 + ORDER[j]) << (4 * j);
      out[r * (cols / 8) + w] = word;
    }
  }
  return out;
}

/** AWQ-quantises a torch Linear weight w [out, in] with `group` input features per scale. */
export function awqQuantize(w: Float32Array, out: number, inF: number, group: number): AwqPacked {
  const groups = inF / group;
  const q = new Uint8Array(out * inF);
  const zeros = new Uint8Array(out * groups);
  const scales = new Float32Array(out * groups);
  for (let o = 0; o < out; o++) {
    for (let g = 0; g < groups; g++) {
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = g * group; i < (g + 1) * group; i++) {
        lo = Math.min(lo, w[o * inF + i]);
        hi = Math.max(hi, w[o * inF + i]);
      }
      const s = float16ToFloat32(float32ToFloat16(Float32Array.of(Math.max(hi - lo, 1e-5) / 15)))[0];
      const z = Math.min(15, Math.max(0, Math.round(-lo / s)));
      scales[o * groups + g] = s;
      zeros[o * groups + g] = z;
      for (let i = g * group; i < (g + 1) * group; i++) {
        q[o * inF + i] = Math.min(15, Math.max(0, Math.round(w[o * inF + i] / s) + z));
      }
    }
  }
  return awqFromIntegers(q, zeros, scales, out, inF, group);
}

/** The AWQ tensors of given integer weights, zero points and (fp16-valued) scales. */
export function awqFromIntegers(
  q: Uint8Array,
  zeros: Uint8Array,
  scales: Float32Array,
  out: number,
  inF: number,
  group: number,
): AwqPacked {
  const groups = inF / group;
  const dequantized = new Float32Array(out * inF);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) {
      const g = Math.floor(i / group);
      dequantized[o * inF + i] = (q[o * inF + i] - zeros[o * groups + g]) * scales[o * groups + g];
    }
  }
  const scalesByGroup = new Float32Array(groups * out);
  for (let o = 0; o < out; o++)
    for (let g = 0; g < groups; g++) scalesByGroup[g * out + o] = scales[o * groups + g];
  return {
    q,
    zeros,
    scales,
    qweight: packColumns(inF, out, (i, o) => q[o * inF + i]),
    qzeros: packColumns(groups, out, (g, o) => zeros[o * groups + g]),
    scalesF16: float32ToFloat16(scalesByGroup),
    dequantized,
  };
}

/** The MatMulNBits blocks (block = group) of the same integers, built straight from the integer arrays. */
export function referenceBlocks(p: AwqPacked, out: number, inF: number, group: number): Int4Blocks {
  const kBlocks = inF / group;
  const zpStride = Math.ceil(kBlocks / 2);
  const packed = new Uint8Array((out * inF) / 2);
  const zeroPoints = new Uint8Array(out * zpStride);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i += 2)
      packed[(o * inF + i) / 2] = p.q[o * inF + i] | (p.q[o * inF + i + 1] << 4);
    for (let b = 0; b < kBlocks; b++)
      zeroPoints[o * zpStride + (b >> 1)] |= p.zeros[o * kBlocks + b] << (b & 1 ? 4 : 0);
  }
  return { n: out, k: inF, blockSize: group, kBlocks, packed, scales: p.scales, zeroPoints };
}

/** LLM linears of the golden checkpoints: 2-D `.weight` tensors inside the decoder layers. */
export function isLlmLinear(name: string, shape: number[]): boolean {
  return /^language_model\.model\.layers\.\d+\./.test(name) && name.endsWith('.weight') && shape.length === 2;
}

const SIDE_FILES = [
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
];

/**
 * Writes `awqDir` (the golden model's LLM linears AWQ-packed, `quantization_config` where `where` says)
 * and `twinDir` (the same model with those linears as their dequantised F32 weights). Returns the packed
 * linears by weight name.
 */
export async function writeAwqCheckpoint(
  goldenDir: string,
  awqDir: string,
  twinDir: string,
  group: number,
  where: 'llm_config' | 'top' = 'llm_config',
): Promise<Map<string, AwqPacked>> {
  const src = await Checkpoint.open(goldenDir);
  const awq: Record<string, TensorToWrite> = {};
  const twin: Record<string, TensorToWrite> = {};
  const packedByName = new Map<string, AwqPacked>();
  try {
    for (const name of src.names()) {
      const info = src.info(name);
      if (!isLlmLinear(name, info.shape)) {
        const raw = { dtype: info.dtype, shape: info.shape, data: await src.readBytes(name) };
        awq[name] = raw;
        twin[name] = raw;
        continue;
      }
      const [out, inF] = info.shape;
      const p = awqQuantize(await src.readFloat32(name), out, inF, group);
      packedByName.set(name, p);
      const prefix = name.slice(0, -'weight'.length);
      awq[`${prefix}qweight`] = { dtype: 'I32', shape: [inF, out / 8], data: p.qweight };
      awq[`${prefix}qzeros`] = { dtype: 'I32', shape: [inF / group, out / 8], data: p.qzeros };
      awq[`${prefix}scales`] = { dtype: 'F16', shape: [inF / group, out], data: p.scalesF16 };
      twin[name] = { dtype: 'F32', shape: info.shape, data: p.dequantized };
    }
  } finally {
    await src.close();
  }
  await writeSafetensors(path.join(awqDir, 'model.safetensors'), awq);
  await writeSafetensors(path.join(twinDir, 'model.safetensors'), twin);
  const config = JSON.parse(readFileSync(path.join(goldenDir, 'config.json'), 'utf8'));
  writeFileSync(path.join(twinDir, 'config.json'), JSON.stringify(config));
  const quantization = { quant_method: 'awq', version: 'gemm', bits: 4, group_size: group, zero_point: true };
  if (where === 'top') config.quantization_config = quantization;
  else config.llm_config.quantization_config = quantization;
  writeFileSync(path.join(awqDir, 'config.json'), JSON.stringify(config));
  for (const f of SIDE_FILES) {
    copyFileSync(path.join(goldenDir, f), path.join(awqDir, f));
    copyFileSync(path.join(goldenDir, f), path.join(twinDir, f));
  }
  return packedByName;
}
