/**
 * AWQ "gemm" checkpoints (AutoAWQ WQLinear_GEMM, LMDeploy `lite auto_awq`): each quantised torch Linear X
 * [out, in] is stored as
 *   X.qweight int32 [in, out/8]        eight 4-bit q of one input row, output columns 8c … 8c+7
 *   X.qzeros  int32 [in/group, out/8]  the zero points, packed the same way
 *   X.scales  fp16  [in/group, out]
 * (and X.bias as it was), with W[o, i] = (q − z) · s over the group of i. Nibble j (bits 4j … 4j+3) of a
 * packed word holds output column 8c + AWQ_PACK_ORDER[j].
 *
 * MatMulNBits computes the same (q − zero point) · scale per block of K, so the packed weights become
 * its blocks without requantising (scales widened exactly to fp32), and the fp32 weights are exact too:
 * (q − z) · s needs at most 11 + 4 significant bits.
 */
import { InternVLError } from '../errors.js';
import { dequantizeInt4, type Int4Blocks } from '../onnx/quantize.js';
import type { WeightSource } from './weights.js';

/** Output column (within its group of 8) held by nibble j of a packed word. */
export const AWQ_PACK_ORDER: readonly number[] = [0, 2, 4, 6, 1, 3, 5, 7];
/** Bit shift of the nibble holding output column 8c + j. */
const SHIFT_OF_COLUMN = AWQ_PACK_ORDER.reduce<number[]>((shifts, column, nibble) => {
  shifts[column] = 4 * nibble;
  return shifts;
}, []);

/** One AWQ-packed linear as read from the checkpoint (scales widened to fp32). */
export interface AwqLinear {
  inFeatures: number;
  outFeatures: number;
  groupSize: number;
  /** [in, out/8] */
  qweight: Int32Array;
  /** [in/group, out/8] */
  qzeros: Int32Array;
  /** [in/group, out] */
  scales: Float32Array;
}

/** The 4-bit values of packed int32 rows [rows, cols/8] as [rows, cols] (column order restored). */
export function unpackAwqRows(packed: Int32Array, rows: number, cols: number): Uint8Array {
  const words = cols / 8;
  const out = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let w = 0; w < words; w++) {
      const word = packed[r * words + w];
      for (let j = 0; j < 8; j++) out[r * cols + w * 8 + j] = (word >>> SHIFT_OF_COLUMN[j]) & 15;
    }
  }
  return out;
}

/** The linear as MatMulNBits blocks: N = out, K = in, one block per AWQ group. */
export function awqToInt4Blocks(linear: AwqLinear): Int4Blocks {
  const { inFeatures: k, outFeatures: n, groupSize: blockSize } = linear;
  const kBlocks = k / blockSize;
  const blob = blockSize / 2;
  const zpStride = Math.ceil(kBlocks / 2);
  const q = unpackAwqRows(linear.qweight, k, n);
  const zeros = unpackAwqRows(linear.qzeros, kBlocks, n);
  const packed = new Uint8Array(n * kBlocks * blob);
  const scales = new Float32Array(n * kBlocks);
  const zeroPoints = new Uint8Array(n * zpStride);
  for (let i = 0; i < k; i++) {
    const b = Math.floor(i / blockSize);
    const within = i - b * blockSize;
    const shift = within & 1 ? 4 : 0;
    for (let col = 0; col < n; col++) {
      packed[(col * kBlocks + b) * blob + (within >> 1)] |= q[i * n + col] << shift;
    }
  }
  for (let b = 0; b < kBlocks; b++) {
    for (let col = 0; col < n; col++) {
      scales[col * kBlocks + b] = linear.scales[b * n + col];
      zeroPoints[col * zpStride + (b >> 1)] |= zeros[b * n + col] << (b & 1 ? 4 : 0);
    }
  }
  return { n, k, blockSize, kBlocks, packed, scales, zeroPoints };
}

/** What awqWeights reads besides the plain tensors: the packed int32 tensors. */
export interface PackedTensorSource extends WeightSource {
  int32(name: string): Promise<Int32Array>;
}

const LINEAR_WEIGHT = /\.weight$/;

/**
 * A WeightSource over an AWQ checkpoint: `X.weight` of each packed linear reads as its exact fp32
 * weight [out, in] (float32) or as MatMulNBits blocks (int4Blocks); every other tensor is passed through.
 */
export function awqWeights(base: PackedTensorSource, groupSize: number): WeightSource {
  const packedName = (name: string) => {
    if (!LINEAR_WEIGHT.test(name) || base.has(name)) return undefined;
    const prefix = name.slice(0, -'weight'.length);
    return base.has(`${prefix}qweight`) ? prefix : undefined;
  };
  const shapeOf = (prefix: string): AwqShape => awqShape(base, prefix, groupSize);
  const read = async (prefix: string): Promise<Int4Blocks> => {
    const { inFeatures, outFeatures } = shapeOf(prefix);
    return awqToInt4Blocks({
      inFeatures,
      outFeatures,
      groupSize,
      qweight: await base.int32(`${prefix}qweight`),
      qzeros: await base.int32(`${prefix}qzeros`),
      scales: await base.float32(`${prefix}scales`),
    });
  };
  return {
    has: (name) => base.has(name) || packedName(name) !== undefined,
    shape: (name) => {
      const prefix = packedName(name);
      if (prefix === undefined) return base.shape(name);
      const { inFeatures, outFeatures } = shapeOf(prefix);
      return [outFeatures, inFeatures];
    },
    float32: async (name) => {
      const prefix = packedName(name);
      return prefix === undefined ? base.float32(name) : dequantizeInt4(await read(prefix));
    },
    bfloat16: async (name) => (packedName(name) === undefined ? base.bfloat16?.(name) : undefined),
    rows: (name) => (packedName(name) === undefined ? base.rows?.(name) : undefined),
    int4Blocks: async (name) => {
      const prefix = packedName(name);
      return prefix === undefined ? undefined : read(prefix);
    },
  };
}

interface AwqShape {
  inFeatures: number;
  outFeatures: number;
}

/** The linear's [in, out] from X.qweight, after checking X.qzeros and X.scales agree with it and the group size. */
function awqShape(base: WeightSource, prefix: string, groupSize: number): AwqShape {
  const bad = (message: string): never => {
    throw new InternVLError('BAD_CHECKPOINT', `${prefix}qweight: ${message}`);
  };
  const qweight = base.shape(`${prefix}qweight`);
  if (qweight.length !== 2) bad(`expected a 2-D int32 [in, out/8] tensor, got [${qweight.join(',')}]`);
  const [inFeatures, words] = qweight;
  const outFeatures = words * 8;
  if (inFeatures % groupSize !== 0) {
    bad(`${inFeatures} input features are not a whole number of groups of ${groupSize}`);
  }
  const groups = inFeatures / groupSize;
  for (const [tensor, expected] of [
    ['qzeros', [groups, words]],
    ['scales', [groups, outFeatures]],
  ] as const) {
    const name = `${prefix}${tensor}`;
    if (!base.has(name)) bad(`${name} is missing (an AWQ linear needs qweight, qzeros and scales)`);
    const actual = base.shape(name);
    if (actual.length !== 2 || actual[0] !== expected[0] || actual[1] !== expected[1]) {
      bad(`${name} is [${actual.join(',')}], expected [${expected.join(',')}] for group size ${groupSize}`);
    }
  }
  return { inFeatures, outFeatures };
}
