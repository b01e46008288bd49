/**
 * Rotary position tables (rotate-half convention) computed per run for the positions of a chunk, so the
 * base can follow dynamic NTK scaling. Values are rounded to float32 at every step the way the official
 * PyTorch code computes them (fp32 inv_freq, fp32 position × frequency, fp32 cos/sin).
 */

export interface RopeScaling {
  /** 'dynamic': NTK-aware base growth past max_position_embeddings; 'linear': positions divided by factor. */
  type: 'dynamic' | 'linear';
  factor: number;
}

export interface RopeParams {
  headDim: number;
  theta: number;
  scaling: RopeScaling | null;
  maxPositionEmbeddings: number;
}

/**
 * The rotary base in use when the sequence holds `seqLen` tokens (cached + new). With dynamic NTK and
 * seqLen > max_position_embeddings: base·((factor·seqLen/maxPos) − (factor − 1))^(dim/(dim−2)),
 * as InternLM2DynamicNTKScalingRotaryEmbedding and transformers' dynamic rope compute it (in float64).
 */
export function ropeBase(params: RopeParams, seqLen: number): number {
  const { scaling, theta, maxPositionEmbeddings: maxPos, headDim: dim } = params;
  if (scaling?.type !== 'dynamic' || seqLen <= maxPos) return theta;
  const f = scaling.factor;
  return theta * ((f * seqLen) / maxPos - (f - 1)) ** (dim / (dim - 2));
}

/** inv_freq[j] = 1 / base^(2j/dim) for j < dim/2, in float32 like `1.0 / (base ** (arange(0, dim, 2).float() / dim))`. */
export function inverseFrequencies(base: number, headDim: number): Float32Array {
  const half = headDim / 2;
  const out = new Float32Array(half);
  const b = Math.fround(base);
  for (let j = 0; j < half; j++) {
    out[j] = 1 / Math.fround(b ** Math.fround((2 * j) / headDim));
  }
  return out;
}

export interface RotaryTables {
  /** [count, headDim/2] row-major; row r is position start + r. */
  cos: Float32Array;
  sin: Float32Array;
}

/**
 * cos/sin for positions start..start+count-1 (the half table: the rotate-half layout repeats it for the
 * second half of the head). `seqLen` is the total sequence length after this chunk, which sets the
 * dynamic-NTK base; keys already in the cache keep the rotation they were given.
 */
export function rotaryTables(params: RopeParams, start: number, count: number, seqLen: number): RotaryTables {
  const half = params.headDim / 2;
  const invFreq = inverseFrequencies(ropeBase(params, seqLen), params.headDim);
  const linearFactor = params.scaling?.type === 'linear' ? Math.fround(params.scaling.factor) : 1;
  const cos = new Float32Array(count * half);
  const sin = new Float32Array(count * half);
  for (let r = 0; r < count; r++) {
    const t = Math.fround(Math.fround(start + r) / linearFactor);
    for (let j = 0; j < half; j++) {
      const angle = Math.fround(t * invFreq[j]);
      cos[r * half + j] = Math.cos(angle);
      sin[r * half + j] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
