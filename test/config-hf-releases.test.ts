/**
 * Every repo id the README lists as loading maps to a config the loader accepts: the larger InternVL3 /
 * InternVL3.5 sizes (LLM dims of their base models' config.json: Qwen2.5-14B/32B/72B-Instruct,
 * Qwen3-14B/32B; ViT-6B for 38B and 78B), and the transformers-native `-hf` / `-HF` repos, whose
 * config.json is written here from the original one as transformers' converter writes it
 * (test/hf-layout-fixture.ts). The `-hf` repos of InternLM-based models (llama text_config) are refused.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { numImageTokens } from '../src/config/model-config.js';
import { InternVLError } from '../src/errors.js';
import { parseModelConfig } from '../src/models/model-config.js';
import { decoderDimsFromConfig } from '../src/models/registry.js';
import { type LlmShape, qwen3, qwen25, vit300mV25 } from './config-fixture.js';
import { hfConfigFrom } from './hf-layout-fixture.js';

/** InternViT-6B-448px-V2_5 (45 layers), as InternVL3-38B/78B and InternVL3.5-38B write it. */
const vit6bV25 = {
  ...vit300mV25,
  hidden_size: 3200,
  intermediate_size: 12800,
  num_attention_heads: 25,
  num_hidden_layers: 45,
  norm_type: 'rms_norm',
  qk_normalization: true,
  qkv_bias: false,
};

const shape = (
  hidden: number,
  layers: number,
  heads: number,
  kv: number,
  ff: number,
  headDim?: number,
): LlmShape => ({
  hidden,
  layers,
  heads,
  kv,
  ff,
  headDim,
  tied: false,
});

/** [repo id, original config.json, LLM arch, hidden, layers, ViT width]. */
const RELEASES: [string, Record<string, unknown>, string, number, number, number][] = [
  ['InternVL3-1B', qwen25('Qwen/Qwen2.5-0.5B-Instruct', shape(896, 24, 14, 2, 4864)), 'qwen2', 896, 24, 1024],
  [
    'InternVL3-2B',
    qwen25('Qwen/Qwen2.5-1.5B-Instruct', shape(1536, 28, 12, 2, 8960)),
    'qwen2',
    1536,
    28,
    1024,
  ],
  [
    'InternVL3-8B',
    qwen25('Qwen/Qwen2.5-7B-Instruct', shape(3584, 28, 28, 4, 18944)),
    'qwen2',
    3584,
    28,
    1024,
  ],
  [
    'InternVL3-14B',
    qwen25('Qwen/Qwen2.5-14B-Instruct', shape(5120, 48, 40, 8, 13824)),
    'qwen2',
    5120,
    48,
    1024,
  ],
  [
    'InternVL3-38B',
    { ...qwen25('Qwen/Qwen2.5-32B-Instruct', shape(5120, 64, 40, 8, 27648)), vision_config: vit6bV25 },
    'qwen2',
    5120,
    64,
    3200,
  ],
  [
    'InternVL3-78B',
    { ...qwen25('Qwen/Qwen2.5-72B-Instruct', shape(8192, 80, 64, 8, 29568)), vision_config: vit6bV25 },
    'qwen2',
    8192,
    80,
    3200,
  ],
  ['InternVL3_5-1B', qwen3('Qwen/Qwen3-0.6B', shape(1024, 28, 16, 8, 3072, 128)), 'qwen3', 1024, 28, 1024],
  ['InternVL3_5-2B', qwen3('Qwen/Qwen3-1.7B', shape(2048, 28, 16, 8, 6144, 128)), 'qwen3', 2048, 28, 1024],
  ['InternVL3_5-4B', qwen3('Qwen/Qwen3-4B', shape(2560, 36, 32, 8, 9728, 128)), 'qwen3', 2560, 36, 1024],
  ['InternVL3_5-8B', qwen3('Qwen/Qwen3-8B', shape(4096, 36, 32, 8, 12288, 128)), 'qwen3', 4096, 36, 1024],
  ['InternVL3_5-14B', qwen3('Qwen/Qwen3-14B', shape(5120, 40, 40, 8, 17408, 128)), 'qwen3', 5120, 40, 1024],
  [
    'InternVL3_5-38B',
    { ...qwen3('Qwen/Qwen3-32B', shape(5120, 64, 64, 8, 25600, 128)), vision_config: vit6bV25 },
    'qwen3',
    5120,
    64,
    3200,
  ],
];

/** The `-hf` repos: InternVL3 sizes as `-hf`, InternVL3.5 as `-HF`. */
const hfId = (id: string) => (id.startsWith('InternVL3_5') ? `${id}-HF` : `${id}-hf`);

describe('published repo ids', () => {
  for (const [id, json, arch, hidden, layers, vit] of RELEASES) {
    test(`OpenGVLab/${id} and OpenGVLab/${hfId(id)} parse to the same model`, () => {
      const original = parseModelConfig(json, `${id}/config.json`);
      const hf = parseModelConfig(hfConfigFrom(json), `${hfId(id)}/config.json`);
      assert.equal(hf.checkpoint_layout, 'transformers');
      for (const config of [original, hf]) {
        const dims = decoderDimsFromConfig(config);
        assert.deepEqual([dims.arch, dims.hiddenSize, dims.numLayers], [arch, hidden, layers], id);
        assert.equal(config.vision_config.hidden_size, vit);
        assert.equal(numImageTokens(config), 256);
      }
      assert.deepEqual(decoderDimsFromConfig(hf), decoderDimsFromConfig(original));
      for (const key of ['qkv_bias', 'qk_normalization', 'norm_type', 'num_hidden_layers'] as const) {
        assert.equal(hf.vision_config[key], original.vision_config[key], key);
      }
    });
  }

  test('the -hf repos of InternLM-based models (text_config model_type "llama") are refused, naming it', () => {
    const json = hfConfigFrom(RELEASES[0][1]);
    const text = json.text_config as Record<string, unknown>;
    const llama = {
      ...json,
      text_config: { ...text, model_type: 'llama', architectures: ['InternLM3ForCausalLM'] },
    };
    assert.throws(
      () => parseModelConfig(llama, 'InternVL3-9B-hf/config.json'),
      (e: unknown) =>
        e instanceof InternVLError &&
        e.code === 'UNSUPPORTED' &&
        /llm_config.architectures\[0\] is "LlamaForCausalLM"/.test(e.message),
    );
  });
});
