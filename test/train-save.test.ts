import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type TrainBatch, Trainer } from '../src/train/trainer.js';
import { goldenModelDir, maxAbsDiff } from './helpers.js';
import {
  assertReloadedTrainerMatchesEngine,
  goldenTrainBatch,
  trainerAndEngineLogits,
} from './train-fixture.js';

const MODEL = 'tiny-internvl2_5-qwen2';
const OPTIMIZER = { lr: 1e-3, weightDecay: 0.05 };

describe('trainer checkpoints', () => {
  let dir: string;
  let batch: TrainBatch;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-train-'));
    batch = await goldenTrainBatch(MODEL);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a saved checkpoint reloads in the engine with the trainer’s logits', async () => {
    const trainer = await Trainer.create({ model: goldenModelDir(MODEL), stage: 2, optimizer: OPTIMIZER });
    const out = path.join(dir, 'step1');
    try {
      await trainer.step(batch);
      await trainer.save(out);
      const files = await readdir(out);
      for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) {
        assert.ok(files.includes(f), `${f} written`);
      }
      const { single, trainerLogits, engineLogits } = await trainerAndEngineLogits(trainer, out, batch);
      // The engine runs on the bf16-rounded weights, the trainer on fp32 masters: allow bf16 rounding.
      assert.ok(maxAbsDiff(engineLogits, trainerLogits) <= 5e-2, 'fp32 masters vs saved bf16');
      await assertReloadedTrainerMatchesEngine(out, single, engineLogits);
    } finally {
      await trainer.close();
    }
  });

  it('resuming from a saved state continues the same run', async () => {
    const straight = await Trainer.create({ model: goldenModelDir(MODEL), stage: 1, optimizer: OPTIMIZER });
    const first = await Trainer.create({ model: goldenModelDir(MODEL), stage: 1, optimizer: OPTIMIZER });
    const out = path.join(dir, 'resume');
    try {
      const losses: number[] = [];
      for (let i = 0; i < 3; i++) losses.push((await straight.step(batch)).loss);
      await first.step(batch);
      await first.save(out);
      const resumed = await Trainer.create({ model: out, stage: 1, optimizer: OPTIMIZER, resume: true });
      try {
        assert.equal(resumed.stepCount, 1);
        const again = [losses[0]];
        for (let i = 0; i < 2; i++) again.push((await resumed.step(batch)).loss);
        assert.deepEqual(again, losses);
        assert.deepEqual(resumed.parameter('mlp1.1.weight'), straight.parameter('mlp1.1.weight'));
      } finally {
        await resumed.close();
      }
    } finally {
      await straight.close();
      await first.close();
    }
  });
});
