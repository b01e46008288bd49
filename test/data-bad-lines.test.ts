import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import sharp from 'sharp';
import { dataCommand } from '../src/cli/data.js';
import { loadMeta, readDataset } from '../src/data/meta.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { memoryIo } from './data-fixture.js';
import { goldenModelDir } from './helpers.js';

const MODEL = goldenModelDir('tiny-internvl2_5-qwen2');
const turns = (q: string, a: string) => [
  { from: 'human', value: q },
  { from: 'gpt', value: a },
];

/**
 * One dataset (root `media/`) whose lines are: 1 good image, 2 malformed JSON, 3 an image that is not an
 * image, 4 a truncated JPEG, 5 `../outside.png` (exists, decodes), 6 an absolute path (exists, decodes),
 * 7 a good text line, 8 a video that exists but does not decode (only `--tiles` opens it).
 */
let dir: string;
let meta: string;
let annotation: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-bad-lines-'));
  await mkdir(path.join(dir, 'media'));
  await mkdir(path.join(dir, 'data'));
  const pixels = Buffer.alloc(320 * 240 * 3, 90);
  const raw = { raw: { width: 320, height: 240, channels: 3 as const } };
  await sharp(pixels, raw).png().toFile(path.join(dir, 'media/good.png'));
  await sharp(pixels, raw).png().toFile(path.join(dir, 'outside.png'));
  const jpeg = await sharp(pixels, raw).jpeg({ quality: 90 }).toBuffer();
  await writeFile(path.join(dir, 'media/cut.jpg'), jpeg.subarray(0, jpeg.length - 40));
  await writeFile(path.join(dir, 'media/noise.jpg'), 'these bytes are not an image');
  await writeFile(path.join(dir, 'media/clip.mp4'), 'not a video');
  const lines = [
    JSON.stringify({ image: 'good.png', conversations: turns('<image>\nWhat?', 'Grey.') }),
    '{"image": "good.png", "conversations": [{"from": "human"',
    JSON.stringify({ image: 'noise.jpg', conversations: turns('<image>\nWhat?', 'Noise.') }),
    JSON.stringify({ image: 'cut.jpg', conversations: turns('<image>\nWhat?', 'Half.') }),
    JSON.stringify({ image: '../outside.png', conversations: turns('<image>\nWhat?', 'Out.') }),
    JSON.stringify({ image: path.join(dir, 'outside.png'), conversations: turns('<image>\nWhat?', 'Abs.') }),
    JSON.stringify({ conversations: turns('Say hi.', 'Hi!') }),
    JSON.stringify({ video: 'clip.mp4', conversations: turns('<video>\nWhat happens?', 'Nothing.') }),
  ];
  annotation = path.join(dir, 'data/bad.jsonl');
  await writeFile(annotation, `${lines.join('\n')}\n`);
  meta = path.join(dir, 'meta.json');
  await writeFile(meta, JSON.stringify({ bad: { root: 'media', annotation: 'data/bad.jsonl' } }));
});
after(() => rm(dir, { recursive: true, force: true }));

/** The FILE:LINE reports written to stderr, as [line, message]. */
function reported(stderr: string): [number, string][] {
  const prefix = `${annotation}:`;
  return stderr
    .split('\n')
    .filter((l) => l.startsWith(prefix))
    .map((l) => {
      const [line, ...rest] = l.slice(prefix.length).split(': ');
      return [Number(line), rest.join(': ')];
    });
}

function assertLineReasons(lines: [number, string][]): void {
  assert.deepEqual(
    lines.map(([line]) => line),
    [2, 3, 4, 5, 6],
  );
  const [json, noise, cut, relative, absolute] = lines.map(([, message]) => message);
  assert.match(json, /invalid JSON/);
  assert.match(noise, /image noise\.jpg: .*noise\.jpg is not a readable image/);
  assert.match(cut, /image cut\.jpg: cannot decode image .*cut\.jpg: .*premature end of JPEG/i);
  assert.match(relative, /image \.\.\/outside\.png is outside the dataset root .*--allow-outside-root/);
  assert.match(absolute, /outside\.png is outside the dataset root/);
}

describe('bad annotation lines are reported as FILE:LINE and skipped', () => {
  test('reading a dataset: unreadable, truncated and outside-root images are bad lines', async () => {
    const [dataset] = (await loadMeta(meta)).datasets;
    const { samples, issues } = await readDataset(dataset);
    assert.deepEqual(
      samples.map((s) => s.line),
      [1, 7, 8],
    );
    assertLineReasons(issues.map((i) => [i.line, i.message]));
    assert.deepEqual(samples[0].imageSizes, [{ width: 320, height: 240 }]);
    const allowed = await readDataset(dataset, { allowOutsideRoot: true });
    assert.deepEqual(
      allowed.samples.map((s) => s.line),
      [1, 5, 6, 7, 8],
    );
    assert.equal(allowed.samples[1].images[0], path.join(dir, 'outside.png'));
  });

  test('stats, with and without --model, counts them invalid and finishes', async () => {
    for (const extra of [[], ['--model', MODEL]]) {
      const { io, stdout, stderr } = memoryIo();
      assert.equal(await dataCommand(['stats', meta, '--json', ...extra], io), 0, stderr());
      const { datasets } = JSON.parse(stdout());
      assert.equal(datasets.bad.valid, 3);
      assert.equal(datasets.bad.invalid, 5);
      assert.equal(datasets.bad.samples, 3);
      if (extra.length > 0) assert.ok(datasets.bad.tokens > 0 && datasets.bad.tiles > 0);
      assertLineReasons(reported(stderr()));
    }
    const { io, stdout } = memoryIo();
    assert.equal(await dataCommand(['stats', meta, '--json', '--allow-outside-root'], io), 0);
    assert.deepEqual(JSON.parse(stdout()).datasets.bad, { valid: 5, invalid: 3, samples: 5 });
  });

  test('stats --strict stops at the first, naming FILE:LINE', async () => {
    const { io, stderr } = memoryIo();
    assert.equal(await dataCommand(['stats', meta, '--strict', '--model', MODEL], io), 1);
    assert.match(
      stderr(),
      new RegExp(`${annotation.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: invalid JSON`),
    );
  });

  test('pack drops them (and, with --tiles, a video that does not decode) into index.json', async () => {
    for (const tiles of [false, true]) {
      const out = path.join(dir, tiles ? 'packed-tiles' : 'packed');
      const { io, stderr } = memoryIo();
      const args = [
        'pack',
        meta,
        '--model',
        MODEL,
        '--out',
        out,
        '--max-len',
        '9000',
        '--min-num-frame',
        '1',
      ];
      args.push('--max-num-frame', '2');
      assert.equal(await dataCommand([...args, tiles ? '--tiles' : '--no-tiles'], io), 0, stderr());
      const index = JSON.parse(await readFile(path.join(out, 'index.json'), 'utf8'));
      const dropped = index.dropped.map((d: { line: number; reason: string }) => [d.line, d.reason]);
      assertLineReasons(dropped.slice(0, 5));
      assert.deepEqual(reported(stderr()).slice(0, 5), dropped.slice(0, 5));
      const lines: number[] = [];
      for (const { file } of index.shards) {
        const shard = await Checkpoint.open(path.join(out, file));
        lines.push(...JSON.parse(shard.metadata().samples).map((s: { line: number }) => s.line));
        if (tiles) assert.equal(shard.info('pixel_values').shape[0], shard.info('image_flags').shape[0]);
        await shard.close();
      }
      if (tiles) {
        assert.equal(dropped.length, 6);
        assert.equal(dropped[5][0], 8);
        assert.match(dropped[5][1], /clip\.mp4/);
        assert.deepEqual(lines.sort(), [1, 7]);
      } else {
        assert.equal(dropped.length, 5);
        assert.deepEqual(lines.sort(), [1, 7, 8]);
      }
    }
  });

  test('filter reports them, keeps only good lines and lists them as invalid in report.json', async () => {
    const out = path.join(dir, 'cleaned');
    const { io, stderr } = memoryIo();
    assert.equal(await dataCommand(['filter', meta, '--out', out, '--json'], io), 0, stderr());
    assertLineReasons(reported(stderr()));
    const report = JSON.parse(await readFile(path.join(out, 'report.json'), 'utf8'));
    const invalid = report.dropped.filter(
      (d: { reasons: { rule: string }[] }) => d.reasons[0].rule === 'invalid',
    );
    assert.deepEqual(
      invalid.map((d: { line: number }) => d.line),
      [2, 3, 4, 5, 6],
    );
    const kept = (await readFile(path.join(out, 'bad.jsonl'), 'utf8')).trim().split('\n');
    assert.deepEqual(
      kept.map((l) => Object.keys(JSON.parse(l))[0]),
      ['image', 'conversations', 'video'],
    );
  });
});
