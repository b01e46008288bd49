import { InternVLError } from '../errors.js';
import type { RgbImage } from './image.js';

// A bit-exact port of Pillow 9.4's 8-bit BICUBIC resize (libImaging/Resample.c): separable
// convolution with a = −0.5, support widened by the scale when shrinking, 22-bit fixed-point
// coefficients, horizontal pass first into a uint8 intermediate, then the vertical pass.

const PRECISION_BITS = 22;
const FIXED_ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);
const BICUBIC_SUPPORT = 2;

function bicubicKernel(x: number): number {
  const a = -0.5;
  const t = x < 0 ? -x : x;
  if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
  if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
  return 0;
}

/** Per-output-sample taps along one axis: source start, tap count, and fixed-point weights. */
interface AxisCoefficients {
  /** Taps reserved per output sample (stride of `weights`). */
  ksize: number;
  /** first[o]: the first source index read for output o. */
  first: Int32Array;
  /** count[o]: how many source samples output o reads. */
  count: Int32Array;
  /** weights[o·ksize + t]: fixed-point weight of source sample first[o] + t. */
  weights: Int32Array;
}

/** `precompute_coeffs` followed by `normalize_coeffs_8bpc`, in the same double-precision operation order. */
function axisCoefficients(inSize: number, outSize: number): AxisCoefficients {
  // Pillow passes the box edges as C floats: (double)(in1 − in0) / outSize.
  const scale = Math.fround(inSize) / outSize;
  const filterScale = Math.max(scale, 1);
  const support = BICUBIC_SUPPORT * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * ksize);
  const raw = new Float64Array(ksize);
  const inverseScale = 1 / filterScale;
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    const lo = Math.max(0, Math.trunc(center - support + 0.5));
    const hi = Math.min(inSize, Math.trunc(center + support + 0.5));
    const n = hi - lo;
    let sum = 0;
    for (let t = 0; t < n; t++) {
      const w = bicubicKernel((t + lo - center + 0.5) * inverseScale);
      raw[t] = w;
      sum += w;
    }
    const base = o * ksize;
    for (let t = 0; t < n; t++) {
      const w = sum !== 0 ? raw[t] / sum : raw[t];
      // Round half away from zero, as (int)(w·2^22 ± 0.5) in C.
      weights[base + t] = w < 0 ? Math.trunc(-0.5 + w * FIXED_ONE) : Math.trunc(0.5 + w * FIXED_ONE);
    }
    first[o] = lo;
    count[o] = n;
  }
  return { ksize, first, count, weights };
}

/** Pillow's clip8: the accumulator's integer part (arithmetic shift), clamped to 0..255. */
function clip8(acc: number): number {
  const v = acc >> PRECISION_BITS;
  return v < 0 ? 0 : Math.min(v, 255);
}

/** Horizontal pass over source rows rowStart..rowStart+rowCount−1; each output row is outWidth wide. */
function resampleHorizontal(
  src: Uint8Array,
  srcWidth: number,
  rowStart: number,
  rowCount: number,
  outWidth: number,
  c: AxisCoefficients,
): Uint8Array {
  const out = new Uint8Array(outWidth * rowCount * 3);
  const { ksize, first, count, weights } = c;
  for (let y = 0; y < rowCount; y++) {
    const rowBase = (y + rowStart) * srcWidth * 3;
    let o = y * outWidth * 3;
    for (let x = 0; x < outWidth; x++) {
      const n = count[x];
      const kBase = x * ksize;
      let p = rowBase + first[x] * 3;
      let r = HALF;
      let g = HALF;
      let b = HALF;
      for (let t = 0; t < n; t++) {
        const k = weights[kBase + t];
        // |0 keeps C's 32-bit int accumulator semantics.
        r = (r + src[p] * k) | 0;
        g = (g + src[p + 1] * k) | 0;
        b = (b + src[p + 2] * k) | 0;
        p += 3;
      }
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
      o += 3;
    }
  }
  return out;
}

/** Vertical pass; `rowOffset` is subtracted from each output's first source row. */
function resampleVertical(
  src: Uint8Array,
  width: number,
  rowOffset: number,
  outHeight: number,
  c: AxisCoefficients,
): Uint8Array {
  const rowLen = width * 3;
  const out = new Uint8Array(rowLen * outHeight);
  const acc = new Int32Array(rowLen);
  const { ksize, first, count, weights } = c;
  for (let y = 0; y < outHeight; y++) {
    acc.fill(HALF);
    const n = count[y];
    const kBase = y * ksize;
    const srcRow0 = first[y] - rowOffset;
    for (let t = 0; t < n; t++) {
      const k = weights[kBase + t];
      const p = (srcRow0 + t) * rowLen;
      for (let i = 0; i < rowLen; i++) acc[i] += src[p + i] * k;
    }
    const o = y * rowLen;
    for (let i = 0; i < rowLen; i++) out[o + i] = clip8(acc[i]);
  }
  return out;
}

function checkDimension(value: number, name: string): void {
  if (!Number.isInteger(value) || value < 1) {
    throw new InternVLError('BAD_INPUT', `resize ${name} must be a positive integer, got ${value}`);
  }
}

/**
 * Resize an RGB image exactly as Pillow 9.4 `Image.resize((width, height), BICUBIC)` does for mode RGB
 * (bit-exact). The same size returns a copy.
 */
export function resizeBicubic(image: RgbImage, width: number, height: number): RgbImage {
  checkDimension(width, 'width');
  checkDimension(height, 'height');
  checkDimension(image.width, 'source width');
  checkDimension(image.height, 'source height');
  if (image.data.length !== image.width * image.height * 3) {
    throw new InternVLError(
      'BAD_INPUT',
      `image data has ${image.data.length} bytes, expected ${image.width}×${image.height}×3`,
    );
  }
  const needHorizontal = width !== image.width;
  const needVertical = height !== image.height;
  if (!needHorizontal && !needVertical) {
    return { width, height, data: image.data.slice() };
  }

  const vertical = axisCoefficients(image.height, height);
  let data = image.data;
  let rowOffset = 0;
  if (needHorizontal) {
    const horizontal = axisCoefficients(image.width, width);
    // Only the source rows the vertical pass reads are resampled horizontally.
    const firstRow = vertical.first[0];
    const lastRow = vertical.first[height - 1] + vertical.count[height - 1];
    data = resampleHorizontal(data, image.width, firstRow, lastRow - firstRow, width, horizontal);
    rowOffset = firstRow;
  }
  if (needVertical) {
    data = resampleVertical(data, width, rowOffset, height, vertical);
  }
  return { width, height, data };
}
