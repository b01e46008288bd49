/**
 * PyTorch `F.interpolate(x, size, mode='bicubic', align_corners=False)` on float32 data, as the CPU
 * kernel computes it: cubic convolution with A = -0.75, source indices clamped to the edge, the
 * width pass inside the height pass, float32 arithmetic.
 */

import { InternVLError } from '../errors.js';

const A = -0.75;
const f32 = Math.fround;

function cubicConvolution1(x: number): number {
  return f32(f32(f32(f32(f32((A + 2) * x) - (A + 3)) * x) * x) + 1);
}

function cubicConvolution2(x: number): number {
  return f32(f32(f32(f32(f32(f32(A * x) - 5 * A) * x) + 8 * A) * x) - 4 * A);
}

interface AxisTaps {
  /** Four clamped source indices per output index. */
  index: Int32Array;
  /** Four weights per output index. */
  weight: Float32Array;
}

function axisTaps(inSize: number, outSize: number): AxisTaps {
  const index = new Int32Array(outSize * 4);
  const weight = new Float32Array(outSize * 4);
  const scale = f32(inSize / outSize);
  for (let o = 0; o < outSize; o++) {
    // Evaluated in double and stored as float, as in ATen's area_pixel_compute_source_index.
    const real = f32(scale * (o + 0.5) - 0.5);
    const base = Math.floor(real);
    const t = f32(real - base);
    weight[o * 4] = cubicConvolution2(f32(t + 1));
    weight[o * 4 + 1] = cubicConvolution1(t);
    weight[o * 4 + 2] = cubicConvolution1(f32(1 - t));
    weight[o * 4 + 3] = cubicConvolution2(f32(f32(1 - t) + 1));
    for (let k = 0; k < 4; k++) index[o * 4 + k] = Math.min(Math.max(base - 1 + k, 0), inSize - 1);
  }
  return { index, weight };
}

/**
 * Resizes `channels` planes of `inH`×`inW` (layout [channels, inH, inW]) to `outH`×`outW`
 * (layout [channels, outH, outW]). Same size in and out returns an exact copy.
 */
export function bicubicResize(
  src: Float32Array,
  channels: number,
  inH: number,
  inW: number,
  outH: number,
  outW: number,
): Float32Array {
  for (const [what, v] of [
    ['channels', channels],
    ['inH', inH],
    ['inW', inW],
    ['outH', outH],
    ['outW', outW],
  ] as const) {
    if (!Number.isInteger(v) || v < 1)
      throw new InternVLError('BAD_INPUT', `bicubicResize: ${what} must be a positive integer, got ${v}`);
  }
  if (src.length !== channels * inH * inW) {
    throw new InternVLError(
      'BAD_INPUT',
      `bicubicResize: ${src.length} values for [${channels}, ${inH}, ${inW}]`,
    );
  }
  if (inH === outH && inW === outW) return src.slice();
  const rows = axisTaps(inH, outH);
  const cols = axisTaps(inW, outW);
  const out = new Float32Array(channels * outH * outW);
  for (let c = 0; c < channels; c++) {
    const plane = c * inH * inW;
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        let acc = 0;
        for (let i = 0; i < 4; i++) {
          const row = plane + rows.index[y * 4 + i] * inW;
          let line = 0;
          for (let j = 0; j < 4; j++)
            line = f32(line + f32(src[row + cols.index[x * 4 + j]] * cols.weight[x * 4 + j]));
          acc = f32(acc + f32(line * rows.weight[y * 4 + i]));
        }
        out[(c * outH + y) * outW + x] = acc;
      }
    }
  }
  return out;
}
