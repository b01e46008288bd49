/**
 * Weight quantisation for linear layers, in the layouts onnxruntime's com.microsoft kernels read:
 *
 * - int4: MatMulNBits (bits 4), blockwise asymmetric along K with a uint8 zero point per block. The
 *   fastest M = 1 kernel on x86 (decode); with accuracy_level 4 the activations are quantised to int8.
 * - int8: DynamicQuantizeMatMul, symmetric per output column (scale = max|w| / 127); the activations
 *   are quantised to uint8 per call. The fast large-M kernel (prefill, ViT). The weights are stored as
 *   int8 (U8S8 kernel) or as uint8 = q + 128 with zero point 128 (U8U8 kernel): the same values, and the
 *   scheme that is exact on the CPU is chosen by engine/cpu.ts.
 *
 * Weights come as torch Linear weights [N = out, K = in], row-major.
 */
import { InternVLError } from '../errors.js';
import { type GraphBuilder, MS_DOMAIN } from './graph.js';

export type WeightDtype = 'fp32' | 'int8' | 'int4';
export const WEIGHT_DTYPES: readonly WeightDtype[] = ['fp32', 'int8', 'int4'];
export const BLOCK_SIZES: readonly number[] = [16, 32, 64, 128, 256];
/** DynamicQuantizeMatMul's integer product: uint8 activations × int8 or × uint8 weights. */
export type Int8Kernel = 'u8s8' | 'u8u8';
/** The zero point of U8U8 weights: uint8 q + 128 stands for int8 q. */
export const U8U8_WEIGHT_ZERO_POINT = 128;

/** How one linear layer's weight is stored in the graph. */
export interface LinearQuant {
  dtype: WeightDtype;
  /** int4 only: K elements per scale (default 32). */
  blockSize?: number;
  /** int4 only: MatMulNBits accuracy_level (0 = fp32 compute … 4 = int8 activations; default 4). */
  accuracyLevel?: number;
  /** int8 only (required there): the integer kernel the weights are stored for. */
  int8Kernel?: Int8Kernel;
}

export const DEFAULT_BLOCK_SIZE = 32;
export const DEFAULT_ACCURACY_LEVEL = 4;

export function checkWeightDtype(what: string, value: unknown, allowed = WEIGHT_DTYPES): WeightDtype {
  if (typeof value !== 'string' || !allowed.includes(value as WeightDtype)) {
    throw new InternVLError(
      'BAD_INPUT',
      `${what} must be one of ${allowed.join(', ')}, got ${String(value)}`,
    );
  }
  return value as WeightDtype;
}

export function checkInt8Kernel(what: string, value: unknown): Int8Kernel {
  if (value !== 'u8s8' && value !== 'u8u8') {
    throw new InternVLError('BAD_INPUT', `${what} must be u8s8 or u8u8, got ${String(value)}`);
  }
  return value;
}

export function checkBlockSize(value: unknown): number {
  if (typeof value !== 'number' || !BLOCK_SIZES.includes(value)) {
    throw new InternVLError(
      'BAD_INPUT',
      `blockSize must be one of ${BLOCK_SIZES.join(', ')}, got ${String(value)}`,
    );
  }
  return value;
}

export function checkAccuracyLevel(value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 4) {
    throw new InternVLError('BAD_INPUT', `accuracyLevel must be an integer 0..4, got ${String(value)}`);
  }
  return value;
}

/** MatMulNBits 4-bit tensors for a [N, K] weight. */
export interface Int4Blocks {
  n: number;
  k: number;
  blockSize: number;
  /** ceil(K / blockSize) */
  kBlocks: number;
  /** [N, kBlocks, blockSize / 2]: element 2j in the low nibble of byte j, 2j + 1 in the high nibble. */
  packed: Uint8Array;
  /** [N · kBlocks] */
  scales: Float32Array;
  /** [N · ceil(kBlocks / 2)]: block b of column n in byte n·ceil(kBlocks/2) + (b >> 1), low nibble for even b. */
  zeroPoints: Uint8Array;
}

function checkMatrix(weight: Float32Array, n: number, k: number): void {
  if (!Number.isInteger(n) || !Number.isInteger(k) || n < 1 || k < 1 || weight.length !== n * k) {
    throw new InternVLError('BAD_INPUT', `weight has ${weight.length} values, not a [${n}, ${k}] matrix`);
  }
}

/**
 * Blockwise asymmetric 4-bit quantisation of a torch Linear weight [N, K]: per block the range
 * [min(0, lo), max(0, hi)] maps onto 0..15, so zero is exact (as onnxruntime's MatMul4BitsQuantizer).
 */
export function quantizeInt4(
  weight: Float32Array,
  n: number,
  k: number,
  blockSize = DEFAULT_BLOCK_SIZE,
): Int4Blocks {
  checkMatrix(weight, n, k);
  checkBlockSize(blockSize);
  const kBlocks = Math.ceil(k / blockSize);
  const blob = blockSize / 2;
  const zpStride = Math.ceil(kBlocks / 2);
  const packed = new Uint8Array(n * kBlocks * blob);
  const scales = new Float32Array(n * kBlocks);
  const zeroPoints = new Uint8Array(n * zpStride);
  const q = new Uint8Array(blockSize);
  for (let col = 0; col < n; col++) {
    const row = col * k;
    for (let b = 0; b < kBlocks; b++) {
      const start = b * blockSize;
      const end = Math.min(start + blockSize, k);
      let lo = 0;
      let hi = 0;
      for (let i = start; i < end; i++) {
        const v = weight[row + i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      const scale = Math.fround((hi - lo) / 15);
      const zp = scale === 0 ? 0 : Math.min(15, Math.max(0, Math.round(-lo / scale)));
      q.fill(zp);
      if (scale !== 0) {
        for (let i = start; i < end; i++) {
          q[i - start] = Math.min(15, Math.max(0, Math.round(weight[row + i] / scale) + zp));
        }
      }
      const out = (col * kBlocks + b) * blob;
      for (let j = 0; j < blob; j++) packed[out + j] = q[2 * j] | (q[2 * j + 1] << 4);
      scales[col * kBlocks + b] = scale;
      zeroPoints[col * zpStride + (b >> 1)] |= b & 1 ? zp << 4 : zp;
    }
  }
  return { n, k, blockSize, kBlocks, packed, scales, zeroPoints };
}

/** The weight [N, K] that an Int4Blocks stands for: (q − zp) · scale. */
export function dequantizeInt4(w: Int4Blocks): Float32Array {
  const { n, k, blockSize, kBlocks } = w;
  const blob = blockSize / 2;
  const zpStride = Math.ceil(kBlocks / 2);
  const out = new Float32Array(n * k);
  for (let col = 0; col < n; col++) {
    for (let i = 0; i < k; i++) {
      const b = Math.floor(i / blockSize);
      const within = i - b * blockSize;
      const byte = w.packed[(col * kBlocks + b) * blob + (within >> 1)];
      const q = within & 1 ? byte >> 4 : byte & 15;
      const zpByte = w.zeroPoints[col * zpStride + (b >> 1)];
      const zp = b & 1 ? zpByte >> 4 : zpByte & 15;
      out[col * k + i] = Math.fround((q - zp) * w.scales[col * kBlocks + b]);
    }
  }
  return out;
}

/** DynamicQuantizeMatMul weight: int8 [K, N] (the MatMul right-hand side) and one scale per column. */
export interface Int8Columns {
  n: number;
  k: number;
  /** [K, N] row-major */
  weight: Int8Array;
  /** [N] */
  scales: Float32Array;
}

/** Symmetric per-output-column int8 quantisation of a torch Linear weight [N, K]: scale = max|w| / 127. */
export function quantizeInt8(weight: Float32Array, n: number, k: number): Int8Columns {
  checkMatrix(weight, n, k);
  const q = new Int8Array(k * n);
  const scales = new Float32Array(n);
  for (let col = 0; col < n; col++) {
    const row = col * k;
    let amax = 0;
    for (let i = 0; i < k; i++) amax = Math.max(amax, Math.abs(weight[row + i]));
    const scale = Math.fround(amax / 127);
    scales[col] = scale;
    if (scale === 0) continue;
    for (let i = 0; i < k; i++) {
      q[i * n + col] = Math.min(127, Math.max(-127, Math.round(weight[row + i] / scale)));
    }
  }
  return { n, k, weight: q, scales };
}

/** The weight [N, K] that an Int8Columns stands for. */
export function dequantizeInt8(w: Int8Columns): Float32Array {
  const out = new Float32Array(w.n * w.k);
  for (let col = 0; col < w.n; col++) {
    for (let i = 0; i < w.k; i++) out[col * w.k + i] = Math.fround(w.weight[i * w.n + col] * w.scales[col]);
  }
  return out;
}

/**
 * x[..., K] · Wᵀ for a torch Linear weight W [N, K] stored quantised (int8 or int4); no bias.
 * Initializers are named `${name}:…`.
 */
export function quantizedMatMul(
  g: GraphBuilder,
  x: string,
  name: string,
  weight: Float32Array,
  outFeatures: number,
  inFeatures: number,
  quant: LinearQuant,
): string {
  if (quant.dtype === 'int8') {
    const w = quantizeInt8(weight, outFeatures, inFeatures);
    const scales = g.initializer(`${name}:int8_scales`, 'float32', [outFeatures], w.scales);
    if (quant.int8Kernel === 'u8s8') {
      const b = g.initializer(`${name}:int8`, 'int8', [inFeatures, outFeatures], w.weight);
      return g.op('DynamicQuantizeMatMul', [x, b, scales], {}, MS_DOMAIN);
    }
    if (quant.int8Kernel === 'u8u8') {
      const shifted = Uint8Array.from(w.weight, (q) => q + U8U8_WEIGHT_ZERO_POINT);
      const b = g.initializer(`${name}:uint8`, 'uint8', [inFeatures, outFeatures], shifted);
      const zeroPoints = new Uint8Array(outFeatures).fill(U8U8_WEIGHT_ZERO_POINT);
      const zp = g.initializer(`${name}:uint8_zero_points`, 'uint8', [outFeatures], zeroPoints);
      return g.op('DynamicQuantizeMatMul', [x, b, scales, zp], {}, MS_DOMAIN);
    }
    throw new InternVLError('INTERNAL', `int8 weight ${name} has no int8Kernel (u8s8 or u8u8)`);
  }
  if (quant.dtype === 'int4') {
    const blockSize = quant.blockSize ?? DEFAULT_BLOCK_SIZE;
    const w = quantizeInt4(weight, outFeatures, inFeatures, blockSize);
    return int4MatMul(g, x, name, w, quant.accuracyLevel ?? DEFAULT_ACCURACY_LEVEL);
  }
  throw new InternVLError('INTERNAL', `quantizedMatMul called for ${quant.dtype} weight ${name}`);
}

/** x[..., K] · Wᵀ with W given as MatMulNBits blocks (quantised here or read pre-packed from a checkpoint). */
export function int4MatMul(
  g: GraphBuilder,
  x: string,
  name: string,
  w: Int4Blocks,
  accuracyLevel = DEFAULT_ACCURACY_LEVEL,
): string {
  checkBlockSize(w.blockSize);
  const b = g.initializer(`${name}:int4`, 'uint8', [w.n, w.kBlocks, w.blockSize / 2], w.packed);
  const scales = g.initializer(`${name}:int4_scales`, 'float32', [w.scales.length], w.scales);
  const zp = g.initializer(`${name}:int4_zero_points`, 'uint8', [w.zeroPoints.length], w.zeroPoints);
  return g.op(
    'MatMulNBits',
    [x, b, scales, zp],
    {
      K: { int: w.k },
      N: { int: w.n },
      bits: { int: 4 },
      block_size: { int: w.blockSize },
      accuracy_level: { int: accuracyLevel },
    },
    MS_DOMAIN,
  );
}

/**
 * The output columns of several [N_i, K] weights stacked into one [ΣN_i, K] (same K and block size):
 * each column's blocks, scales and zero points are its own, so stacking is exact.
 */
export function stackInt4Columns(parts: readonly Int4Blocks[]): Int4Blocks {
  const [first] = parts;
  if (!first || parts.some((p) => p.k !== first.k || p.blockSize !== first.blockSize)) {
    throw new InternVLError('INTERNAL', 'stacked int4 weights need one K and one block size');
  }
  const n = parts.reduce((sum, p) => sum + p.n, 0);
  const join = <T extends Uint8Array | Float32Array>(arrays: T[], out: T): T => {
    let at = 0;
    for (const a of arrays) {
      out.set(a, at);
      at += a.length;
    }
    return out;
  };
  const zpStride = Math.ceil(first.kBlocks / 2);
  return {
    n,
    k: first.k,
    blockSize: first.blockSize,
    kBlocks: first.kBlocks,
    packed: join(
      parts.map((p) => p.packed),
      new Uint8Array(n * first.kBlocks * (first.blockSize / 2)),
    ),
    scales: join(
      parts.map((p) => p.scales),
      new Float32Array(n * first.kBlocks),
    ),
    zeroPoints: join(
      parts.map((p) => p.zeroPoints),
      new Uint8Array(n * zpStride),
    ),
  };
}
