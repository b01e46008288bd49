import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { jpegRecompress } from '../src/data/augment.js';
import { loadMeta, readDataset } from '../src/data/meta.js';
import { type PrepareOptions, prepareSample } from '../src/data/prepare.js';
import {
  applyRepeatTime,
  createRng,
  drawJpegQualities,
  maxTilesPerImage,
  shuffled,
  trainingFrameIndices,
} from '../src/data/sampling.js';
import { InternVLError } from '../src/errors.js';
import { loadTokenizer } from '../src/io/tokenizer-files.js';
import { IGNORE_TOKEN_ID } from '../src/text/training.js';
import { createDataFixture, type DataFixture } from './data-fixture.js';
import { goldenModelDir } from './helpers.js';

let fixture: DataFixture;
let prepare: PrepareOptions;
before(async () => {
  fixture = await createDataFixture();
  prepare = {
    tokenizer: await loadTokenizer(goldenModelDir('tiny-internvl2_5-qwen2')),
    numImageToken: 256,
    maxDynamicPatch: 12,
  };
});
after(() => fixture.cleanup());

describe('repeat_time and seeded randomness', () => {
  const items = ['a', 'b', 'c', 'd', 'e'];
  test('below 1 keeps the first int(len·r) lines; above 1 repeats int(r) times', () => {
    assert.deepEqual(applyRepeatTime(items, 0.5), ['a', 'b']);
    assert.deepEqual(applyRepeatTime(items, 0.1), []);
    assert.deepEqual(applyRepeatTime(items, 1), items);
    assert.deepEqual(applyRepeatTime(items, 2), [...items, ...items]);
    assert.deepEqual(applyRepeatTime(items, 2.7), [...items, ...items]);
    assert.throws(() => applyRepeatTime(items, 0), InternVLError);
  });

  test('same seed, same stream; other seeds or streams differ', () => {
    const draw = (seed: number, stream: number) => {
      const rng = createRng(seed, stream);
      return Array.from({ length: 16 }, () => rng.int(1000));
    };
    assert.deepEqual(draw(7, 0), draw(7, 0));
    assert.notDeepEqual(draw(7, 0), draw(8, 0));
    assert.notDeepEqual(draw(7, 0), draw(7, 1));
    const rng = createRng(3);
    for (let i = 0; i < 1000; i++) {
      const x = rng.next();
      assert.ok(x >= 0 && x < 1);
    }
    assert.deepEqual([...shuffled(items, createRng(1))].sort(), items);
  });

  test('n_max is split across the images of a sample, at least 1 each', () => {
    assert.equal(maxTilesPerImage(12, 1), 12);
    assert.equal(maxTilesPerImage(6, 2), 3);
    assert.equal(maxTilesPerImage(12, 5), 2);
    assert.equal(maxTilesPerImage(6, 8), 1);
  });

  test('training frame sampler: one frame per interval, padded with the last frame', () => {
    const rng = createRng(5);
    const indices = trainingFrameIndices(rng, 8, 100);
    assert.equal(indices.length, 8);
    indices.forEach((index, k) => {
      assert.ok(
        index >= Math.trunc((k * 100) / 8) && index < Math.trunc(((k + 1) * 100) / 8),
        `${k}: ${index}`,
      );
    });
    const short = trainingFrameIndices(rng, 8, 3);
    assert.equal(short.length, 8);
    assert.deepEqual(short.slice(0, 3), [0, 1, 2]);
    assert.deepEqual(short.slice(3), [2, 2, 2, 2, 2]);
  });
});

describe('JPEG augmentation', () => {
  test('qualities are uniform integers in 75..100, one per tile', () => {
    const rng = createRng(11);
    const qualities = drawJpegQualities(rng, 5000);
    assert.equal(qualities.length, 5000);
    assert.ok(qualities.every((q) => Number.isInteger(q) && q >= 75 && q <= 100));
    assert.equal(new Set(qualities).size, 26);
  });

  test('re-encoding keeps the tile size and degrades it more at lower quality', async () => {
    const width = 64;
    const height = 48;
    const data = new Uint8Array(width * height * 3);
    for (let i = 0; i < data.length; i++) data[i] = (i * 37 + (i % 7) * 91) & 255;
    const tile = { width, height, data };
    const error = (other: Uint8Array) => other.reduce((sum, v, i) => sum + Math.abs(v - data[i]), 0);
    const q75 = await jpegRecompress(tile, 75);
    const q100 = await jpegRecompress(tile, 100);
    assert.equal(q75.width, width);
    assert.equal(q75.height, height);
    assert.equal(q75.data.length, data.length);
    assert.ok(error(q75.data) > error(q100.data));
    assert.ok(error(q100.data) > 0);
    await assert.rejects(jpegRecompress(tile, 74), /75\.\.100/);
  });

  test('augmented image datasets get a quality per tile; video and text never', async () => {
    const meta = await loadMeta(fixture.meta);
    const rng = createRng(0);
    const [imageSet, videoSet, textSet] = meta.datasets;
    const images = (await readDataset(imageSet)).samples;
    const single = await prepareSample(images[0], imageSet, rng, prepare);
    assert.deepEqual(single.numPatches, [7]);
    assert.equal(single.jpegQualities?.length, 7);
    assert.ok(single.jpegQualities?.every((q) => q >= 75 && q <= 100));

    const multi = await prepareSample(images[1], imageSet, rng, prepare);
    assert.deepEqual(multi.numPatches, [3, 1], 'n_max 6 over 2 images: at most 3 tiles each');
    assert.equal(multi.jpegQualities?.length, 4);

    assert.equal(videoSet.dataAugment, true);
    const video = await prepareSample((await readDataset(videoSet)).samples[0], videoSet, rng, prepare);
    assert.equal(video.jpegQualities, null);
    assert.ok(video.numFrames !== undefined && video.numFrames >= 8 && video.numFrames <= 32);
    assert.equal(video.numTiles, video.numFrames);
    const context = video.inputIds.filter((id) => id === prepare.tokenizer.tokenToId('<IMG_CONTEXT>')).length;
    assert.equal(context, 256 * (video.numFrames ?? 0));

    const text = await prepareSample((await readDataset(textSet)).samples[0], textSet, rng, prepare);
    assert.equal(text.jpegQualities, null);
    assert.deepEqual(text.numPatches, []);
    assert.equal(text.numTiles, 1, 'a text sample carries its blank dummy tile');
    const supervised = [...text.labels].filter((l) => l !== IGNORE_TOKEN_ID);
    assert.equal(prepare.tokenizer.decode(supervised), 'Hello!<|im_end|>');
  });

  test('the same seed prepares the same samples', async () => {
    const meta = await loadMeta(fixture.meta);
    const images = (await readDataset(meta.datasets[0])).samples;
    const run = async (seed: number) => {
      const rng = createRng(seed);
      const out = [];
      for (const s of images)
        out.push((await prepareSample(s, meta.datasets[0], rng, prepare)).jpegQualities);
      return out;
    };
    assert.deepEqual(await run(1), await run(1));
    assert.notDeepEqual(await run(1), await run(2));
  });
});
