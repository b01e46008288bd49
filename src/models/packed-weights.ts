/**
 * A WeightSource over a checkpoint whose LLM linears are stored 4-bit packed (AWQ, GPTQ): each packed
 * torch Linear X [out, in] is X.qweight, X.qzeros (int32) and X.scales (fp16, [in/group, out]) instead
 * of X.weight. `X.weight` then reads as its exact fp32 weight, (q − z) · s (at most 11 + 4 significant
 * bits), or as MatMulNBits blocks with one block per group, which compute the same (q − zero point) ·
 * scale without requantising. The layouts differ only in how q and z are packed (models/awq.ts,
 * models/gptq.ts).
 */
import { InternVLError } from '../errors.js';
import { dequantizeInt4, type Int4Blocks } from '../onnx/quantize.js';
import type { WeightSource } from './weights.js';

/** How one format packs the 4-bit integers of a linear. */
export interface PackedLayout {
  /** 'AWQ', 'GPTQ' (in error messages). */
  name: string;
  /** The linear's [in, out] from X.qweight's shape. */
  features(qweight: readonly number[]): { inFeatures: number; outFeatures: number };
  /** q as [in, out] (row = input feature). */
  unpackWeights(qweight: Int32Array, inFeatures: number, outFeatures: number): Uint8Array;
  /** The real zero points as [groups, out]; `where` names the tensor in errors. */
  unpackZeros(qzeros: Int32Array, groups: number, outFeatures: number, where: string): Uint8Array;
  /** Checks the linear's other tensors (GPTQ's g_idx) before it is read. */
  checkExtra?(base: PackedTensorSource, prefix: string, inFeatures: number, groupSize: number): Promise<void>;
}

/** What packedWeights reads besides the plain tensors: the packed int32 tensors. */
export interface PackedTensorSource extends WeightSource {
  int32(name: string): Promise<Int32Array>;
}

/** MatMulNBits blocks (N = out, K = in, one block per group) of integers q [in, out], zero points and scales [groups, out]. */
export function int4BlocksFromIntegers(
  q: Uint8Array,
  zeros: Uint8Array,
  groupScales: Float32Array,
  inFeatures: number,
  outFeatures: number,
  groupSize: number,
): Int4Blocks {
  const [k, n, blockSize] = [inFeatures, outFeatures, groupSize];
  const kBlocks = k / blockSize;
  const blob = blockSize / 2;
  const zpStride = Math.ceil(kBlocks / 2);
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
      scales[col * kBlocks + b] = groupScales[b * n + col];
      zeroPoints[col * zpStride + (b >> 1)] |= zeros[b * n + col] << (b & 1 ? 4 : 0);
    }
  }
  return { n, k, blockSize, kBlocks, packed, scales, zeroPoints };
}

const LINEAR_WEIGHT = /\.weight$/;

/** The WeightSource described in the module comment, for linears packed in `layout`. */
export function packedWeights(
  base: PackedTensorSource,
  layout: PackedLayout,
  groupSize: number,
): WeightSource {
  const packedPrefix = (name: string) => {
    if (!LINEAR_WEIGHT.test(name) || base.has(name)) return undefined;
    const prefix = name.slice(0, -'weight'.length);
    return base.has(`${prefix}qweight`) ? prefix : undefined;
  };
  const read = async (prefix: string): Promise<Int4Blocks> => {
    const { inFeatures, outFeatures } = checkedFeatures(base, layout, prefix, groupSize);
    await layout.checkExtra?.(base, prefix, inFeatures, groupSize);
    const groups = inFeatures / groupSize;
    const q = layout.unpackWeights(await base.int32(`${prefix}qweight`), inFeatures, outFeatures);
    const zeros = layout.unpackZeros(
      await base.int32(`${prefix}qzeros`),
      groups,
      outFeatures,
      `${prefix}qzeros`,
    );
    const scales = await base.float32(`${prefix}scales`);
    return int4BlocksFromIntegers(q, zeros, scales, inFeatures, outFeatures, groupSize);
  };
  return {
    has: (name) => base.has(name) || packedPrefix(name) !== undefined,
    shape: (name) => {
      const prefix = packedPrefix(name);
      if (prefix === undefined) return base.shape(name);
      const { inFeatures, outFeatures } = checkedFeatures(base, layout, prefix, groupSize);
      return [outFeatures, inFeatures];
    },
    float32: async (name) => {
      const prefix = packedPrefix(name);
      return prefix === undefined ? base.float32(name) : dequantizeInt4(await read(prefix));
    },
    bfloat16: async (name) => (packedPrefix(name) === undefined ? base.bfloat16?.(name) : undefined),
    rows: (name) => (packedPrefix(name) === undefined ? base.rows?.(name) : undefined),
    int4Blocks: async (name) => {
      const prefix = packedPrefix(name);
      return prefix === undefined ? undefined : read(prefix);
    },
    checkpointName: base.checkpointName,
  };
}

/** The linear's [in, out] from X.qweight, after checking X.qzeros and X.scales agree with it and the group size. */
function checkedFeatures(
  base: WeightSource,
  layout: PackedLayout,
  prefix: string,
  groupSize: number,
): { inFeatures: number; outFeatures: number } {
  const bad = (message: string): never => {
    throw new InternVLError('BAD_CHECKPOINT', `${prefix}qweight (${layout.name}): ${message}`);
  };
  const qweight = base.shape(`${prefix}qweight`);
  if (qweight.length !== 2) bad(`expected a 2-D int32 tensor, got [${qweight.join(',')}]`);
  const { inFeatures, outFeatures } = layout.features(qweight);
  if (inFeatures % groupSize !== 0 || outFeatures % 8 !== 0) {
    bad(`[${inFeatures} in, ${outFeatures} out] is not whole groups of ${groupSize} inputs and of 8 outputs`);
  }
  const groups = inFeatures / groupSize;
  for (const [tensor, expected] of [
    ['qzeros', [groups, outFeatures / 8]],
    ['scales', [groups, outFeatures]],
  ] as const) {
    const name = `${prefix}${tensor}`;
    if (!base.has(name)) bad(`${name} is missing (a packed linear needs qweight, qzeros and scales)`);
    const actual = base.shape(name);
    if (actual.length !== 2 || actual[0] !== expected[0] || actual[1] !== expected[1]) {
      bad(`${name} is [${actual.join(',')}], expected [${expected.join(',')}] for group size ${groupSize}`);
    }
  }
  return { inFeatures, outFeatures };
}
