/**
 * InternLM2's packed wqkv (rows grouped per KV head) split into q, k and v rows, for float32 weights and
 * biases and for the checkpoint's own 4-bit blocks.
 */
import type { Int4Blocks } from '../onnx/quantize.js';
import type { DecoderDims } from './decoder.js';
import type { LinearWeight } from './linear-layers.js';

export interface SplitQkv<T = Float32Array> {
  q: T;
  k: T;
  v: T;
}

/**
 * Splits packed wqkv rows (weight [(H + 2·kvH)·hd, cols], or a bias with cols = 1) into q, k, v.
 * For each KV head g the packed rows are [q heads g·n_rep … (g+1)·n_rep − 1 | k head g | v head g],
 * each head_dim rows (einops `(h gs d)` with gs = n_rep + 2).
 */
export function splitPackedQkv<T extends Float32Array | Uint8Array>(
  packed: T,
  dims: DecoderDims,
  cols: number,
): SplitQkv<T> {
  const { numHeads, numKvHeads, headDim } = dims;
  const nRep = numHeads / numKvHeads;
  const headSize = headDim * cols;
  const make = (heads: number) => packed.slice(0, heads * headSize) as T;
  const q = make(numHeads);
  const k = make(numKvHeads);
  const v = make(numKvHeads);
  for (let g = 0; g < numKvHeads; g++) {
    const block = g * (nRep + 2) * headSize;
    for (let r = 0; r < nRep; r++) {
      const src = block + r * headSize;
      q.set(packed.subarray(src, src + headSize), (g * nRep + r) * headSize);
    }
    const kSrc = block + nRep * headSize;
    k.set(packed.subarray(kSrc, kSrc + headSize), g * headSize);
    v.set(packed.subarray(kSrc + headSize, kSrc + 2 * headSize), g * headSize);
  }
  return { q, k, v };
}

/**
 * The wqkv weight split into q, k, v rows. 4-bit blocks (AWQ and GPTQ checkpoints quantise wqkv as one
 * linear) split the same way: each output row's packed values, scales and zero points are its own.
 */
export function splitQkvWeight(weight: LinearWeight, dims: DecoderDims): SplitQkv<LinearWeight> {
  if (weight instanceof Float32Array) return splitPackedQkv(weight, dims, dims.hiddenSize);
  const { kBlocks, blockSize } = weight;
  const packed = splitPackedQkv(weight.packed, dims, kBlocks * (blockSize / 2));
  const scales = splitPackedQkv(weight.scales, dims, kBlocks);
  const zeroPoints = splitPackedQkv(weight.zeroPoints, dims, Math.ceil(kBlocks / 2));
  const rows = (which: 'q' | 'k' | 'v'): Int4Blocks => ({
    ...weight,
    n: scales[which].length / kBlocks,
    packed: packed[which],
    scales: scales[which],
    zeroPoints: zeroPoints[which],
  });
  return { q: rows('q'), k: rows('k'), v: rows('v') };
}
