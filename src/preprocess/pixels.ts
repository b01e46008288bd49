import { InternVLError } from '../errors.js';
import type { RgbImage } from './image.js';

/** ImageNet statistics, the normalization InternVL 2.5 uses. */
export const IMAGENET_MEAN: readonly [number, number, number] = [0.485, 0.456, 0.406];
export const IMAGENET_STD: readonly [number, number, number] = [0.229, 0.224, 0.225];

export interface PixelValueOptions {
  mean?: readonly [number, number, number];
  std?: readonly [number, number, number];
}

/**
 * uint8 → normalized float32 for one channel, with torch's float32 rounding at every step:
 * x = u8 / 255, then (x − mean) / std. Rounding the double quotient to float32 gives the correctly
 * rounded float32 quotient (double rounding is innocuous for division of float32 operands).
 */
export function normalizationTable(mean: number, std: number): Float32Array {
  const m = Math.fround(mean);
  const s = Math.fround(std);
  const table = new Float32Array(256);
  for (let u = 0; u < 256; u++) {
    const x = Math.fround(u / 255);
    table[u] = Math.fround(Math.fround(x - m) / s);
  }
  return table;
}

/**
 * ToTensor + Normalize for a batch of equally sized tiles: returns [N, 3, H, W] float32
 * (channel-planar per tile), bit-identical to torchvision on float32.
 */
export function toPixelValues(tiles: RgbImage[], options: PixelValueOptions = {}): Float32Array {
  const mean = options.mean ?? IMAGENET_MEAN;
  const std = options.std ?? IMAGENET_STD;
  for (let c = 0; c < 3; c++) {
    if (!Number.isFinite(mean[c]) || !Number.isFinite(std[c]) || std[c] === 0) {
      throw new InternVLError(
        'BAD_INPUT',
        `invalid normalization mean/std for channel ${c}: ${mean[c]}/${std[c]}`,
      );
    }
  }
  if (tiles.length === 0) return new Float32Array(0);
  const { width, height } = tiles[0];
  const plane = width * height;
  tiles.forEach((tile, i) => {
    if (tile.width !== width || tile.height !== height || tile.data.length !== plane * 3) {
      throw new InternVLError(
        'BAD_INPUT',
        `tile ${i} is ${tile.width}×${tile.height} with ${tile.data.length} bytes; expected ${width}×${height}×3`,
      );
    }
  });
  const tables = [0, 1, 2].map((c) => normalizationTable(mean[c], std[c]));
  const out = new Float32Array(tiles.length * 3 * plane);
  for (let n = 0; n < tiles.length; n++) {
    const src = tiles[n].data;
    for (let c = 0; c < 3; c++) {
      const table = tables[c];
      const base = (n * 3 + c) * plane;
      for (let i = 0, p = c; i < plane; i++, p += 3) out[base + i] = table[src[p]];
    }
  }
  return out;
}
