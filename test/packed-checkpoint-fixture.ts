/**
 * AWQ "gemm" and GPTQ packers written for the tests from the formats' descriptions (AutoAWQ
 * WQLinear_GEMM, LMDeploy lite auto_awq; AutoGPTQ QuantLinear), independent of src/models: per group of
 * input features the range [min, max] (asymmetric) or [−max|w|, max|w|] (symmetric, zero point 8) maps
 * onto 0..15 with an fp16 scale, q = clamp(round(w / s) + z), W' = (q − z) · s. AWQ: qweight [in, out/8]
 * holds output column 8c + ORDER[j] in nibble j, qzeros likewise. GPTQ: qweight [in/8, out] holds input
 * row 8r + j in nibble j, qzeros [groups, out/8] column 8c + j, stored minus 1 in the original format.
 * `writePackedCheckpoint` turns a golden model into a packed checkpoint and its dequantised twin (the
 * same tensors with every LLM linear replaced by W' in F32), so the two must give the same model.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { float16ToFloat32, float32ToFloat16 } from '../src/io/float-formats.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { type TensorToWrite, writeSafetensors } from '../src/io/safetensors-write.js';
import type { Int4Blocks } from '../src/onnx/quantize.js';

/** Nibble j of a packed word holds output column 8c + ORDER[j] (AutoAWQ's order_map). */
const ORDER = [0, 2, 4, 6, 1, 3, 5, 7];

export type PackedFormat = 'awq' | 'gptq' | 'gptq_v2';

export interface PackedLinear {
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

/** int32 [rows, cols] whose word (r, c) holds nibble(r, c, j) in bits 4j … 4j+3. */
function packWords(
  rows: number,
  cols: number,
  nibble: (r: number, c: number, j: number) => number,
): Int32Array {
  const out = new Int32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      let word = 0;
      for (let j = 0; j < 8; j++) word |= nibble(r, c, j) << (4 * j);
      out[r * cols + c] = word;
    }
  }
  return out;
}

/** Integer weights [out, in], zero points and fp16-valued scales [out, groups] of w [out, in]. */
export function quantizeGroups(w: Float32Array, out: number, inF: number, group: number, symmetric: boolean) {
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
      if (symmetric) [lo, hi] = [-Math.max(-lo, hi), Math.max(-lo, hi)];
      const s = float16ToFloat32(float32ToFloat16(Float32Array.of(Math.max(hi - lo, 1e-5) / 15)))[0];
      const z = symmetric ? 8 : Math.min(15, Math.max(0, Math.round(-lo / s)));
      scales[o * groups + g] = s;
      zeros[o * groups + g] = z;
      for (let i = g * group; i < (g + 1) * group; i++) {
        q[o * inF + i] = Math.min(15, Math.max(0, Math.round(w[o * inF + i] / s) + z));
      }
    }
  }
  return { q, zeros, scales };
}

/** The checkpoint tensors of given integer weights, zero points and (fp16-valued) scales in `format`. */
export function packIntegers(
  q: Uint8Array,
  zeros: Uint8Array,
  scales: Float32Array,
  out: number,
  inF: number,
  group: number,
  format: PackedFormat = 'awq',
): PackedLinear {
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
  const zeroOffset = format === 'gptq' ? 1 : 0;
  const packed =
    format === 'awq'
      ? {
          qweight: packWords(inF, out / 8, (i, c, j) => q[(8 * c + ORDER[j]) * inF + i]),
          qzeros: packWords(groups, out / 8, (g, c, j) => zeros[(8 * c + ORDER[j]) * groups + g]),
        }
      : {
          qweight: packWords(inF / 8, out, (r, o, j) => q[o * inF + 8 * r + j]),
          qzeros: packWords(groups, out / 8, (g, c, j) => zeros[(8 * c + j) * groups + g] - zeroOffset),
        };
  return { q, zeros, scales, ...packed, scalesF16: float32ToFloat16(scalesByGroup), dequantized };
}

/** The MatMulNBits blocks (block = group) of the same integers, built straight from the integer arrays. */
export function referenceBlocks(p: PackedLinear, out: number, inF: number, group: number): Int4Blocks {
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
 * Writes `packedDir` (the golden model's LLM linears packed in `format`, `quantization_config` where
 * `where` says; GPTQ with a g_idx per linear, the original format symmetric so no zero point is 0) and
 * `twinDir` (the same model with those linears as their dequantised F32 weights). Returns the packed
 * linears by weight name.
 */
export async function writePackedCheckpoint(
  goldenDir: string,
  packedDir: string,
  twinDir: string,
  group: number,
  format: PackedFormat = 'awq',
  where: 'llm_config' | 'top' = 'llm_config',
): Promise<Map<string, PackedLinear>> {
  const src = await Checkpoint.open(goldenDir);
  const packedTensors: Record<string, TensorToWrite> = {};
  const twin: Record<string, TensorToWrite> = {};
  const packedByName = new Map<string, PackedLinear>();
  try {
    for (const name of src.names()) {
      const info = src.info(name);
      if (!isLlmLinear(name, info.shape)) {
        const raw = { dtype: info.dtype, shape: info.shape, data: await src.readBytes(name) };
        packedTensors[name] = raw;
        twin[name] = raw;
        continue;
      }
      const [out, inF] = info.shape;
      const { q, zeros, scales } = quantizeGroups(
        await src.readFloat32(name),
        out,
        inF,
        group,
        format === 'gptq',
      );
      const p = packIntegers(q, zeros, scales, out, inF, group, format);
      packedByName.set(name, p);
      const prefix = name.slice(0, -'weight'.length);
      const qweightShape = format === 'awq' ? [inF, out / 8] : [inF / 8, out];
      packedTensors[`${prefix}qweight`] = { dtype: 'I32', shape: qweightShape, data: p.qweight };
      packedTensors[`${prefix}qzeros`] = { dtype: 'I32', shape: [inF / group, out / 8], data: p.qzeros };
      packedTensors[`${prefix}scales`] = { dtype: 'F16', shape: [inF / group, out], data: p.scalesF16 };
      if (format !== 'awq') {
        const gIdx = Int32Array.from({ length: inF }, (_, i) => Math.floor(i / group));
        packedTensors[`${prefix}g_idx`] = { dtype: 'I32', shape: [inF], data: gIdx };
      }
      twin[name] = { dtype: 'F32', shape: info.shape, data: p.dequantized };
    }
  } finally {
    await src.close();
  }
  await writeSafetensors(path.join(packedDir, 'model.safetensors'), packedTensors);
  await writeSafetensors(path.join(twinDir, 'model.safetensors'), twin);
  const config = JSON.parse(readFileSync(path.join(goldenDir, 'config.json'), 'utf8'));
  writeFileSync(path.join(twinDir, 'config.json'), JSON.stringify(config));
  const quantization =
    format === 'awq'
      ? { quant_method: 'awq', version: 'gemm', bits: 4, group_size: group, zero_point: true }
      : {
          quant_method: 'gptq',
          bits: 4,
          group_size: group,
          desc_act: false,
          sym: format === 'gptq',
          // transformers writes no checkpoint_format for the original format.
          ...(format === 'gptq_v2' ? { checkpoint_format: 'gptq_v2' } : {}),
        };
  if (where === 'top') config.quantization_config = quantization;
  else config.llm_config.quantization_config = quantization;
  writeFileSync(path.join(packedDir, 'config.json'), JSON.stringify(config));
  for (const f of SIDE_FILES) {
    copyFileSync(path.join(goldenDir, f), path.join(packedDir, f));
    copyFileSync(path.join(goldenDir, f), path.join(twinDir, f));
  }
  return packedByName;
}
