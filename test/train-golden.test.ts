import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Checkpoint } from '../src/io/safetensors.js';
import { adamwUpdate } from '../src/train/optimizer.js';
import { type TrainBatch, Trainer } from '../src/train/trainer.js';
import { GOLDEN_DIR, goldenModelDir, maxAbsDiff } from './helpers.js';
import { goldenTrainBatch } from './train-fixture.js';

const OPTIMIZER = { lr: 1e-3, betas: [0.9, 0.999] as [number, number], eps: 1e-8, weightDecay: 0.05 };

interface GoldenCase {
  batch: TrainBatch;
  loss: number;
  grads: Map<string, Float32Array>;
  adamw: Map<string, Float32Array>;
}

async function loadCase(model: string): Promise<GoldenCase> {
  const file = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases/train', `${model}.pack2.safetensors`));
  try {
    const grads = new Map<string, Float32Array>();
    const adamw = new Map<string, Float32Array>();
    for (const name of file.names()) {
      if (name.startsWith('grad.')) grads.set(name.slice(5), await file.readFloat32(name));
      if (name.startsWith('adamw_step1.')) adamw.set(name.slice(12), await file.readFloat32(name));
    }
    return {
      batch: await goldenTrainBatch(model),
      loss: (await file.readFloat32('loss'))[0],
      grads,
      adamw,
    };
  } finally {
    await file.close();
  }
}

for (const model of ['tiny-internvl2_5-qwen2', 'tiny-internvl2_5-internlm2']) {
  describe(`training golden: ${model}`, () => {
    let golden: GoldenCase;
    let trainer: Trainer;
    before(async () => {
      golden = await loadCase(model);
      trainer = await Trainer.create({ model: goldenModelDir(model), stage: 2, optimizer: OPTIMIZER });
    });
    after(async () => {
      await trainer?.close();
    });

    it('stage 2: loss and every gradient match the reference (atol 1e-5)', async () => {
      const { loss, grads } = await trainer.lossAndGradients(golden.batch);
      assert.ok(Math.abs(loss - golden.loss) <= 1e-5, `loss ${loss} vs ${golden.loss}`);
      assert.deepEqual([...grads.keys()].sort(), [...golden.grads.keys()].sort());
      for (const [name, expected] of golden.grads) {
        const err = maxAbsDiff(grads.get(name)!, expected);
        assert.ok(err <= 1e-5, `${name}: max |diff| ${err}`);
      }
    });

    it('stages 1 and 1.5 return exactly the trainable subset', async () => {
      for (const [stage, prefixes] of [
        [1, ['mlp1.']],
        [1.5, ['mlp1.', 'vision_model.']],
      ] as const) {
        const t = await Trainer.create({ model: goldenModelDir(model), stage, optimizer: OPTIMIZER });
        try {
          const { grads } = await t.lossAndGradients(golden.batch);
          const expected = [...golden.grads.keys()]
            .filter((n) => prefixes.some((p) => n.startsWith(p)))
            .sort();
          assert.deepEqual([...grads.keys()].sort(), expected, `stage ${stage}`);
          for (const name of expected) {
            assert.ok(
              maxAbsDiff(grads.get(name)!, golden.grads.get(name)!) <= 1e-5,
              `stage ${stage} ${name}`,
            );
          }
        } finally {
          await t.close();
        }
      }
    });

    it('adamwUpdate on the reference gradients reproduces adamw_step1 (atol 1e-7)', async () => {
      for (const [name, expected] of golden.adamw) {
        const param = trainer.parameter(name);
        const grad = golden.grads.get(name)!;
        const state = { expAvg: new Float32Array(param.length), expAvgSq: new Float32Array(param.length) };
        adamwUpdate(param, grad, state, OPTIMIZER, 1);
        const err = maxAbsDiff(param, expected);
        assert.ok(err <= 1e-7, `${name}: max |diff| ${err}`);
      }
    });

    it('one AdamW step reproduces adamw_step1; frozen parameters stay bit-identical', async () => {
      const t = await Trainer.create({ model: goldenModelDir(model), stage: 1, optimizer: OPTIMIZER });
      try {
        const before = new Map(t.parameterNames().map((n) => [n, t.parameter(n)]));
        await t.step(golden.batch);
        // Where |grad| is near eps (5e-8 occurs) Adam's g/(|g|+eps) amplifies our 1e-9-level gradient
        // differences, so the full step is held to 1e-5 (1% of lr); the update rule itself is checked
        // tightly on the reference gradients below.
        for (const [name, expected] of golden.adamw) {
          const err = maxAbsDiff(t.parameter(name), expected);
          assert.ok(err <= 1e-5, `${name}: max |diff| ${err}`);
        }
        for (const [name, old] of before) {
          if (name.startsWith('mlp1.')) {
            assert.notDeepEqual(t.parameter(name), old, `${name} was updated`);
          } else {
            assert.deepEqual(t.parameter(name), old, `${name} is frozen`);
          }
        }
      } finally {
        await t.close();
      }
    });
  });
}

describe('training forward vs the inference goldens', () => {
  for (const model of [
    'tiny-internvl2_5-qwen2',
    'tiny-internvl2_5-vit6b-qwen2',
    'tiny-internvl2_5-internlm2',
  ]) {
    it(`${model}: logits of img1 (1 tile) within 2e-4`, async () => {
      const file = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases', model, 'img1.safetensors'));
      const pixels = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases/_inputs/img1.safetensors'));
      const trainer = await Trainer.create({ model: goldenModelDir(model), stage: 2, optimizer: OPTIMIZER });
      try {
        const inputIds = await file.readInt64('input_ids');
        const logits = await trainer.logits({
          inputIds,
          cuSeqlens: [0, inputIds.length],
          pixelValues: await pixels.readFloat32('pixel_values'),
          numTiles: 1,
        });
        const err = maxAbsDiff(logits, await file.readFloat32('logits_all'));
        assert.ok(err <= 2e-4, `max |diff| ${err}`);
      } finally {
        await trainer.close();
        await file.close();
        await pixels.close();
      }
    });
  }
});
