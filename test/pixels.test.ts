import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InternVLError } from '../src/errors.js';
import type { RgbImage } from '../src/preprocess/image.js';
import { IMAGENET_MEAN, IMAGENET_STD, normalizationTable, toPixelValues } from '../src/preprocess/pixels.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function float32Neighbour(x: number, step: 1 | -1): number {
  f32[0] = x;
  u32[0] += step;
  return f32[0];
}

test('fround(u / 255) is the correctly rounded float32 quotient for all 256 values', () => {
  for (let u = 0; u < 256; u++) {
    const q = Math.fround(u / 255);
    if (u === 0) {
      assert.equal(q, 0);
      continue;
    }
    // q·255 is exact in double (24-bit × 8-bit significands), so these errors are exact.
    const err = Math.abs(q * 255 - u);
    const errDown = Math.abs(float32Neighbour(q, -1) * 255 - u);
    const errUp = Math.abs(float32Neighbour(q, 1) * 255 - u);
    assert.ok(err < errDown && err < errUp, `u = ${u}`);
  }
});

test('normalization table follows torch float32 steps', () => {
  const table = normalizationTable(IMAGENET_MEAN[0], IMAGENET_STD[0]);
  assert.equal(table[0], Math.fround(-Math.fround(0.485) / Math.fround(0.229)));
  // Golden spot values (pixels.json, s0 tile 0, channel 0): u8 17 → −1.8267831802368164.
  assert.equal(table[17], -1.8267831802368164);
  assert.equal(table[66], -0.9876701831817627);
});

test('toPixelValues lays out [N, 3, H, W] channel planes', () => {
  const tile = (base: number): RgbImage => ({
    width: 2,
    height: 1,
    data: new Uint8Array([base, base + 1, base + 2, base + 3, base + 4, base + 5]),
  });
  const one = { mean: [0, 0, 0] as const, std: [1 / 255, 1 / 255, 1 / 255] as const };
  const out = toPixelValues([tile(0), tile(10)], one);
  assert.equal(out.length, 2 * 3 * 2);
  assert.deepEqual(Array.from(out, Math.round), [0, 3, 1, 4, 2, 5, 10, 13, 11, 14, 12, 15]);
  assert.equal(toPixelValues([]).length, 0);
});

test('toPixelValues rejects mismatched tiles and bad statistics', () => {
  const a: RgbImage = { width: 2, height: 2, data: new Uint8Array(12) };
  const b: RgbImage = { width: 2, height: 1, data: new Uint8Array(6) };
  const isBadInput = (e: unknown) => e instanceof InternVLError && e.code === 'BAD_INPUT';
  assert.throws(() => toPixelValues([a, b]), isBadInput);
  assert.throws(() => toPixelValues([{ width: 2, height: 2, data: new Uint8Array(5) }]), isBadInput);
  assert.throws(() => toPixelValues([a], { std: [0.2, 0, 0.2] }), isBadInput);
});
