import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { numImageTokens } from '../src/config/model-config.js';
import { EngineCore } from '../src/engine/core.js';
import { InternVLError } from '../src/errors.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { writeSafetensors } from '../src/io/safetensors-write.js';
import { hfTensorFor } from '../src/models/hf-layout.js';
import { loadModelConfig, parseModelConfig } from '../src/models/model-config.js';
import { pipeline } from '../src/pipeline/pipeline.js';
import { GOLDEN_DIR, goldenModelDir, maxAbsDiff, readGoldenCase } from './helpers.js';
import { hfConfigFrom, writeHfCheckpoint } from './hf-layout-fixture.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'ivl-hf-'));
after(() => rmSync(root, { recursive: true, force: true }));

const isError = (code: string, pattern: RegExp) => (e: unknown) =>
  e instanceof InternVLError && e.code === code && pattern.test(e.message);

describe('transformers layout names', () => {
  test('each original name maps to its transformers name (q|k|v split, both spellings)', () => {
    assert.deepEqual(hfTensorFor('vision_model.encoder.layers.3.attn.qkv.bias', true), {
      parts: ['q', 'k', 'v'].map((p) => `model.vision_tower.encoder.layer.3.attention.${p}_proj.bias`),
    });
    const single: [string, boolean, string][] = [
      ['vision_model.embeddings.class_embedding', false, 'vision_tower.embeddings.cls_token'],
      [
        'vision_model.embeddings.patch_embedding.weight',
        true,
        'model.vision_tower.embeddings.patch_embeddings.projection.weight',
      ],
      ['vision_model.encoder.layers.0.ls2', true, 'model.vision_tower.encoder.layer.0.lambda_2'],
      [
        'vision_model.encoder.layers.1.norm1.bias',
        false,
        'vision_tower.encoder.layer.1.layernorm_before.bias',
      ],
      [
        'vision_model.encoder.layers.1.attn.proj.weight',
        true,
        'model.vision_tower.encoder.layer.1.attention.projection_layer.weight',
      ],
      ['mlp1.3.bias', true, 'model.multi_modal_projector.linear_2.bias'],
      [
        'language_model.model.layers.0.mlp.up_proj.qweight',
        true,
        'model.language_model.layers.0.mlp.up_proj.qweight',
      ],
      ['language_model.model.norm.weight', false, 'language_model.model.norm.weight'],
      ['language_model.lm_head.weight', true, 'lm_head.weight'],
    ];
    for (const [name, modern, hf] of single) assert.deepEqual(hfTensorFor(name, modern), { name: hf }, name);
  });
});

// [golden model, tensor-name spelling]: the LayerNorm ViT, the RMSNorm + qk-norm ViT, Qwen3 with a tied head.
const MODELS: [string, boolean][] = [
  ['tiny-internvl2_5-qwen2', false],
  ['tiny-internvl2_5-vit6b-qwen2', true],
  ['tiny-internvl3_5-qwen3', true],
];

for (const [model, modern] of MODELS) {
  describe(`${model} converted to the transformers layout (${modern ? 'model.*' : 'legacy'} names)`, () => {
    const dir = path.join(root, `${model}-hf`);
    before(async () => {
      mkdirSync(dir);
      await writeHfCheckpoint(goldenModelDir(model), dir, modern);
    });

    test('its config parses to the original model config', async () => {
      const original = await loadModelConfig(goldenModelDir(model));
      const hf = await loadModelConfig(dir);
      assert.equal(hf.checkpoint_layout, 'transformers');
      assert.equal(original.checkpoint_layout, undefined);
      for (const key of ['downsample_ratio', 'ps_version', 'select_layer', 'template'] as const) {
        assert.equal(hf[key], original[key], key);
      }
      assert.equal(numImageTokens(hf), numImageTokens(original));
      assert.equal(hf.max_dynamic_patch, original.max_dynamic_patch);
      const visionKeys = [
        'hidden_size',
        'num_hidden_layers',
        'num_attention_heads',
        'intermediate_size',
        'image_size',
        'patch_size',
        'num_channels',
        'qkv_bias',
        'qk_normalization',
        'norm_type',
        'layer_norm_eps',
        'hidden_act',
      ] as const;
      for (const key of visionKeys) {
        assert.deepEqual(hf.vision_config[key], original.vision_config[key], `vision_config.${key}`);
      }
      const { _name_or_path, use_bfloat16, ...llm } = original.llm_config as Record<string, unknown>;
      assert.deepEqual({ ...hf.llm_config, use_cache: undefined }, { ...llm, use_cache: undefined });
    });

    test('the same logits and greedy tokens as the original checkpoint (img1, text)', async () => {
      const load = (d: string) => EngineCore.load(d, { cacheDir: false, threads: 1 });
      const [a, b] = [await load(goldenModelDir(model)), await load(dir)];
      try {
        for (const name of ['img1', 'text']) {
          const { ids, image } = await readGoldenCase(model, name);
          const reference = await a.forwardLogits(ids, image);
          assert.equal(maxAbsDiff(await b.forwardLogits(ids, image), reference), 0, name);
          assert.deepEqual(await b.generateGreedy(ids, 8, image), await a.generateGreedy(ids, 8, image));
        }
      } finally {
        await a.close();
        await b.close();
      }
    });
  });
}

describe('the transformers layout through pipeline()', () => {
  test('an image prompt gives the same prompt and greedy tokens as the original checkpoint', async () => {
    const model = 'tiny-internvl2_5-vit6b-qwen2';
    const dir = path.join(root, 'pipeline-hf');
    mkdirSync(dir);
    await writeHfCheckpoint(goldenModelDir(model), dir, true);
    const request = {
      prompt: 'What is it?',
      images: [path.join(GOLDEN_DIR, 'prep/sources/s0_500x300_rgb.png')],
    };
    const options = { maxNewTokens: 6, ignoreEos: true };
    const results = [];
    for (const d of [goldenModelDir(model), dir]) {
      const p = await pipeline(d, { cacheDir: false, threads: 1, maxTiles: 2 });
      try {
        results.push(await p.infer(request, options));
      } finally {
        await p.close();
      }
    }
    assert.deepEqual(results[1].tokenIds, results[0].tokenIds);
    assert.equal(results[1].usage.promptTokens, results[0].usage.promptTokens);
    assert.equal(results[1].usage.imageTokens, results[0].usage.imageTokens);
  });
});

describe('bad transformers-layout checkpoints', () => {
  const golden = JSON.parse(
    readFileSync(path.join(goldenModelDir('tiny-internvl2_5-qwen2'), 'config.json'), 'utf8'),
  );
  const hf = hfConfigFrom(golden);
  const vision = hf.vision_config as Record<string, unknown>;

  test('variants the original layout cannot express are refused by field', () => {
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [
        { ...hf, vision_feature_select_strategy: 'full' },
        'BAD_CONFIG',
        /vision_feature_select_strategy: expected "default"/,
      ],
      [
        { ...hf, vision_config: { ...vision, use_mean_pooling: false } },
        'UNSUPPORTED',
        /vision_config.use_mean_pooling/,
      ],
      [
        { ...hf, vision_config: { ...vision, image_size: [448, 336] } },
        'UNSUPPORTED',
        /vision_config.image_size: \[448, 336\]/,
      ],
      [{ ...hf, image_seq_length: 64 }, 'BAD_CONFIG', /image_seq_length: 64, but .* gives 256 tokens/],
      [{ ...hf, projector_hidden_act: 'relu' }, 'BAD_CONFIG', /projector_hidden_act: expected "gelu"/],
    ];
    for (const [json, code, pattern] of cases) {
      assert.throws(() => parseModelConfig(json, 'x/config.json'), isError(code, pattern), String(pattern));
    }
    const preprocessor = (json: unknown) => ({ json, sourceName: 'x/preprocessor_config.json' });
    assert.throws(
      () => parseModelConfig(hf, 'x/config.json', preprocessor({ image_mean: [0.5, 0.5, 0.5] })),
      isError('UNSUPPORTED', /preprocessor_config.json: image_mean: \[0.5, 0.5, 0.5\]: only the ImageNet/),
    );
    assert.throws(
      () => parseModelConfig(hf, 'x/config.json', preprocessor({ size: { height: 336, width: 336 } })),
      isError('BAD_CONFIG', /size: 336x336 differs from the model's 448 px tiles/),
    );
    const tiles = parseModelConfig(hf, 'x/config.json', preprocessor({ min_patches: 2, max_patches: 6 }));
    assert.deepEqual(
      [tiles.min_dynamic_patch, tiles.max_dynamic_patch, tiles.dynamic_image_size],
      [2, 6, true],
    );
  });

  test('a missing projection names its transformers tensor; transformers names under an original config are named', async () => {
    const dir = path.join(root, 'broken-hf');
    mkdirSync(dir);
    const names = await writeHfCheckpoint(goldenModelDir('tiny-internvl2_5-qwen2'), dir, true);
    const c = await Checkpoint.open(dir);
    const kept: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    for (const n of names) {
      if (n.endsWith('layer.1.attention.k_proj.weight')) continue;
      kept[n] = { dtype: 'F32', shape: c.info(n).shape, data: await c.readFloat32(n) };
    }
    await c.close();
    await writeSafetensors(path.join(dir, 'model.safetensors'), kept);
    await assert.rejects(
      EngineCore.load(dir, { cacheDir: false, threads: 1 }),
      isError(
        'BAD_CHECKPOINT',
        /model\.vision_tower\.encoder\.layer\.1\.attention\.q_proj\.weight \+ .*k_proj.weight.*: missing/,
      ),
    );
    copyFileSync(
      path.join(goldenModelDir('tiny-internvl2_5-qwen2'), 'config.json'),
      path.join(dir, 'config.json'),
    );
    await assert.rejects(
      EngineCore.load(dir, { cacheDir: false, threads: 1 }),
      isError(
        'BAD_CHECKPOINT',
        /named as transformers' InternVLForConditionalGeneration .* config.json describes an InternVLChatModel/,
      ),
    );
  });
});
