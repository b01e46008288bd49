import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { loadGenerationConfig, parseGenerationConfig, tokenIdList } from '../src/config/generation-config.js';
import { imageSize, type ModelConfig, numImageTokens } from '../src/config/model-config.js';
import { InternVLError } from '../src/errors.js';
import {
  llmArchitecture,
  loadModelConfig,
  parseModelConfig,
  SUPPORTED_LLM_ARCHITECTURES,
} from '../src/models/model-config.js';
import { DECODER_ARCHITECTURES, decoderDimsFromConfig, decoderTensorSpecs } from '../src/models/registry.js';
import { topLevel } from './config-fixture.js';
import { GOLDEN_MODELS, goldenModelDir } from './helpers.js';

function isError(code: string, ...fragments: string[]) {
  return (err: unknown) => {
    assert.ok(err instanceof InternVLError, `expected InternVLError, got ${err}`);
    assert.equal(err.code, code, err.message);
    for (const f of fragments) assert.ok(err.message.includes(f), `"${err.message}" should mention "${f}"`);
    return true;
  };
}

const vit300m = {
  architectures: ['InternVisionModel'],
  attention_dropout: 0.0,
  drop_path_rate: 0.0,
  dropout: 0.0,
  hidden_act: 'gelu',
  hidden_size: 1024,
  image_size: 448,
  initializer_factor: 1.0,
  initializer_range: 0.02,
  intermediate_size: 4096,
  layer_norm_eps: 1e-6,
  model_type: 'intern_vit_6b',
  norm_type: 'layer_norm',
  num_attention_heads: 16,
  num_channels: 3,
  num_hidden_layers: 24,
  patch_size: 14,
  qk_normalization: false,
  qkv_bias: true,
  torch_dtype: 'bfloat16',
  use_flash_attn: true,
};

/** Shaped like OpenGVLab/InternVL2_5-1B config.json. */
const internvl25_1b = {
  ...topLevel,
  hidden_size: 896,
  llm_config: {
    _name_or_path: 'Qwen/Qwen2.5-0.5B-Instruct',
    architectures: ['Qwen2ForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: 151643,
    eos_token_id: 151645,
    hidden_act: 'silu',
    hidden_size: 896,
    initializer_range: 0.02,
    intermediate_size: 4864,
    max_position_embeddings: 32768,
    max_window_layers: 21,
    model_type: 'qwen2',
    num_attention_heads: 14,
    num_hidden_layers: 24,
    num_key_value_heads: 2,
    rms_norm_eps: 1e-6,
    rope_scaling: { factor: 2.0, rope_type: 'dynamic', type: 'dynamic' },
    rope_theta: 1000000.0,
    sliding_window: 32768,
    tie_word_embeddings: false,
    torch_dtype: 'bfloat16',
    use_bfloat16: true,
    use_cache: false,
    use_sliding_window: false,
    vocab_size: 151674,
  },
  vision_config: vit300m,
};

/** Shaped like OpenGVLab/InternVL2_5-8B config.json. */
const internvl25_8b = {
  ...topLevel,
  hidden_size: 4096,
  llm_config: {
    _name_or_path: 'internlm/internlm2_5-7b-chat',
    architectures: ['InternLM2ForCausalLM'],
    attn_implementation: 'flash_attention_2',
    bias: false,
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: 'silu',
    hidden_size: 4096,
    initializer_range: 0.02,
    intermediate_size: 14336,
    max_position_embeddings: 32768,
    model_type: 'internlm2',
    num_attention_heads: 32,
    num_hidden_layers: 32,
    num_key_value_heads: 8,
    pad_token_id: 2,
    rms_norm_eps: 1e-5,
    rope_scaling: { factor: 2.0, type: 'dynamic' },
    rope_theta: 1000000,
    tie_word_embeddings: false,
    vocab_size: 92553,
  },
  vision_config: vit300m,
};

const clone = <T>(x: T): T => structuredClone(x);

describe('model config', () => {
  for (const name of GOLDEN_MODELS) {
    test(`golden ${name} parses`, async () => {
      const config = await loadModelConfig(goldenModelDir(name));
      assert.equal(config.template, 'internvl2_5');
      assert.equal(config.ps_version, 'v2');
      assert.equal(config.max_dynamic_patch, 12);
      assert.equal(config.vision_config.hidden_size, 64);
      // Qwen3 takes head_dim from the config (32), not hidden / heads (16).
      assert.equal(config.llm_config.head_dim, name.includes('qwen3') ? 32 : 16);
      assert.equal(config.llm_config.num_key_value_heads, 2);
      assert.equal(config.llm_config.vocab_size, 320);
      assert.equal(numImageTokens(config), 256);
      assert.equal(imageSize(config), 448);
      const expectedArch = name.includes('internlm2')
        ? 'InternLM2ForCausalLM'
        : name.includes('qwen3')
          ? 'Qwen3ForCausalLM'
          : 'Qwen2ForCausalLM';
      assert.equal(llmArchitecture(config), expectedArch);
      const vit6b = name.includes('vit6b');
      assert.equal(config.vision_config.norm_type, vit6b ? 'rms_norm' : 'layer_norm');
      assert.equal(config.vision_config.qk_normalization, vit6b);
      assert.equal(config.vision_config.qkv_bias, !vit6b);
      // Unknown keys are kept, not rejected.
      assert.equal((config as unknown as Record<string, unknown>).pad2square, false);
      assert.equal((config.llm_config as unknown as Record<string, unknown>).use_cache, true);
    });
  }

  test("each registered architecture's llm_config schema parses a config naming it, with its model_type", () => {
    const implemented = DECODER_ARCHITECTURES.map((a) => a.modelType).sort();
    const configured = SUPPORTED_LLM_ARCHITECTURES.map((arch) => {
      const json = clone(internvl25_1b) as { llm_config: Record<string, unknown> };
      json.llm_config.architectures = [arch];
      delete json.llm_config.model_type;
      delete json.llm_config.bias;
      return parseModelConfig(json).llm_config.model_type;
    }).sort();
    assert.deepEqual(configured, implemented);
  });

  test('Qwen3 golden: head_dim from the config, tied embeddings, q/k norm tensors, no lm_head', async () => {
    const config = await loadModelConfig(goldenModelDir('tiny-internvl3_5-qwen3'));
    const dims = decoderDimsFromConfig(config);
    assert.equal(dims.arch, 'qwen3');
    assert.equal(dims.headDim, 32);
    assert.equal(dims.tieWordEmbeddings, true);
    assert.equal(dims.attentionBias, false);
    const names = decoderTensorSpecs(dims).map((t) => t.name);
    assert.ok(names.includes('language_model.model.layers.0.self_attn.q_norm.weight'));
    assert.ok(!names.includes('language_model.lm_head.weight'));
    assert.ok(!names.some((n) => n.endsWith('q_proj.bias')));
  });

  test('InternLM2 golden: bias and rope scaling', async () => {
    const config = await loadModelConfig(goldenModelDir('tiny-internvl2_5-internlm2'));
    const llm = config.llm_config as typeof config.llm_config & { bias: boolean; rope_scaling: unknown };
    assert.equal(llm.model_type, 'internlm2');
    assert.equal(llm.bias, false);
    assert.deepEqual(llm.rope_scaling, { type: 'dynamic', factor: 2 });
    assert.equal(llm.rms_norm_eps, 1e-5);
    assert.equal(llm.max_position_embeddings, 32768);
  });

  test('InternVL2_5-1B (Qwen2) shaped config', () => {
    const config = parseModelConfig(internvl25_1b);
    const llm = config.llm_config;
    assert.equal(llm.model_type, 'qwen2');
    assert.equal(llm.head_dim, 64);
    assert.equal(llm.num_key_value_heads, 2);
    assert.equal(llm.rope_theta, 1e6);
    assert.equal(llm.eos_token_id, 151645);
    assert.equal(config.vision_config.num_hidden_layers, 24);
    assert.equal(numImageTokens(config), 256);
  });

  test('InternVL2_5-8B (InternLM2) shaped config', () => {
    const config = parseModelConfig(internvl25_8b);
    assert.equal(llmArchitecture(config), 'InternLM2ForCausalLM');
    assert.equal(config.llm_config.head_dim, 128);
    assert.equal(config.llm_config.num_key_value_heads, 8);
    assert.equal(config.llm_config.pad_token_id, 2);
  });

  test('class defaults fill what the file leaves out', () => {
    const minimal = clone(internvl25_1b) as Record<string, unknown>;
    for (const key of [
      'ps_version',
      'select_layer',
      'max_dynamic_patch',
      'use_thumbnail',
      'force_image_size',
    ]) {
      delete minimal[key];
    }
    const llm = minimal.llm_config as Record<string, unknown>;
    delete llm.num_key_value_heads;
    const config: ModelConfig = parseModelConfig(minimal);
    assert.equal(config.ps_version, 'v1');
    assert.equal(config.select_layer, -1);
    assert.equal(config.max_dynamic_patch, 6);
    assert.equal(config.use_thumbnail, false);
    assert.equal(config.llm_config.num_key_value_heads, 14);
    assert.equal(imageSize(config), 448);
    const withoutVisionSize = clone(internvl25_1b) as Record<string, unknown>;
    delete (withoutVisionSize.vision_config as Record<string, unknown>).image_size;
    delete withoutVisionSize.force_image_size;
    // vision_config.image_size defaults to 224 as in InternVisionConfig: 16x16 patches -> 64 tokens.
    assert.equal(numImageTokens(parseModelConfig(withoutVisionSize)), 64);
  });

  test('unsupported LLM architecture lists the supported ones', () => {
    const bad = clone(internvl25_1b);
    bad.llm_config.architectures = ['LlamaForCausalLM'];
    assert.throws(
      () => parseModelConfig(bad, 'x/config.json'),
      isError('UNSUPPORTED', 'x/config.json', 'LlamaForCausalLM', 'Qwen2ForCausalLM', 'InternLM2ForCausalLM'),
    );
  });

  type EditableConfig = {
    [key: string]: unknown;
    llm_config: Record<string, unknown>;
    vision_config: Record<string, unknown>;
  };
  const badCases: [string, (c: EditableConfig) => void, string[]][] = [
    [
      'kv heads not a positive integer',
      (c) => {
        c.llm_config.num_key_value_heads = 0;
      },
      ['config.json: llm_config.num_key_value_heads: expected a positive integer'],
    ],
    [
      'missing hidden size',
      (c) => {
        delete c.llm_config.hidden_size;
      },
      ['llm_config.hidden_size', 'missing'],
    ],
    [
      'bad ps_version',
      (c) => {
        c.ps_version = 'v3';
      },
      ['ps_version', '"v3"'],
    ],
    [
      'not an InternVLChatModel',
      (c) => {
        c.architectures = ['Other'];
      },
      ['architectures', 'InternVLChatModel'],
    ],
    [
      'bad norm type',
      (c) => {
        c.vision_config.norm_type = 'batch_norm';
      },
      ['vision_config.norm_type'],
    ],
    [
      'string where a number belongs',
      (c) => {
        c.vision_config.patch_size = '14';
      },
      ['vision_config.patch_size', 'positive integer'],
    ],
    [
      'kv heads do not divide heads',
      (c) => {
        c.llm_config.num_key_value_heads = 3;
      },
      ['llm_config.num_key_value_heads', 'does not divide'],
    ],
    [
      'patch size does not divide image size',
      (c) => {
        c.vision_config.patch_size = 15;
      },
      ['vision_config.patch_size'],
    ],
    [
      'min above max patches',
      (c) => {
        c.min_dynamic_patch = 13;
      },
      ['min_dynamic_patch'],
    ],
    [
      'internlm2 rope scaling without factor',
      (c) => {
        c.llm_config = clone(internvl25_8b.llm_config);
        c.llm_config.rope_scaling = { type: 'dynamic' };
      },
      ['llm_config.rope_scaling.factor'],
    ],
    [
      'model_type contradicts architecture',
      (c) => {
        c.llm_config.model_type = 'internlm2';
      },
      ['llm_config.model_type'],
    ],
    [
      'no llm_config',
      (c) => {
        delete (c as Record<string, unknown>).llm_config;
      },
      ['llm_config'],
    ],
  ];
  for (const [name, mutate, fragments] of badCases) {
    test(`rejects: ${name}`, () => {
      const c = clone(internvl25_1b) as EditableConfig;
      mutate(c);
      assert.throws(() => parseModelConfig(c), isError('BAD_CONFIG', 'config.json: ', ...fragments));
    });
  }

  test('non-object JSON and missing or broken files', async () => {
    assert.throws(() => parseModelConfig([1, 2], 'a.json'), isError('BAD_CONFIG', 'a.json'));
    const dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-config-'));
    try {
      await assert.rejects(loadModelConfig(dir), isError('NOT_FOUND', 'config.json'));
      await writeFile(path.join(dir, 'config.json'), '{"architectures": [');
      await assert.rejects(
        loadModelConfig(dir),
        isError('BAD_CONFIG', path.join(dir, 'config.json'), 'JSON'),
      );
      await writeFile(path.join(dir, 'generation_config.json'), '{"top_p": 2}');
      await assert.rejects(
        loadGenerationConfig(dir),
        isError('BAD_CONFIG', 'generation_config.json', 'top_p'),
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('generation config', () => {
  test('golden file', async () => {
    const gen = await loadGenerationConfig(goldenModelDir('tiny-internvl2_5-qwen2'));
    assert.deepEqual(gen.eos_token_id, [258, 256]);
    assert.equal(gen.pad_token_id, 256);
    assert.equal(gen.max_new_tokens, 8);
    assert.equal(gen.do_sample, false);
    assert.deepEqual(tokenIdList(gen.eos_token_id), [258, 256]);
    const raw = JSON.parse(
      await readFile(path.join(goldenModelDir('tiny-internvl2_5-qwen2'), 'generation_config.json'), 'utf8'),
    );
    assert.equal(
      (parseGenerationConfig(raw) as unknown as Record<string, unknown>).transformers_version,
      '4.37.2',
    );
  });

  test('missing file gives the defaults', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-gen-'));
    try {
      const gen = await loadGenerationConfig(dir);
      assert.equal(gen.do_sample, false);
      assert.equal(gen.temperature, 1);
      assert.equal(gen.top_k, 50);
      assert.equal(gen.top_p, 1);
      assert.equal(gen.eos_token_id, undefined);
      assert.deepEqual(tokenIdList(gen.eos_token_id), []);
      assert.deepEqual(tokenIdList(7), [7]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('bad values name the field', () => {
    assert.throws(
      () => parseGenerationConfig({ eos_token_id: ['x'] }),
      isError('BAD_CONFIG', 'generation_config.json: eos_token_id'),
    );
    assert.throws(
      () => parseGenerationConfig({ max_new_tokens: -1 }, 'g.json'),
      isError('BAD_CONFIG', 'g.json: max_new_tokens'),
    );
  });
});
