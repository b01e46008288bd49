import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InternVLModel } from '../src/engine/model.js';
import { InternVLError } from '../src/errors.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { writeSafetensors } from '../src/io/safetensors-write.js';
import { GOLDEN_DIR, GOLDEN_MODELS, goldenModelDir, maxAbsDiff } from './helpers.js';

const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-engine-cache-'));
after(() => rmSync(cacheDir, { recursive: true, force: true }));

async function readCase(model: string, name: string) {
  const ckpt = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases', model, `${name}.safetensors`));
  const meta = JSON.parse(readFileSync(path.join(GOLDEN_DIR, 'cases', model, `${name}.json`), 'utf8'));
  const tensors = new Map<string, Float32Array>();
  for (const n of ckpt.names())
    if (n !== 'input_ids' && n !== 'greedy_tokens') tensors.set(n, await ckpt.readFloat32(n));
  const inputIds = Array.from(await ckpt.readInt64('input_ids'), Number);
  const greedy = Array.from(await ckpt.readInt64('greedy_tokens'), Number);
  await ckpt.close();
  let pixelValues: Float32Array | undefined;
  if (meta.pixel_values_file) {
    const px = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases', model, meta.pixel_values_file));
    pixelValues = await px.readFloat32('pixel_values');
    await px.close();
  }
  return { meta, tensors, inputIds, greedy, pixelValues, numTiles: meta.pixel_values_shape?.[0] ?? 0 };
}

for (const modelName of GOLDEN_MODELS) {
  describe(`InternVLModel on ${modelName} (engine in a worker thread)`, () => {
    let model: InternVLModel;
    before(async () => {
      model = await InternVLModel.load(goldenModelDir(modelName), { cacheDir, threads: 1 });
    });
    after(() => model.close());

    test('img1: projector, ViT hidden state, all logits and KV-cached greedy tokens match the reference', async () => {
      const c = await readCase(modelName, 'img1');
      const px = c.pixelValues!;
      assert.ok(maxAbsDiff(await model.encodeImages(px, c.numTiles), c.tensors.get('projector')!) < 1e-4);
      assert.ok(
        maxAbsDiff(await model.visionHiddenState(px, c.numTiles), c.tensors.get('vit_last_hidden_state')!) <
          1e-4,
      );
      const logits = await model.forwardLogits(c.inputIds, { pixelValues: px, numTiles: c.numTiles });
      assert.ok(maxAbsDiff(logits, c.tensors.get('logits_all')!) < 2e-4);
      const tokens = await model.generateGreedy(c.inputIds, {
        pixelValues: px,
        numTiles: c.numTiles,
        maxNewTokens: c.greedy.length,
      });
      assert.deepEqual(tokens, c.greedy);
    });

    test('img3 and img2x1: last logits and greedy tokens match', async () => {
      for (const name of ['img3', 'img2x1']) {
        const c = await readCase(modelName, name);
        const image = { pixelValues: c.pixelValues!, numTiles: c.numTiles };
        const logits = await model.forwardLogits(c.inputIds, image);
        const vocab = logits.length / c.inputIds.length;
        assert.ok(
          maxAbsDiff(logits.subarray(logits.length - 4 * vocab), c.tensors.get('logits_last4')!) < 2e-4,
        );
        assert.deepEqual(
          await model.generateGreedy(c.inputIds, { ...image, maxNewTokens: 8 }),
          c.greedy,
          name,
        );
      }
    });

    test('text: logits and greedy tokens without an image', async () => {
      const c = await readCase(modelName, 'text');
      assert.ok(maxAbsDiff(await model.forwardLogits(c.inputIds), c.tensors.get('logits_all')!) < 2e-4);
      assert.deepEqual(await model.generateGreedy(c.inputIds, { maxNewTokens: 8 }), c.greedy);
    });

    test('bad inputs come back from the worker as InternVLErrors', async () => {
      await assert.rejects(model.forwardLogits([1, 2, 100000]), (e: unknown) => e instanceof InternVLError);
      await assert.rejects(model.encodeImages(new Float32Array(10), 1), /BAD_INPUT|pixel|length/i);
      await assert.rejects(model.forwardLogits([]), /empty/);
    });
  });
}

describe('loading fails cleanly', () => {
  const golden = goldenModelDir('tiny-internvl2_5-qwen2');
  const copyModel = () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-bad-model-'));
    for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']) {
      copyFileSync(path.join(golden, f), path.join(dir, f));
    }
    return dir;
  };
  async function rewriteWeights(
    dir: string,
    edit: (tensors: Record<string, { dtype: 'BF16'; shape: number[]; data: Uint8Array }>) => void,
  ) {
    const src = await Checkpoint.open(golden);
    const tensors: Record<string, { dtype: 'BF16'; shape: number[]; data: Uint8Array }> = {};
    for (const n of src.names())
      tensors[n] = { dtype: 'BF16', shape: src.info(n).shape, data: await src.readBytes(n) };
    await src.close();
    edit(tensors);
    await writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  }
  const load = (dir: string) => InternVLModel.load(dir, { cacheDir: false, threads: 1 });

  test('a missing tensor is named', async () => {
    const dir = copyModel();
    try {
      await rewriteWeights(dir, (t) => delete t['language_model.model.layers.1.mlp.up_proj.weight']);
      await assert.rejects(load(dir), /language_model\.model\.layers\.1\.mlp\.up_proj\.weight: missing/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a wrong shape is named with both shapes', async () => {
    const dir = copyModel();
    try {
      await rewriteWeights(dir, (t) => {
        const w = t['vision_model.encoder.layers.0.attn.proj.weight'];
        t['vision_model.encoder.layers.0.attn.proj.weight'] = { ...w, shape: [32, 128] };
      });
      await assert.rejects(
        load(dir),
        /vision_model\.encoder\.layers\.0\.attn\.proj\.weight: expected \[64,64\], got \[32,128\]/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('an unknown LLM architecture lists the supported ones', async () => {
    const dir = copyModel();
    try {
      copyFileSync(path.join(golden, 'model.safetensors'), path.join(dir, 'model.safetensors'));
      const config = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8'));
      config.llm_config.architectures = ['MistralForCausalLM'];
      writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
      await assert.rejects(load(dir), /MistralForCausalLM.*Qwen2ForCausalLM, InternLM2ForCausalLM/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a truncated safetensors file names the file', async () => {
    const dir = copyModel();
    try {
      const file = path.join(dir, 'model.safetensors');
      copyFileSync(path.join(golden, 'model.safetensors'), file);
      truncateSync(file, 5000);
      await assert.rejects(load(dir), (e: unknown) => {
        assert.ok(e instanceof InternVLError);
        assert.match(e.message, /model\.safetensors/);
        return true;
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test('when the engine worker dies, the calls it was running fail clearly and the next call starts it again', async () => {
  const model = await InternVLModel.load(goldenModelDir('tiny-internvl2_5-qwen2'), { cacheDir, threads: 1 });
  try {
    const c = await readCase('tiny-internvl2_5-qwen2', 'img1');
    const image = { pixelValues: c.pixelValues!, numTiles: c.numTiles };
    const before = await model.forwardLogits(c.inputIds, image);
    // Stands in for the worker being killed (out of memory, a native crash) while a call runs.
    const running = model.forwardLogits(c.inputIds, image);
    await (model as unknown as { client: { terminate(): Promise<void> } }).client.terminate();
    await assert.rejects(
      running,
      (err: unknown) => err instanceof InternVLError && /engine worker exited/.test(err.message),
    );
    const again = await model.forwardLogits(c.inputIds, image);
    assert.equal(maxAbsDiff(again, before), 0);
    assert.deepEqual(
      await model.generateGreedy(c.inputIds, { ...image, maxNewTokens: c.greedy.length }),
      c.greedy,
    );
  } finally {
    await model.close();
  }
});
