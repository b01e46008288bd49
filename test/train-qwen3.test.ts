import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Checkpoint } from '../src/io/safetensors.js';
import { type TrainBatch, Trainer } from '../src/train/trainer.js';
import { GOLDEN_DIR, goldenModelDir, maxAbsDiff } from './helpers.js';
import {
  assertReloadedTrainerMatchesEngine,
  goldenTrainBatch,
  trainerAndEngineLogits,
} from './train-fixture.js';

// InternVL3.5's LLM (Qwen3: per-head q/k norm, head_dim 32, tied embeddings) in the training graph.
const MODEL = 'tiny-internvl3_5-qwen3';

describe('training on Qwen3 (InternVL3.5)', () => {
  let dir: string;
  let batch: TrainBatch;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-train-qwen3-'));
    // Every tiny golden model shares the tokenizer, the vocabulary and the tile size: the Qwen2 pack fits.
    batch = await goldenTrainBatch('tiny-internvl2_5-qwen2');
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('the training graph gives the reference logits of the golden img1 case', async () => {
    const ckpt = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases', MODEL, 'img1.safetensors'));
    const pixels = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases/_inputs/img1.safetensors'));
    const trainer = await Trainer.create({ model: goldenModelDir(MODEL), stage: 2, optimizer: { lr: 1e-3 } });
    try {
      const inputIds = Array.from(await ckpt.readInt64('input_ids'), Number);
      const logits = await trainer.logits({
        inputIds,
        cuSeqlens: [0, inputIds.length],
        pixelValues: await pixels.readFloat32('pixel_values'),
        numTiles: 1,
      });
      const err = maxAbsDiff(logits, await ckpt.readFloat32('logits_all'));
      assert.ok(err < 2e-4, `trainer vs reference logits: ${err}`);
    } finally {
      await trainer.close();
      await ckpt.close();
      await pixels.close();
    }
  });

  it('a LoRA step trains q/k/v/o with the q/k norms in place, and the engine loads what it saves', async () => {
    const trainer = await Trainer.create({
      model: goldenModelDir(MODEL),
      stage: 2,
      optimizer: { lr: 5e-2 },
      llmLora: { rank: 2 },
      seed: 3,
    });
    const out = path.join(dir, 'lora');
    try {
      const first = await trainer.step(batch);
      const second = await trainer.step(batch);
      assert.ok(Number.isFinite(first.loss) && second.loss < first.loss, `${first.loss} → ${second.loss}`);
      await trainer.save(out);
      const { single, trainerLogits, engineLogits } = await trainerAndEngineLogits(trainer, out, batch);
      // The engine runs on the merged bf16 weights, the trainer on fp32 masters and adapters: bf16
      // rounding, relative to logits of up to about 60 here.
      const scale = trainerLogits.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      assert.ok(maxAbsDiff(engineLogits, trainerLogits) <= 1e-2 * scale, 'trainer vs engine, bf16 rounding');
      await assertReloadedTrainerMatchesEngine(out, single, engineLogits);
    } finally {
      await trainer.close();
    }
  });
});
