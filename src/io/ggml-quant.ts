/** ggml's Q4_0 quantisation (the block layout GGUF files and llama.cpp use), in plain TypeScript. */
import { InternVLError } from '../errors.js';
import { float16ToFloat32, float32ToFloat16 } from './float-formats.js';

/**
 * Q4_0 blocks of 32 values as ggml lays them out: an fp16 scale d, then 16 bytes whose low nibbles are
 * values 0–15 and high nibbles values 16–31, each q in 0..15 standing for (q − 8)·d. d is the value of
 * largest magnitude divided by −8 (so that value is exactly −8·d), and q = min(15, ⌊x/d + 8.5⌋), as
 * ggml's reference quantiser computes it.
 */
export function quantizeQ4_0(values: Float32Array, out?: Uint8Array): Uint8Array {
  if (values.length % 32 !== 0) {
    throw new InternVLError('BAD_INPUT', `Q4_0 needs whole blocks of 32 values, got ${values.length}`);
  }
  const blocks = values.length / 32;
  const dst = out ?? new Uint8Array(blocks * 18);
  if (dst.length < blocks * 18) throw new InternVLError('BAD_INPUT', 'quantizeQ4_0: output is too short');
  const scales = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    let max = 0;
    for (let j = b * 32; j < b * 32 + 32; j++) {
      const a = Math.abs(values[j]);
      if (a > amax) {
        amax = a;
        max = values[j];
      }
    }
    scales[b] = max / -8;
  }
  const halves = float32ToFloat16(scales);
  for (let b = 0; b < blocks; b++) {
    const o = b * 18;
    dst[o] = halves[b] & 0xff;
    dst[o + 1] = halves[b] >>> 8;
    const d = scales[b];
    const id = d === 0 ? 0 : 1 / d;
    const x = b * 32;
    for (let j = 0; j < 16; j++) {
      const q0 = Math.min(15, Math.trunc(values[x + j] * id + 8.5));
      const q1 = Math.min(15, Math.trunc(values[x + 16 + j] * id + 8.5));
      dst[o + 2 + j] = q0 | (q1 << 4);
    }
  }
  return dst;
}

/** The values of `count` Q4_0-coded values (count a multiple of 32). */
export function dequantizeQ4_0(bytes: Uint8Array, count: number): Float32Array {
  if (count % 32 !== 0 || bytes.length < (count / 32) * 18) {
    throw new InternVLError('BAD_INPUT', `dequantizeQ4_0: ${bytes.length} bytes do not hold ${count} values`);
  }
  const out = new Float32Array(count);
  const half = new Uint16Array(1);
  const d = new Float32Array(1);
  for (let b = 0; b < count / 32; b++) {
    const o = b * 18;
    half[0] = bytes[o] | (bytes[o + 1] << 8);
    float16ToFloat32(half, d);
    for (let j = 0; j < 16; j++) {
      out[b * 32 + j] = ((bytes[o + 2 + j] & 0x0f) - 8) * d[0];
      out[b * 32 + 16 + j] = ((bytes[o + 2 + j] >>> 4) - 8) * d[0];
    }
  }
  return out;
}
