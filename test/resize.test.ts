import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { InternVLError } from '../src/errors.js';
import type { RgbImage } from '../src/preprocess/image.js';
import { resizeBicubic } from '../src/preprocess/resize.js';
import { GOLDEN_DIR } from './helpers.js';

function grayRow(values: number[], vertical = false): RgbImage {
  const data = new Uint8Array(values.length * 3);
  values.forEach((v, i) => {
    data.fill(v, i * 3, i * 3 + 3);
  });
  return vertical ? { width: 1, height: values.length, data } : { width: values.length, height: 1, data };
}

function channel0(image: RgbImage): number[] {
  return Array.from({ length: image.width * image.height }, (_, i) => image.data[i * 3]);
}

/** Deterministic noisy test pattern (xorshift), different per channel. */
function pattern(width: number, height: number, seed = 1): RgbImage {
  const data = new Uint8Array(width * height * 3);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < data.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    data[i] = s & 0xff;
  }
  return { width, height, data };
}

test('hand-computed Pillow bicubic: 2 → 4 samples, both axes', () => {
  // Weights worked out from the a = −0.5 kernel, 22-bit rounding and acc = 2^21 + Σ, then >> 22.
  assert.deepEqual(channel0(resizeBicubic(grayRow([0, 255]), 4, 1)), [0, 53, 202, 255]);
  assert.deepEqual(channel0(resizeBicubic(grayRow([0, 255], true), 1, 4)), [0, 53, 202, 255]);
  assert.deepEqual(channel0(resizeBicubic(grayRow([255, 0]), 4, 1)), [255, 202, 53, 0]);
});

test('same size returns an equal copy', () => {
  const src = pattern(7, 5);
  const out = resizeBicubic(src, 7, 5);
  assert.deepEqual(out.data, src.data);
  assert.notEqual(out.data, src.data);
});

test('reference_resampler_extra_checks sizes: output shape, constant images stay constant', () => {
  const pixels = JSON.parse(readFileSync(path.join(GOLDEN_DIR, 'prep/pixels.json'), 'utf8')) as {
    reference_resampler_extra_checks: {
      src: [number, number];
      dst: [number, number];
      max_abs_diff: number;
    }[];
  };
  const checks = pixels.reference_resampler_extra_checks;
  assert.equal(checks.length, 11);
  for (const { src, dst } of checks) {
    const [sw, sh] = src;
    const [dw, dh] = dst;
    const flat: RgbImage = { width: sw, height: sh, data: new Uint8Array(sw * sh * 3) };
    for (let i = 0; i < flat.data.length; i += 3) flat.data.set([7, 128, 250], i);
    const out = resizeBicubic(flat, dw, dh);
    assert.equal(out.width, dw);
    assert.equal(out.height, dh);
    assert.equal(out.data.length, dw * dh * 3);
    const wrong = out.data.findIndex((v, i) => v !== [7, 128, 250][i % 3]);
    assert.equal(wrong, -1, `${sw}x${sh} -> ${dw}x${dh}: sample ${wrong} changed`);
  }
});

test('a one-axis resize commutes with transposition (same coefficients on both axes)', () => {
  const src = pattern(37, 23, 9);
  const transposed: RgbImage = { width: 23, height: 37, data: new Uint8Array(src.data.length) };
  const transpose = (img: RgbImage, into: RgbImage) => {
    for (let y = 0; y < img.height; y++)
      for (let x = 0; x < img.width; x++)
        for (let c = 0; c < 3; c++)
          into.data[(x * img.height + y) * 3 + c] = img.data[(y * img.width + x) * 3 + c];
  };
  transpose(src, transposed);
  // Only one pass runs, so the uint8 intermediate of a two-axis resize does not enter.
  for (const [w, h] of [
    [90, 23],
    [16, 23],
    [37, 60],
    [37, 5],
  ]) {
    const a = resizeBicubic(src, w, h);
    const b = resizeBicubic(transposed, h, w);
    const bt: RgbImage = { width: w, height: h, data: new Uint8Array(a.data.length) };
    transpose(b, bt);
    assert.deepEqual(bt.data, a.data, `${w}x${h}`);
  }
});

test('rejects bad sizes and inconsistent buffers with BAD_INPUT', () => {
  const src = pattern(4, 4);
  const isBadInput = (e: unknown) => e instanceof InternVLError && e.code === 'BAD_INPUT';
  assert.throws(() => resizeBicubic(src, 0, 4), isBadInput);
  assert.throws(() => resizeBicubic(src, 4, 2.5), isBadInput);
  assert.throws(() => resizeBicubic({ width: 4, height: 4, data: new Uint8Array(10) }, 8, 8), isBadInput);
});
