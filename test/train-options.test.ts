import assert from 'node:assert/strict';
import { copyFile, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { float32ToBf16 } from '../src/io/float-formats.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { type TensorToWrite, writeSafetensors } from '../src/io/safetensors-write.js';
import { loadModelConfig } from '../src/models/model-config.js';
import { adamwUpdate } from '../src/train/optimizer.js';
import { loraParameterNames } from '../src/train/param-graph.js';
import { dropPathRates, keepMask, keyedRandom } from '../src/train/random.js';
import {
  excludedFromWeightDecay,
  isLoraTarget,
  isVitLoraTarget,
  trainableParameters,
} from '../src/train/trainable.js';
import { type TrainBatch, Trainer } from '../src/train/trainer.js';
import { goldenModelDir, maxAbsDiff } from './helpers.js';
import { goldenTrainBatch, trainerAndEngineLogits } from './train-fixture.js';

const MODEL = 'tiny-internvl2_5-qwen2';

/** W + 2·B·A (alpha = 2r, so α/r = 2) for W [out, in], A [r, in], B [out, r]. */
function mergeLora(W: Float32Array, A: Float32Array, B: Float32Array, rank: number): Float32Array {
  const inFeatures = A.length / rank;
  const out = new Float32Array(W.length);
  for (let o = 0; o < W.length / inFeatures; o++)
    for (let i = 0; i < inFeatures; i++) {
      let delta = 0;
      for (let k = 0; k < rank; k++) delta += B[o * rank + k] * A[k * inFeatures + i];
      out[o * inFeatures + i] = W[o * inFeatures + i] + 2 * delta;
    }
  return out;
}

/** The golden checkpoint with some tensors replaced (written as F32), in a temporary folder. */
async function modifiedCheckpoint(
  dir: string,
  replace: (name: string, data: Float32Array) => Float32Array | undefined,
): Promise<string> {
  const src = goldenModelDir(MODEL);
  for (const f of await readdir(src))
    if (f !== 'model.safetensors') await copyFile(path.join(src, f), path.join(dir, f));
  const ck = await Checkpoint.open(src);
  const tensors: Record<string, TensorToWrite> = {};
  for (const name of ck.names()) {
    const data = await ck.readFloat32(name);
    const changed = replace(name, Float32Array.from(data));
    tensors[name] = changed
      ? { dtype: 'F32', shape: ck.info(name).shape, data: changed }
      : { dtype: 'BF16', shape: ck.info(name).shape, data: await ck.readBytes(name) };
  }
  await ck.close();
  await writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  return dir;
}

describe('trainable sets (internvl_chat_finetune.py freeze flags)', () => {
  let names: string[];
  let config: Awaited<ReturnType<typeof loadModelConfig>>;
  before(async () => {
    const ck = await Checkpoint.open(goldenModelDir(MODEL));
    names = ck.names();
    await ck.close();
    config = await loadModelConfig(goldenModelDir(MODEL));
  });
  const vit = (n: string) => n.startsWith('vision_model.');
  const mlp = (n: string) => n.startsWith('mlp1.');
  const llm = (n: string) => n.startsWith('language_model.');
  const layer = (i: number) => (n: string) => n.startsWith(`vision_model.encoder.layers.${i}.`);

  it('follows the stage presets and the explicit flags', () => {
    const set = (
      ...args: Parameters<typeof trainableParameters> extends [unknown, unknown, ...infer R] ? R : never
    ) => new Set(trainableParameters(names, config, ...args));
    const only = (s: Set<string>, pred: (n: string) => boolean) =>
      assert.deepEqual(s, new Set(names.filter(pred)));
    only(set(1), mlp);
    only(set(1.5), (n) => vit(n) || mlp(n));
    only(set(2), () => true);
    only(set(2, { freezeBackbone: true }), (n) => llm(n) || mlp(n));
    only(set(2, { freezeLlm: true, freezeMlp: true }), vit);
    // unfreeze_vit_layers k: layers[k:] (negative: the last |k|) train even with a frozen backbone.
    only(set(2, { freezeBackbone: true, unfreezeVitLayers: -1 }), (n) => llm(n) || mlp(n) || layer(1)(n));
    only(set(2, { freezeBackbone: true, unfreezeVitLayers: 1 }), (n) => llm(n) || mlp(n) || layer(1)(n));
    only(set(1, { unfreezeVitLayers: -2 }), (n) => mlp(n) || layer(0)(n) || layer(1)(n));
    only(set(1, { unfreezeLmHead: true }), (n) => mlp(n) || n === 'language_model.lm_head.weight');
    // LoRA freezes the whole LLM base (PEFT), whatever --freeze-llm says.
    only(set(2, { llmLora: { rank: 2 } }), (n) => vit(n) || mlp(n));
    // Backbone LoRA freezes the ViT base; --unfreeze-vit-layers still opens its layers (the official
    // script applies it after wrap_backbone_lora).
    only(set(2, { vitLora: { rank: 2 } }), (n) => llm(n) || mlp(n));
    only(set(2, { vitLora: { rank: 2 }, unfreezeVitLayers: -1 }), (n) => llm(n) || mlp(n) || layer(1)(n));
    only(set(1.5, { vitLora: { rank: 2 }, llmLora: { rank: 2 } }), mlp);
  });

  it('picks the LoRA targets and the no-decay parameters by name', () => {
    const targets = names.filter(isLoraTarget).map((n) => n.replace(/layers\.\d+\./, 'layers.N.'));
    assert.deepEqual(
      [...new Set(targets)].sort(),
      ['down_proj', 'gate_proj', 'up_proj']
        .map((p) => `language_model.model.layers.N.mlp.${p}.weight`)
        .concat(
          ['k_proj', 'o_proj', 'q_proj', 'v_proj'].map(
            (p) => `language_model.model.layers.N.self_attn.${p}.weight`,
          ),
        ),
    );
    const vitTargets = names.filter(isVitLoraTarget).map((n) => n.replace(/layers\.\d+\./, 'layers.N.'));
    assert.equal(vitTargets.length, 4 * config.vision_config.num_hidden_layers);
    assert.deepEqual(
      [...new Set(vitTargets)].sort(),
      ['attn.proj', 'attn.qkv', 'mlp.fc1', 'mlp.fc2'].map((p) => `vision_model.encoder.layers.N.${p}.weight`),
    );
    assert.ok(!isVitLoraTarget('vision_model.encoder.layers.0.attn.qkv.bias'));
    assert.ok(isLoraTarget('language_model.model.layers.3.attention.wqkv.weight'));
    assert.ok(isLoraTarget('language_model.model.layers.3.feed_forward.w2.weight'));
    const noDecay = names.filter(excludedFromWeightDecay).map((n) => n.replace(/layers\.\d+\./, 'layers.N.'));
    assert.deepEqual([...new Set(noDecay)].sort(), [
      'language_model.model.layers.N.input_layernorm.weight',
      'language_model.model.layers.N.post_attention_layernorm.weight',
      'language_model.model.layers.N.self_attn.k_proj.bias',
      'language_model.model.layers.N.self_attn.q_proj.bias',
      'language_model.model.layers.N.self_attn.v_proj.bias',
      'language_model.model.norm.weight',
      'mlp1.0.bias',
      'mlp1.0.weight',
      'mlp1.1.bias',
      'mlp1.3.bias',
      'vision_model.embeddings.patch_embedding.bias',
      'vision_model.encoder.layers.N.attn.proj.bias',
      'vision_model.encoder.layers.N.attn.qkv.bias',
      'vision_model.encoder.layers.N.mlp.fc1.bias',
      'vision_model.encoder.layers.N.mlp.fc2.bias',
      'vision_model.encoder.layers.N.norm1.bias',
      'vision_model.encoder.layers.N.norm1.weight',
      'vision_model.encoder.layers.N.norm2.bias',
      'vision_model.encoder.layers.N.norm2.weight',
    ]);
    assert.ok(excludedFromWeightDecay('vision_model.encoder.layers.0.attn.q_norm.weight'));
    assert.ok(!excludedFromWeightDecay('vision_model.encoder.layers.0.ls1'));
  });
});

describe('trainer options on the golden pack', () => {
  let dir: string;
  let batch: TrainBatch;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-train-options-'));
    batch = await goldenTrainBatch(MODEL);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('HF-style weight decay skips norms and biases; plain AdamW decays everything', async () => {
    const optimizer = { lr: 1e-2, weightDecay: 0.5 };
    const hf = await Trainer.create({
      model: goldenModelDir(MODEL),
      stage: 1,
      optimizer: { ...optimizer, decayNormsAndBiases: false },
    });
    const plain = await Trainer.create({ model: goldenModelDir(MODEL), stage: 1, optimizer });
    try {
      const { grads } = await hf.lossAndGradients(batch);
      await hf.step(batch);
      await plain.step(batch);
      const o = { lr: 1e-2, betas: [0.9, 0.999] as [number, number], eps: 1e-8 };
      for (const name of ['mlp1.0.weight', 'mlp1.1.bias', 'mlp1.1.weight']) {
        const state = () => ({
          expAvg: new Float32Array(grads.get(name)!.length),
          expAvgSq: new Float32Array(grads.get(name)!.length),
        });
        const decayed = hf.parameter(name);
        const source = await Checkpoint.open(goldenModelDir(MODEL));
        const base = Float32Array.from(await source.readFloat32(name));
        await source.close();
        const expectHf = base.slice();
        adamwUpdate(
          expectHf,
          grads.get(name)!,
          state(),
          { ...o, weightDecay: excludedFromWeightDecay(name) ? 0 : 0.5 },
          1,
        );
        assert.deepEqual(decayed, expectHf, `${name} (HF groups)`);
        const expectPlain = base.slice();
        adamwUpdate(expectPlain, grads.get(name)!, state(), { ...o, weightDecay: 0.5 }, 1);
        assert.deepEqual(plain.parameter(name), expectPlain, `${name} (plain AdamW)`);
      }
      assert.notDeepEqual(hf.parameter('mlp1.0.weight'), plain.parameter('mlp1.0.weight'));
    } finally {
      await hf.close();
      await plain.close();
    }
  });

  it('LoRA trains only the adapters in the LLM and saves W + (α/r)·B·A that the engine loads', async () => {
    const rank = 4;
    const trainer = await Trainer.create({
      model: goldenModelDir(MODEL),
      stage: 2,
      optimizer: { lr: 5e-2 },
      llmLora: { rank },
      seed: 3,
    });
    const out = path.join(dir, 'lora');
    try {
      const q = 'language_model.model.layers.0.self_attn.q_proj.weight';
      const { a, b } = loraParameterNames(q);
      const A0 = trainer.parameter(a);
      const inFeatures = 64;
      assert.equal(A0.length, rank * inFeatures);
      assert.ok(A0.every((x) => Math.abs(x) <= 1 / Math.sqrt(inFeatures)) && A0.some((x) => x !== 0));
      assert.ok(trainer.parameter(b).every((x) => x === 0));
      const llmBase = trainer.parameterNames().filter((n) => n.startsWith('language_model.'));
      assert.ok(llmBase.every((n) => !trainer.trainable.includes(n)));
      const before = new Map(llmBase.map((n) => [n, trainer.parameter(n)]));
      const { grads } = await trainer.lossAndGradients(batch);
      assert.ok(
        grads.get(b)!.some((x) => x !== 0),
        'B receives a gradient',
      );
      for (let i = 0; i < 3; i++) await trainer.step(batch);
      for (const [n, v] of before) assert.deepEqual(trainer.parameter(n), v, `${n} stays frozen`);
      await trainer.save(out);

      // The merge: bf16(W + 2·B·A) for every target.
      const merged = new Map<string, Float32Array>();
      for (const w of llmBase.filter(isLoraTarget)) {
        const names = loraParameterNames(w);
        merged.set(
          w,
          mergeLora(before.get(w)!, trainer.parameter(names.a), trainer.parameter(names.b), rank),
        );
      }
      assert.equal(merged.size, 14);
      const saved = await Checkpoint.open(out);
      for (const [w, expected] of merged) {
        assert.deepEqual(await saved.readBytes(w), new Uint8Array(float32ToBf16(expected).buffer), w);
      }
      assert.ok(maxAbsDiff(merged.get(q)!, before.get(q)!) > 1e-2, 'the adapters moved the merged weight');
      assert.ok(saved.names().every((n) => !n.includes('lora_')));
      await saved.close();

      // Un-merged trainer forward vs the engine on the merged (bf16) checkpoint.
      const {
        single,
        trainerLogits: unmerged,
        engineLogits,
      } = await trainerAndEngineLogits(trainer, out, batch);
      const err = maxAbsDiff(engineLogits, unmerged);
      assert.ok(err <= 5e-2, `LoRA forward vs the merged bf16 checkpoint in the engine: ${err}`);
      // Without bf16 rounding: a plain trainer on fp32 merged weights (and the trained ViT/mlp1) gives the same logits.
      const fp32Dir = await mkdtemp(path.join(dir, 'merged-fp32-'));
      const plainDir = await modifiedCheckpoint(
        fp32Dir,
        (n) => merged.get(n) ?? (n.startsWith('language_model.') ? undefined : trainer.parameter(n)),
      );
      const plain = await Trainer.create({ model: plainDir, stage: 2, optimizer: { lr: 0 } });
      try {
        const err = maxAbsDiff(await plain.logits(single), unmerged);
        assert.ok(err <= 1e-4, `LoRA forward vs fp32 merged weights: ${err}`);
      } finally {
        await plain.close();
      }
    } finally {
      await trainer.close();
    }
  });
  it('backbone LoRA trains only the ViT adapters (with dropout) and saves W + (α/r)·B·A that the engine loads', async () => {
    const rank = 2;
    const trainer = await Trainer.create({
      model: goldenModelDir(MODEL),
      stage: 2,
      optimizer: { lr: 5e-2 },
      vitLora: { rank, dropout: 0.1 },
      seed: 5,
    });
    const out = path.join(dir, 'vit-lora');
    try {
      const vitBase = trainer.parameterNames().filter((n) => n.startsWith('vision_model.'));
      assert.ok(vitBase.every((n) => !trainer.trainable.includes(n)));
      const targets = vitBase.filter(isVitLoraTarget);
      assert.equal(targets.length, 8);
      const before = new Map(vitBase.map((n) => [n, trainer.parameter(n)]));
      const { grads } = await trainer.lossAndGradients(batch);
      for (const w of targets) {
        assert.ok(
          grads.get(loraParameterNames(w).b)!.some((x) => x !== 0),
          `${w}: B receives a gradient`,
        );
      }
      for (let i = 0; i < 3; i++) await trainer.step(batch);
      for (const [n, v] of before) assert.deepEqual(trainer.parameter(n), v, `${n} stays frozen`);
      await trainer.save(out);

      const saved = await Checkpoint.open(out);
      let moved = 0;
      for (const w of targets) {
        const names = loraParameterNames(w);
        const merged = mergeLora(
          before.get(w)!,
          trainer.parameter(names.a),
          trainer.parameter(names.b),
          rank,
        );
        assert.deepEqual(await saved.readBytes(w), new Uint8Array(float32ToBf16(merged).buffer), w);
        moved = Math.max(moved, maxAbsDiff(merged, before.get(w)!));
      }
      assert.ok(moved > 1e-2, 'the adapters moved the merged weights');
      assert.ok(saved.names().every((n) => !n.includes('lora_')));
      await saved.close();

      // Un-merged trainer forward (no dropout outside training) vs the engine on the merged bf16 checkpoint.
      const { trainerLogits, engineLogits } = await trainerAndEngineLogits(trainer, out, batch);
      const err = maxAbsDiff(engineLogits, trainerLogits);
      assert.ok(err <= 5e-2, `backbone LoRA forward vs the merged bf16 checkpoint in the engine: ${err}`);
    } finally {
      await trainer.close();
    }
  });
});

describe('ViT drop-path and LoRA dropout', () => {
  let dir: string;
  let batch: TrainBatch;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-train-droppath-'));
    batch = await goldenTrainBatch(MODEL);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('rates rise linearly over the layers; kept branches scale by 1/keep', () => {
    assert.deepEqual(dropPathRates(0.4, 5), [0, 0.1, 0.2, 0.3, 0.4].map(Math.fround));
    assert.deepEqual(dropPathRates(0.4, 1), [0]);
    assert.deepEqual([...keepMask(4, 0, keyedRandom(1))], [1, 1, 1, 1]);
    const mask = keepMask(20000, 0.25, keyedRandom(7, 'test'));
    assert.ok(mask.every((x) => x === 0 || x === Math.fround(1 / 0.75)));
    const kept = mask.filter((x) => x > 0).length / mask.length;
    assert.ok(Math.abs(kept - 0.75) < 0.02, `kept fraction ${kept}`);
    assert.deepEqual(mask, keepMask(20000, 0.25, keyedRandom(7, 'test')), 'seeded');
  });

  it('a dropped branch vanishes and a kept one is scaled by 1/keep (fixed seed)', async () => {
    // Two ViT layers at rate 0.5: layer 0 gets 0, layer 1 gets 0.5. With seed 2 the first step keeps
    // layer 1's attention branch (×2) and drops its MLP branch.
    const seed = 2;
    const dropping = await Trainer.create({
      model: goldenModelDir(MODEL),
      stage: 1.5,
      optimizer: { lr: 1e-3 },
      seed,
      dropPathRate: 0.5,
    });
    try {
      assert.deepEqual(dropping.dropPathRates, [0, 0.5]);
      const scale = (which: string) =>
        dropping.noiseScales({ name: `drop_path.1.${which}`, shape: [1, 1, 1], dropProbability: 0.5 }, 0)[0];
      assert.deepEqual([scale('attn'), scale('mlp')], [2, 0]);
      // The same network without drop-path but with ls1 ×2 and ls2 ×0 in layer 1.
      const scaled = await modifiedCheckpoint(await mkdtemp(path.join(dir, 'ls-')), (n, data) => {
        if (n === 'vision_model.encoder.layers.1.ls1') return data.map((x) => x * 2);
        if (n === 'vision_model.encoder.layers.1.ls2') return data.map(() => 0);
        return undefined;
      });
      const reference = await Trainer.create({ model: scaled, stage: 1.5, optimizer: { lr: 1e-3 } });
      const plain = await Trainer.create({
        model: goldenModelDir(MODEL),
        stage: 1.5,
        optimizer: { lr: 1e-3 },
      });
      try {
        const got = await dropping.lossAndGradients(batch);
        const want = await reference.lossAndGradients(batch);
        const none = await plain.lossAndGradients(batch);
        assert.ok(Math.abs(got.loss - want.loss) <= 1e-5, `loss ${got.loss} vs ${want.loss}`);
        assert.ok(Math.abs(got.loss - none.loss) > 1e-4, 'drop-path changed the loss');
        for (const name of ['mlp1.1.weight', 'vision_model.encoder.layers.0.attn.qkv.weight']) {
          assert.ok(maxAbsDiff(got.grads.get(name)!, want.grads.get(name)!) <= 1e-5, name);
        }
        // The dropped MLP branch of layer 1 gets no gradient.
        assert.ok(got.grads.get('vision_model.encoder.layers.1.mlp.fc1.weight')!.every((x) => x === 0));
        // Inference-style forward (logits) never drops.
        const T = 489;
        const ids = Array.from(batch.inputIds as BigInt64Array, Number).slice(0, T);
        const single = { inputIds: ids, cuSeqlens: [0, T], pixelValues: batch.pixelValues, numTiles: 1 };
        assert.deepEqual(await dropping.logits(single), await plain.logits(single));
      } finally {
        await reference.close();
        await plain.close();
      }
    } finally {
      await dropping.close();
    }
  });

  it('LoRA dropout is seeded: same seed, same loss; a different mask per step', async () => {
    const make = (seed: number) =>
      Trainer.create({
        model: goldenModelDir(MODEL),
        stage: 2,
        optimizer: { lr: 5e-2 },
        llmLora: { rank: 2, dropout: 0.5 },
        seed,
      });
    const [a, b] = await Promise.all([make(1), make(1)]);
    try {
      for (let i = 0; i < 2; i++) assert.equal((await a.step(batch)).loss, (await b.step(batch)).loss);
      const noise = {
        name: 'lora_dropout.language_model.model.layers.0.self_attn.q_proj.weight',
        shape: [8, 64],
        dropProbability: 0.5,
      };
      const mask = a.noiseScales(noise, 0);
      assert.ok(mask.every((x) => x === 0 || x === 2) && mask.some((x) => x === 0));
      await a.step(batch);
      assert.notDeepEqual(a.noiseScales(noise, 0), mask);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
