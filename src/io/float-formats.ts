/** bfloat16 and float16 to and from float32, exactly (round to nearest even on the way down). */
import { InternVLError } from '../errors.js';

/** bfloat16 bits to float32: the bf16 bits are the top half of the float32 bits. */
export function bf16ToFloat32(
  src: Uint16Array,
  dst: Float32Array = new Float32Array(src.length),
): Float32Array {
  if (dst.length < src.length)
    throw new InternVLError('BAD_INPUT', 'bf16ToFloat32: destination is too short');
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return dst;
}

let halfTable: Float32Array | undefined;

function halfToFloatScalar(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Number.POSITIVE_INFINITY : Number.NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** IEEE half bits to float32 (exact: subnormals, infinities and NaN included). */
export function float16ToFloat32(
  src: Uint16Array,
  dst: Float32Array = new Float32Array(src.length),
): Float32Array {
  if (dst.length < src.length)
    throw new InternVLError('BAD_INPUT', 'float16ToFloat32: destination is too short');
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = halfToFloatScalar(h);
  }
  const table = halfTable;
  for (let i = 0; i < src.length; i++) dst[i] = table[src[i]];
  return dst;
}

/** float32 to bfloat16 bits, round-to-nearest-even (as torch does); NaN stays NaN. */
export function float32ToBf16(
  src: Float32Array,
  dst: Uint16Array = new Uint16Array(src.length),
): Uint16Array {
  if (dst.length < src.length)
    throw new InternVLError('BAD_INPUT', 'float32ToBf16: destination is too short');
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const b = bits[i];
    if ((b & 0x7fffffff) > 0x7f800000) {
      dst[i] = (b >>> 16) | 0x0040;
    } else {
      dst[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    }
  }
  return dst;
}

/** float32 to IEEE half bits, round-to-nearest-even, overflow to infinity, subnormals kept; NaN stays NaN. */
export function float32ToFloat16(
  src: Float32Array,
  dst: Uint16Array = new Uint16Array(src.length),
): Uint16Array {
  if (dst.length < src.length)
    throw new InternVLError('BAD_INPUT', 'float32ToFloat16: destination is too short');
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const b = bits[i];
    const sign = (b >>> 16) & 0x8000;
    const abs = b & 0x7fffffff;
    if (abs > 0x7f800000) {
      dst[i] = sign | 0x7e00 | ((abs >>> 13) & 0x3ff);
    } else if (abs >= 0x477ff000) {
      // At or above 65520 (halfway between the largest half, 65504, and 2^16) rounds to infinity.
      dst[i] = sign | 0x7c00;
    } else if (abs < 0x38800000) {
      // Result is a half subnormal (or zero): scale to units of 2^-24 and round half to even.
      const units = Math.abs(src[i]) * 2 ** 24;
      let r = Math.round(units);
      if (r - units === 0.5 && r % 2 === 1) r -= 1;
      dst[i] = sign | r;
    } else {
      const rounded = abs + 0x0fff + ((abs >>> 13) & 1);
      dst[i] = sign | (((rounded >>> 13) - (112 << 10)) & 0x7fff);
    }
  }
  return dst;
}
