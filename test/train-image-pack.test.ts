import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import { dataCommand } from '../src/cli/data.js';
import { trainCommand } from '../src/cli/train.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { readShardFolder } from '../src/train/shard-batches.js';
import { memoryIo } from './data-fixture.js';
import { goldenModelDir } from './helpers.js';

const MODEL = goldenModelDir('tiny-internvl2_5-qwen2');

describe('training on image packs (data pack --tiles)', () => {
  let dir: string;
  let shards: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-train-images-'));
    await mkdir(path.join(dir, 'media'));
    await mkdir(path.join(dir, 'data'));
    const colours = { red: [200, 10, 10], blue: [10, 10, 200] } as const;
    for (const [name, [r, g, b]] of Object.entries(colours)) {
      await sharp({ create: { width: 448, height: 448, channels: 3, background: { r, g, b } } })
        .png()
        .toFile(path.join(dir, `media/${name}.png`));
    }
    const line = (image: string | undefined, q: string, a: string) =>
      JSON.stringify({
        ...(image ? { image } : {}),
        conversations: [
          { from: 'human', value: q },
          { from: 'gpt', value: a },
        ],
      });
    await writeFile(
      path.join(dir, 'data/mixed.jsonl'),
      [
        line('red.png', 'Colour?', 'Red.'),
        line('blue.png', 'Colour?', 'Blue.'),
        line(undefined, 'Hi', 'Hello.'),
      ].join('\n'),
    );
    const meta = path.join(dir, 'meta.json');
    await writeFile(
      meta,
      JSON.stringify({ mixed: { root: 'media', annotation: 'data/mixed.jsonl', max_dynamic_patch: 1 } }),
    );
    shards = path.join(dir, 'shards');
    const { io, stderr } = memoryIo();
    const args = ['pack', meta, '--model', MODEL, '--out', shards, '--max-len', '700', '--tiles'];
    assert.equal(await dataCommand(args, io), 0, stderr());
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads tiles from the shards and trains the ViT on them', async () => {
    const batches = await readShardFolder(shards);
    const withImages = batches.filter((b) => (b.numTiles ?? 0) > 0);
    assert.ok(withImages.length >= 1, 'some packs carry image tiles');
    // Dummy tiles of text samples (image_flags 0) are not fed: tiles = image samples only.
    const tiles = batches.reduce((s, b) => s + (b.numTiles ?? 0), 0);
    assert.equal(tiles, 2);
    for (const b of withImages) assert.equal(b.pixelValues!.length, b.numTiles! * 3 * 448 * 448);

    const out = path.join(dir, 'run');
    const { io, stderr } = memoryIo();
    const args = ['--model', MODEL, '--data', shards, '--stage', '1.5', '--out', out, '--steps', '3'];
    args.push('--lr', '1e-3', '--warmup-steps', '0', '--schedule', 'constant', '--weight-decay', '0');
    assert.equal(await trainCommand(args, io), 0, stderr());
    const log = (await readFile(path.join(out, 'train_log.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { loss: number });
    assert.equal(log.length, 3);
    assert.ok(log.every((l) => Number.isFinite(l.loss) && l.loss > 0));
    const source = await Checkpoint.open(MODEL);
    const trained = await Checkpoint.open(out);
    try {
      for (const name of [
        'vision_model.embeddings.patch_embedding.weight',
        'vision_model.encoder.layers.1.mlp.fc2.weight',
      ]) {
        assert.notDeepEqual(await trained.readBytes(name), await source.readBytes(name), `${name} trained`);
      }
      const llm = 'language_model.model.layers.0.mlp.up_proj.weight';
      assert.deepEqual(await trained.readBytes(llm), await source.readBytes(llm), 'stage 1.5 keeps the LLM');
    } finally {
      await source.close();
      await trained.close();
    }
  });
});
