/**
 * Configs shaped like the published InternVL3, InternVL3.5 and MPO/AWQ config.json files (their LLM and
 * ViT fields, the extra MoE and layer-type fields newer transformers write): each either parses to the
 * LLM it names or is refused with an UNSUPPORTED error saying why.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { numImageTokens } from '../src/config/model-config.js';
import { llmQuantization } from '../src/config/quantization-config.js';
import { InternVLError } from '../src/errors.js';
import { parseModelConfig } from '../src/models/model-config.js';
import { decoderDimsFromConfig } from '../src/models/registry.js';
import { qwen3, qwen25 } from './config-fixture.js';

// InternVL3.5 keeps a separate lm_head at every size (the docs' parameter counts need it; see
// src/tools/random-shapes.ts), although the Qwen3 base models up to 4B tie theirs.
const accepted: [string, object, { arch: string; hiddenSize: number; headDim: number; tied: boolean }][] = [
  [
    'InternVL3-1B',
    qwen25('Qwen/Qwen2.5-0.5B-Instruct', {
      hidden: 896,
      ff: 4864,
      layers: 24,
      heads: 14,
      kv: 2,
      tied: false,
    }),
    { arch: 'qwen2', hiddenSize: 896, headDim: 64, tied: false },
  ],
  [
    'InternVL3-2B',
    qwen25('Qwen/Qwen2.5-1.5B-Instruct', {
      hidden: 1536,
      ff: 8960,
      layers: 28,
      heads: 12,
      kv: 2,
      tied: false,
    }),
    { arch: 'qwen2', hiddenSize: 1536, headDim: 128, tied: false },
  ],
  [
    'InternVL3-8B',
    qwen25('Qwen/Qwen2.5-7B-Instruct', {
      hidden: 3584,
      ff: 18944,
      layers: 28,
      heads: 28,
      kv: 4,
      tied: false,
    }),
    { arch: 'qwen2', hiddenSize: 3584, headDim: 128, tied: false },
  ],
  [
    'InternVL3_5-1B',
    qwen3('Qwen/Qwen3-0.6B', {
      hidden: 1024,
      ff: 3072,
      layers: 28,
      heads: 16,
      kv: 8,
      headDim: 128,
      tied: false,
    }),
    { arch: 'qwen3', hiddenSize: 1024, headDim: 128, tied: false },
  ],
  [
    'InternVL3_5-2B',
    qwen3('Qwen/Qwen3-1.7B', {
      hidden: 2048,
      ff: 6144,
      layers: 28,
      heads: 16,
      kv: 8,
      headDim: 128,
      tied: false,
    }),
    { arch: 'qwen3', hiddenSize: 2048, headDim: 128, tied: false },
  ],
  [
    'InternVL3_5-4B',
    qwen3('Qwen/Qwen3-4B', {
      hidden: 2560,
      ff: 9728,
      layers: 36,
      heads: 32,
      kv: 8,
      headDim: 128,
      tied: false,
    }),
    { arch: 'qwen3', hiddenSize: 2560, headDim: 128, tied: false },
  ],
  [
    'InternVL3_5-8B',
    qwen3('Qwen/Qwen3-8B', {
      hidden: 4096,
      ff: 12288,
      layers: 36,
      heads: 32,
      kv: 8,
      headDim: 128,
      tied: false,
    }),
    { arch: 'qwen3', hiddenSize: 4096, headDim: 128, tied: false },
  ],
];

function isUnsupported(...fragments: string[]) {
  return (err: unknown) => {
    assert.ok(err instanceof InternVLError, `expected InternVLError, got ${err}`);
    assert.equal(err.code, 'UNSUPPORTED', err.message);
    for (const f of fragments) assert.ok(err.message.includes(f), `"${err.message}" should mention "${f}"`);
    return true;
  };
}

const clone = <T>(x: T): T => structuredClone(x);
const internvl3_1b = accepted[0][1] as ReturnType<typeof qwen25>;

describe('published InternVL3 / InternVL3.5 configs', () => {
  for (const [name, json, want] of accepted) {
    test(`${name}: parses to its dense LLM; the MoE and layer_types fields that are off are ignored`, () => {
      const config = parseModelConfig(json, `${name}/config.json`);
      const dims = decoderDimsFromConfig(config);
      assert.equal(dims.arch, want.arch);
      assert.equal(dims.hiddenSize, want.hiddenSize);
      assert.equal(dims.headDim, want.headDim);
      assert.equal(dims.tieWordEmbeddings, want.tied);
      assert.equal(numImageTokens(config), 256);
      assert.equal(llmQuantization(config), null);
    });
  }

  test('InternVL3-9B (internlm3-8b-instruct): parses to the InternLM3 decoder', () => {
    const json = clone(internvl3_1b) as { llm_config: Record<string, unknown> };
    json.llm_config = {
      _name_or_path: 'internlm/internlm3-8b-instruct',
      architectures: ['InternLM3ForCausalLM'],
      attention_dropout: 0.0,
      bias: false,
      bos_token_id: 1,
      eos_token_id: 2,
      head_dim: 128,
      hidden_act: 'silu',
      hidden_size: 4096,
      intermediate_size: 10240,
      max_position_embeddings: 32768,
      model_type: 'internlm3',
      num_attention_heads: 32,
      num_hidden_layers: 48,
      num_key_value_heads: 2,
      pad_token_id: 2,
      qkv_bias: false,
      rms_norm_eps: 1e-5,
      rope_scaling: { factor: 6.0, rope_type: 'dynamic' },
      rope_theta: 50000000,
      tie_word_embeddings: false,
      torch_dtype: 'bfloat16',
      use_cache: true,
      vocab_size: 128512,
    };
    const dims = decoderDimsFromConfig(parseModelConfig(json, 'InternVL3-9B/config.json'));
    assert.deepEqual(
      [dims.arch, dims.hiddenSize, dims.numLayers, dims.numKvHeads, dims.headDim, dims.attentionBias],
      ['internlm3', 4096, 48, 2, 128, false],
    );
    assert.deepEqual(dims.ropeScaling, { type: 'dynamic', factor: 6 });
  });

  test('MoE LLMs (InternVL3.5 30B-A3B, 241B-A28B on Qwen3-MoE; 20B-A4B on GPT-OSS) are refused as MoE', () => {
    for (const arch of ['Qwen3MoeForCausalLM', 'GptOssForCausalLM']) {
      const json = clone(accepted[3][1]) as { llm_config: Record<string, unknown> };
      json.llm_config.architectures = [arch];
      assert.throws(
        () => parseModelConfig(json, 'x/config.json'),
        isUnsupported('x/config.json', arch, 'mixture-of-experts (MoE) variants are not supported'),
      );
    }
  });

  test('MoE switched on in the ViT or the LLM config, and sliding-window layers, are refused by field', () => {
    const cases: [string, (c: ReturnType<typeof qwen25>) => void, string][] = [
      ['vision_config.use_moe', (c) => Object.assign(c.vision_config, { use_moe: true }), 'MoE'],
      [
        'llm_config.moe_config',
        (c) => Object.assign(c.llm_config, { moe_config: { num_experts: 8 } }),
        'MoE',
      ],
      ['moe_config', (c) => Object.assign(c, { moe_config: { num_experts: 8 } }), 'MoE'],
      [
        'llm_config.layer_types[3]',
        (c) => {
          c.llm_config.layer_types[3] = 'sliding_attention';
        },
        '"sliding_attention"',
      ],
      [
        'llm_config.use_sliding_window',
        (c) => Object.assign(c.llm_config, { use_sliding_window: true }),
        'sliding',
      ],
    ];
    for (const [field, edit, fragment] of cases) {
      const json = clone(internvl3_1b);
      edit(json);
      assert.throws(
        () => parseModelConfig(json, 'x/config.json'),
        isUnsupported(`x/config.json: ${field}:`, fragment),
      );
    }
  });

  test('MPO and AWQ releases: the same config, with quantization_config where LMDeploy writes it; act-order GPTQ refused', () => {
    const mpo = parseModelConfig(internvl3_1b, 'InternVL3-1B-MPO/config.json');
    assert.equal(decoderDimsFromConfig(mpo).arch, 'qwen2');
    const awq = clone(internvl3_1b) as ReturnType<typeof qwen25> & { llm_config: Record<string, unknown> };
    awq.llm_config.quantization_config = {
      bits: 4,
      group_size: 128,
      quant_method: 'awq',
      version: 'gemm',
      zero_point: true,
    };
    assert.deepEqual(llmQuantization(parseModelConfig(awq)), { method: 'awq', groupSize: 128 });
    awq.llm_config.quantization_config = { quant_method: 'gptq', bits: 4, group_size: 128, desc_act: true };
    assert.throws(
      () => parseModelConfig(awq, 'x/config.json'),
      isUnsupported('act-order GPTQ (desc_act true)', 'supported: awq'),
    );
  });
});
