import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { dataCommand } from '../src/cli/data.js';
import { loadMeta, readDataset } from '../src/data/meta.js';
import { InternVLError } from '../src/errors.js';
import { planTiles } from '../src/preprocess/tiling.js';
import { createDataFixture, type DataFixture, memoryIo } from './data-fixture.js';
import { goldenModelDir } from './helpers.js';

let fixture: DataFixture;
before(async () => {
  fixture = await createDataFixture();
});
after(() => fixture.cleanup());

describe('meta file and annotation lines', () => {
  test('resolves root and annotation against the meta file folder', async () => {
    const meta = await loadMeta(fixture.meta);
    assert.deepEqual(
      meta.datasets.map((d) => [d.name, d.index, d.root, d.annotation, d.repeatTime, d.dataAugment]),
      [
        ['images', 0, path.join(fixture.dir, 'media'), path.join(fixture.dir, 'data/images.jsonl'), 2, true],
        ['video', 1, path.join(fixture.dir, 'media'), path.join(fixture.dir, 'data/video.jsonl'), 1, true],
        ['text', 2, fixture.dir, path.join(fixture.dir, 'data/text.jsonl'), 0.5, false],
      ],
    );
    assert.equal(meta.datasets[0].maxDynamicPatch, 6);
  });

  test('reports each bad line with its line number and skips it', async () => {
    const meta = await loadMeta(fixture.meta);
    const { samples, issues } = await readDataset(meta.datasets[0]);
    assert.deepEqual(
      samples.map((s) => [s.line, s.kind]),
      [
        [1, 'image'],
        [2, 'multi_image'],
        [8, 'image'],
      ],
    );
    assert.deepEqual(
      issues.map((i) => i.line),
      [3, 4, 5, 6],
    );
    assert.match(issues[0].message, /invalid JSON/);
    assert.match(issues[1].message, /image missing\.png not found/);
    assert.match(issues[2].message, /2 images but 1 <image> placeholders/);
    assert.match(issues[3].message, /empty answer/);
    assert.equal(samples[1].images[1], path.join(fixture.dir, 'media/square.png'));
  });

  test('--strict makes the first bad line fatal, naming file:line', async () => {
    const meta = await loadMeta(fixture.meta);
    await assert.rejects(
      readDataset(meta.datasets[0], { strict: true }),
      (err: unknown) =>
        err instanceof InternVLError &&
        err.message.startsWith(`${meta.datasets[0].annotation}:3: invalid JSON`),
    );
  });

  test('rejects a meta entry with a bad field', async () => {
    const bad = path.join(fixture.dir, 'bad-meta.json');
    await writeFile(bad, JSON.stringify({ x: { root: '.', annotation: 'a.json', repeat_time: 1 } }));
    await assert.rejects(loadMeta(bad), /dataset "x": annotation: must be a \.jsonl file/);
  });

  test('a meta file that is not valid JSON is an error naming FILE:LINE:COLUMN', async () => {
    const bad = path.join(fixture.dir, 'broken-meta.json');
    await writeFile(bad, '{\n  "x": {"root": "media",\n    annotation: "a.jsonl"}\n}\n');
    await assert.rejects(loadMeta(bad), (err: unknown) => {
      assert.ok(err instanceof InternVLError);
      assert.ok(err.message.startsWith(`${bad}:3:5: invalid meta JSON`), err.message);
      return true;
    });
  });

  test('turn order and unanswered questions are bad lines', async () => {
    const meta = await loadMeta(fixture.meta);
    const file = path.join(fixture.dir, 'data/order.jsonl');
    await writeFile(
      file,
      [
        JSON.stringify({ conversations: [{ from: 'gpt', value: 'x' }] }),
        JSON.stringify({ conversations: [{ from: 'human', value: 'x' }] }),
        JSON.stringify({ conversations: [{ from: 'robot', value: 'x' }] }),
      ].join('\n'),
    );
    const { samples, issues } = await readDataset({ ...meta.datasets[2], annotation: file });
    assert.equal(samples.length, 0);
    assert.match(issues[0].message, /conversations\[0\] is from "gpt", expected "human"/);
    assert.match(issues[1].message, /without an answer/);
    assert.match(issues[2].message, /conversations\[0\]\.from/);
  });
});

describe('internvl data stats', () => {
  test('--json counts valid, invalid and repeated samples', async () => {
    const { io, stdout, stderr } = memoryIo();
    assert.equal(await dataCommand(['stats', fixture.meta, '--json'], io), 0);
    const stats = JSON.parse(stdout());
    assert.deepEqual(stats.datasets, {
      images: { valid: 3, invalid: 4, samples: 6 },
      video: { valid: 1, invalid: 0, samples: 1 },
      text: { valid: 4, invalid: 0, samples: 2 },
    });
    assert.deepEqual(stats.total, { valid: 8, invalid: 4, samples: 9 });
    assert.match(stderr(), /images\.jsonl:3: invalid JSON/);
  });

  test('with --model adds tokens and tiles; n_max is split across images', async () => {
    const model = goldenModelDir('tiny-internvl2_5-qwen2');
    const { io, stdout } = memoryIo();
    assert.equal(await dataCommand(['stats', fixture.meta, '--json', '--model', model], io), 0);
    const { datasets } = JSON.parse(stdout());
    const wide6 = planTiles(600, 400, { maxTiles: 6 }).totalTiles;
    const wide3 = planTiles(600, 400, { maxTiles: 3 }).totalTiles;
    const square3 = planTiles(448, 448, { maxTiles: 3 }).totalTiles;
    const tiny6 = planTiles(8, 8, { maxTiles: 6 }).totalTiles;
    assert.deepEqual([wide6, wide3, square3, tiny6], [7, 3, 1, 1]);
    assert.equal(datasets.images.tiles, 2 * (wide6 + wide3 + square3 + tiny6));
    assert.ok(datasets.video.tiles >= 8 && datasets.video.tiles <= 32);
    assert.equal(datasets.text.tiles, 0);
    // Byte-level tokenizer: every image tile adds 256 <IMG_CONTEXT> tokens.
    assert.ok(datasets.images.tokens > datasets.images.tiles * 256);
    assert.ok(datasets.text.tokens > 0);
  });

  test('usage errors exit with 2', async () => {
    const { io, stderr } = memoryIo();
    assert.equal(await dataCommand(['pack', fixture.meta], io), 2);
    assert.match(stderr(), /needs --model/);
  });
});
