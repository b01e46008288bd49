import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { dataCommand } from '../src/cli/data.js';
import { InternVLModel } from '../src/engine/model.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { type TrainBatch, Trainer } from '../src/train/trainer.js';
import { memoryIo } from './data-fixture.js';
import { GOLDEN_DIR, maxAbsDiff } from './helpers.js';

export interface TrainLogLine {
  step: number;
  loss: number;
  lr: number;
}

/** The JSON lines `internvl train` wrote to DIR/train_log.jsonl. */
export async function readTrainLog(dir: string): Promise<TrainLogLine[]> {
  const text = await readFile(path.join(dir, 'train_log.jsonl'), 'utf8');
  return text
    .trim()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as TrainLogLine);
}

/**
 * Writes a text-only dataset of question/answer pairs under `dir` and packs it with `internvl data pack`
 * (packs of at most 400 tokens: one sample each, the system prompt alone being ~170 tokens); returns the
 * shard folder.
 */
export async function packTextDataset(
  dir: string,
  model: string,
  pairs: [string, string][],
): Promise<string> {
  await mkdir(path.join(dir, 'data'), { recursive: true });
  const lines = pairs.map(([q, a]) =>
    JSON.stringify({
      conversations: [
        { from: 'human', value: q },
        { from: 'gpt', value: a },
      ],
    }),
  );
  await writeFile(path.join(dir, 'data/text.jsonl'), `${lines.join('\n')}\n`);
  const meta = path.join(dir, 'meta.json');
  await writeFile(
    meta,
    JSON.stringify({
      text: { root: '', annotation: 'data/text.jsonl', repeat_time: 1, length: pairs.length },
    }),
  );
  const shards = path.join(dir, 'shards');
  const { io, stderr } = memoryIo();
  const code = await dataCommand(['pack', meta, '--model', model, '--out', shards, '--max-len', '400'], io);
  assert.equal(code, 0, stderr());
  return shards;
}

/** The golden packed batch of `model` (cases/train/<model>.pack2: one image sample, one text sample). */
export async function goldenTrainBatch(model: string): Promise<TrainBatch> {
  const file = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases/train', `${model}.pack2.safetensors`));
  const pixels = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases/_inputs/img1.safetensors'));
  try {
    return {
      inputIds: await file.readInt64('input_ids'),
      labels: await file.readInt64('labels'),
      lossWeight: await file.readFloat32('loss_weight'),
      cuSeqlens: await file.readInt32('cu_seqlens'),
      pixelValues: await pixels.readFloat32('pixel_values'),
      numTiles: 1,
    };
  } finally {
    await file.close();
    await pixels.close();
  }
}

/**
 * Sample 1 of the golden pack (one image tile, its first 489 tokens) as a sequence of its own, with the
 * trainer's logits for it and the engine's on the checkpoint the trainer saved in `savedDir`.
 */
/** A trainer on the checkpoint saved in `savedDir` computes the engine's logits to fp32 accuracy. */
export async function assertReloadedTrainerMatchesEngine(
  savedDir: string,
  single: Parameters<Trainer['logits']>[0],
  engineLogits: Float32Array,
): Promise<void> {
  const reloaded = await Trainer.create({ model: savedDir, stage: 2, optimizer: { lr: 1e-3 } });
  try {
    const err = maxAbsDiff(await reloaded.logits(single), engineLogits);
    assert.ok(err <= 2e-4, `reloaded trainer vs engine: ${err}`);
  } finally {
    await reloaded.close();
  }
}

export async function trainerAndEngineLogits(trainer: Trainer, savedDir: string, batch: TrainBatch) {
  const T = 489;
  const ids = Array.from(batch.inputIds as BigInt64Array, Number).slice(0, T);
  const single = { inputIds: ids, cuSeqlens: [0, T], pixelValues: batch.pixelValues, numTiles: 1 };
  const trainerLogits = await trainer.logits(single);
  const engine = await InternVLModel.load(savedDir);
  try {
    const engineLogits = await engine.forwardLogits(ids, { pixelValues: batch.pixelValues, numTiles: 1 });
    return { single, trainerLogits, engineLogits };
  } finally {
    await engine.close();
  }
}
