import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import sharp from 'sharp';
import { dataCommand } from '../src/cli/data.js';
import type { DatasetSpec } from '../src/data/meta.js';
import { buildShardArrays, interleaveDatasets, Packer, type PackItem } from '../src/data/pack.js';
import { prepareSample } from '../src/data/prepare.js';
import { createRng } from '../src/data/sampling.js';
import { type ShardSampleReference, toShardItem, writePackShard } from '../src/data/shards.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadTokenizer } from '../src/io/tokenizer-files.js';
import { IGNORE_TOKEN_ID } from '../src/text/training.js';
import { createDataFixture, type DataFixture, memoryIo } from './data-fixture.js';
import { GOLDEN_DIR, goldenModelDir } from './helpers.js';

let fixture: DataFixture;
before(async () => {
  fixture = await createDataFixture();
});
after(() => fixture.cleanup());

const toNumbers = (values: ArrayLike<number | bigint>): number[] => Array.from(values, (v) => Number(v));

describe('packing', () => {
  for (const model of ['tiny-internvl2_5-qwen2', 'tiny-internvl2_5-internlm2']) {
    test(`tokens, labels, loss weights and cu_seqlens match golden ${model}.pack2`, async () => {
      const golden = await Checkpoint.open(path.join(GOLDEN_DIR, `cases/train/${model}.pack2.safetensors`));
      const spec = JSON.parse(
        await readFile(path.join(GOLDEN_DIR, `cases/train/${model}.pack2.json`), 'utf8'),
      );
      const image = path.join(fixture.dir, 'media/square.png');
      const dataset: DatasetSpec = {
        name: 'golden',
        index: 0,
        root: fixture.dir,
        annotation: path.join(fixture.dir, 'golden.jsonl'),
        dataAugment: false,
        repeatTime: 1,
        maxDynamicPatch: 12,
        length: 2,
        entry: {},
      };
      const prepare = {
        tokenizer: await loadTokenizer(goldenModelDir(model)),
        numImageToken: 256,
        maxDynamicPatch: 12,
      };
      const rng = createRng(0);
      const items = [];
      for (const [i, s] of (
        spec.samples as { question: string; answer: string; tiles: number }[]
      ).entries()) {
        const sample = {
          dataset: 'golden',
          file: dataset.annotation,
          line: i + 1,
          kind: s.tiles > 0 ? ('image' as const) : ('text' as const),
          images: s.tiles > 0 ? [image] : [],
          imageSizes: [],
          video: undefined,
          conversations: [
            { from: 'human' as const, value: s.question },
            { from: 'gpt' as const, value: s.answer },
          ],
          source: '',
        };
        items.push(toShardItem(await prepareSample(sample, dataset, rng, prepare), dataset));
      }
      const arrays = buildShardArrays([{ items, numTokens: 0, numTiles: 0 }], spec.loss_reduction);
      assert.deepEqual(toNumbers(arrays.inputIds), toNumbers(await golden.readInt64('input_ids')));
      assert.deepEqual(toNumbers(arrays.labels), toNumbers(await golden.readInt64('labels')));
      assert.deepEqual(toNumbers(arrays.cuSeqlens), toNumbers(await golden.readInt32('cu_seqlens')));
      const expected = await golden.readFloat32('loss_weight');
      assert.equal(arrays.lossWeight.length, expected.length);
      arrays.lossWeight.forEach((w, i) => {
        assert.ok(Math.abs(w - expected[i]) <= 1e-7, `loss_weight[${i}] ${w} vs ${expected[i]}`);
      });
      await golden.close();

      // The same through a shard file.
      const file = path.join(fixture.dir, `${model}.safetensors`);
      const summary = await writePackShard(file, [{ items, numTokens: 0, numTiles: 2 }], {
        reduction: 'square',
      });
      assert.deepEqual([summary?.packs, summary?.samples, summary?.tiles], [1, 2, 2]);
      const shard = await Checkpoint.open(file);
      assert.deepEqual(toNumbers(await shard.readInt64('labels')), toNumbers(arrays.labels));
      assert.deepEqual(toNumbers(await shard.readInt32('pack_cu_seqlens')), [0, arrays.inputIds.length]);
      assert.equal(shard.info('loss_weight').dtype, 'F32');
      await shard.close();
    });
  }

  test('packer: every sample once, never split, limits respected', () => {
    const rng = createRng(42);
    const items: (PackItem & { id: number })[] = Array.from({ length: 400 }, (_, id) => ({
      id,
      numTokens: 1 + rng.int(300),
      numTiles: rng.int(4) === 0 ? 1 : 1 + rng.int(13),
    }));
    const packer = new Packer<(typeof items)[number]>({ maxTokens: 1000, maxTiles: 48, maxBuffers: 5 });
    const packs = items.flatMap((item) => packer.add(item));
    packs.push(...packer.flush());
    const seen = packs.flatMap((pack) => pack.items.map((item) => item.id)).sort((a, b) => a - b);
    assert.deepEqual(
      seen,
      items.map((item) => item.id),
    );
    for (const pack of packs) {
      const tokens = pack.items.reduce((s, i) => s + i.numTokens, 0);
      const tiles = pack.items.reduce((s, i) => s + i.numTiles, 0);
      assert.equal(pack.numTokens, tokens);
      assert.equal(pack.numTiles, tiles);
      assert.ok(tokens <= 1000 && tiles <= 48);
    }
    assert.ok(packs.length < 400 / 3, `packing merges samples (${packs.length} packs)`);
    assert.throws(
      () => packer.add({ id: -1, numTokens: 1001, numTiles: 1 }),
      /more than the pack length 1000/,
    );
  });

  test('datasets are interleaved until each is drained', () => {
    const order = [...interleaveDatasets([5, 0, 3], createRng(9))];
    assert.deepEqual(
      [0, 1, 2].map((d) => order.filter((x) => x === d).length),
      [5, 0, 3],
    );
  });
});

describe('internvl data pack', () => {
  test('writes shards whose packs never split a sample and whose weights follow square averaging', async () => {
    const out = path.join(fixture.dir, 'packed');
    const { io, stderr } = memoryIo();
    const model = goldenModelDir('tiny-internvl2_5-qwen2');
    // Token-only shards (--no-tiles): this test is about packing, not tile decoding.
    const args = ['pack', fixture.meta, '--model', model, '--out', out, '--max-len', '9000', '--seed', '3'];
    args.push('--no-tiles');
    assert.equal(await dataCommand([...args, '--packs-per-shard', '2'], io), 0, stderr());
    const index = JSON.parse(await readFile(path.join(out, 'index.json'), 'utf8'));
    assert.equal(index.loss_reduction, 'square');
    // 4 invalid image lines; the video may exceed 9000 tokens (32 frames × 256) and is then dropped too.
    assert.ok(index.dropped.length >= 4);
    assert.match(stderr(), /images\.jsonl:4: image missing\.png not found/);
    let samples = 0;
    const seenLines: string[] = [];
    for (const { file } of index.shards) {
      const shard = await Checkpoint.open(path.join(out, file));
      const cu = toNumbers(await shard.readInt32('cu_seqlens'));
      const packCu = toNumbers(await shard.readInt32('pack_cu_seqlens'));
      const offsets = toNumbers(await shard.readInt32('pack_sample_offsets'));
      const labels = toNumbers(await shard.readInt64('labels'));
      const weights = await shard.readFloat32('loss_weight');
      const refs = JSON.parse(shard.metadata().samples) as ShardSampleReference[];
      assert.equal(cu[0], 0);
      assert.equal(cu[cu.length - 1], labels.length);
      assert.equal(refs.length, cu.length - 1);
      packCu.forEach((boundary, p) => {
        assert.equal(boundary, cu[offsets[p]], 'pack boundaries are sample boundaries');
        if (p > 0) assert.ok(boundary - packCu[p - 1] <= 9000);
      });
      for (let s = 0; s + 1 < cu.length; s++) {
        const n = labels.slice(cu[s], cu[s + 1]).filter((l) => l !== IGNORE_TOKEN_ID).length;
        assert.ok(n > 0);
        for (let t = cu[s]; t < cu[s + 1]; t++) {
          const expected = labels[t] === IGNORE_TOKEN_ID ? 0 : Math.fround(1 / Math.sqrt(n));
          assert.equal(weights[t], expected);
        }
      }
      for (const ref of refs) {
        seenLines.push(`${ref.dataset}:${ref.line}`);
        if (ref.dataset === 'images') {
          const tiles = ref.num_patches.reduce((a, b) => a + b, 0);
          assert.equal(ref.jpeg_qualities?.length, tiles);
          assert.ok(ref.jpeg_qualities?.every((q) => q >= 75 && q <= 100));
        } else {
          assert.equal(ref.jpeg_qualities, null, `${ref.dataset} samples are never re-compressed`);
        }
      }
      samples += refs.length;
      await shard.close();
    }
    const videoDropped = index.dropped.some((d: { dataset: string }) => d.dataset === 'video');
    assert.equal(samples, 6 + 2 + (videoDropped ? 0 : 1));
    assert.equal(seenLines.filter((l) => l === 'images:1').length, 2, 'repeat_time 2');
    assert.deepEqual(seenLines.filter((l) => l.startsWith('text:')).sort(), ['text:1', 'text:2']);

    // Deterministic for a seed.
    const again = path.join(fixture.dir, 'packed-again');
    assert.equal(
      await dataCommand(
        [...args.slice(0, 5), again, ...args.slice(6), '--packs-per-shard', '2'],
        memoryIo().io,
      ),
      0,
    );
    for (const { file } of index.shards) {
      assert.deepEqual(await readFile(path.join(again, file)), await readFile(path.join(out, file)));
    }
  });

  test('--tiles stores BF16 pixel values with image flags (0 for the dummy text tile)', async () => {
    const dir = fixture.dir;
    await sharp({ create: { width: 448, height: 448, channels: 3, background: { r: 200, g: 10, b: 10 } } })
      .png()
      .toFile(path.join(dir, 'media/red.png'));
    await writeFile(
      path.join(dir, 'data/small.jsonl'),
      [
        JSON.stringify({
          image: 'red.png',
          conversations: [
            { from: 'human', value: 'Colour?' },
            { from: 'gpt', value: 'Red.' },
          ],
        }),
        JSON.stringify({
          conversations: [
            { from: 'human', value: 'Hi' },
            { from: 'gpt', value: 'Hello.' },
          ],
        }),
      ].join('\n'),
    );
    const meta = path.join(dir, 'small-meta.json');
    await writeFile(
      meta,
      JSON.stringify({ small: { root: 'media', annotation: 'data/small.jsonl', data_augment: true } }),
    );
    const out = path.join(dir, 'packed-tiles');
    const { io, stderr } = memoryIo();
    const model = goldenModelDir('tiny-internvl2_5-qwen2');
    assert.equal(
      await dataCommand(['pack', meta, '--model', model, '--out', out, '--max-len', '2000', '--tiles'], io),
      0,
      stderr(),
    );
    const shard = await Checkpoint.open(path.join(out, 'shard-00000.safetensors'));
    assert.deepEqual(shard.info('pixel_values').shape, [2, 3, 448, 448]);
    assert.equal(shard.info('pixel_values').dtype, 'BF16');
    const refs = JSON.parse(shard.metadata().samples) as ShardSampleReference[];
    const flags = toNumbers(await shard.readInt32('image_flags'));
    assert.deepEqual(
      flags,
      refs.map((r) => (r.kind === 'text' ? 0 : 1)),
    );
    const pixels = await shard.readFloat32('pixel_values');
    const imageTile = refs.findIndex((r) => r.kind === 'image');
    // Red channel of the JPEG-recompressed red tile: (200/255 − 0.485)/0.229 ≈ 1.31, within JPEG error.
    const red = pixels[imageTile * 3 * 448 * 448 + 1000];
    assert.ok(Math.abs(red - 1.31) < 0.1, `red ${red}`);
    await shard.close();
  });
});
