/**
 * The shapes `create-random` writes, and their config.json. InternVL 2.5 (spec §1.3–1.4, below), InternVL3
 * (Qwen2.5 LLMs) and InternVL3.5 (Qwen3 LLMs): each LLM's dims are those of the published llm_config, which
 * copies its base model's config.json (Qwen/Qwen2.5-0.5B/1.5B/7B-Instruct; Qwen/Qwen3-0.6B/1.7B/4B/8B),
 * as recorded in test/config-releases.test.ts. Sources, by field:
 *
 * | shape          | hidden | layers | heads/kv | head_dim | ffn   | vocab  | tied | source                 |
 * |----------------|--------|--------|----------|----------|-------|--------|------|------------------------|
 * | InternVL3-1B   | 896    | 24     | 14/2     | 64       | 4864  | 151674 | no   | Qwen2.5-0.5B-Instruct  |
 * | InternVL3-2B   | 1536   | 28     | 12/2     | 128      | 8960  | 151674 | no   | Qwen2.5-1.5B-Instruct  |
 * | InternVL3-8B   | 3584   | 28     | 28/4     | 128      | 18944 | 151674 | no   | Qwen2.5-7B-Instruct    |
 * | InternVL3_5-1B | 1024   | 28     | 16/8     | 128      | 3072  | 151936 | no   | Qwen3-0.6B             |
 * | InternVL3_5-2B | 2048   | 28     | 16/8     | 128      | 6144  | 151936 | no   | Qwen3-1.7B             |
 * | InternVL3_5-4B | 2560   | 36     | 32/8     | 128      | 9728  | 151936 | no   | Qwen3-4B               |
 * | InternVL3_5-8B | 4096   | 36     | 32/8     | 128      | 12288 | 151936 | no   | Qwen3-8B               |
 *
 * The vocabulary sizes are the InternVL llm_configs' (151674: Qwen2.5's 151665 tokens + InternVL's; 151936:
 * Qwen3's padded table). All use InternViT-300M-448px-V2_5 (24 × 1024). None ties lm_head to the
 * embeddings, although Qwen3-0.6B/1.7B/4B do: the InternVL docs' parameter counts (quick_start, InternVL3:
 * 0.9 / 2.1 / 7.9 B; InternVL3.5: 1.1 / 2.3 / 4.7 / 8.5 B, language part 0.8 / 2.0 / 4.4 / 8.2 B) are only
 * met with a separate head (tied, InternVL3.5-1B would be 0.9 B); test/random-checkpoint.test.ts checks
 * each shape's count against them.
 */
import type { TokenizerLayout } from './random-tokenizer.js';

export interface LlmShape {
  arch: 'qwen2' | 'internlm2' | 'qwen3';
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
  vocab: number;
  rmsEps: number;
  /** rope_theta (default 1e6) and the dynamic rope_scaling factor (default 2). */
  ropeTheta?: number;
  ropeFactor?: number;
  /** Qwen3: per-head width from the config, and whether lm_head is the embedding table. */
  headDim?: number;
  tied?: boolean;
}

export interface VitShape {
  hidden: number;
  layers: number;
  heads: number;
  intermediate: number;
  style: '300M' | '6B';
}

const VIT_300M: VitShape = { hidden: 1024, layers: 24, heads: 16, intermediate: 4096, style: '300M' };
/** InternViT-6B-448px-V2_5: the 48-layer InternViT-6B truncated to 45 layers. */
const VIT_6B: VitShape = { hidden: 3200, layers: 45, heads: 25, intermediate: 12800, style: '6B' };
const QWEN = { arch: 'qwen2', vocab: 151674, rmsEps: 1e-6 } as const;
const INTERNLM = { arch: 'internlm2', vocab: 92553, rmsEps: 1e-5 } as const;
const QWEN3 = { arch: 'qwen3', vocab: 151936, rmsEps: 1e-6, headDim: 128, tied: false } as const;

type Family = typeof QWEN | typeof QWEN3 | typeof INTERNLM;

/** A shape: the ViT, and the LLM of `family` at (hidden, layers, heads, KV heads, FFN) plus `extra` fields. */
function shape(
  vit: VitShape,
  family: Family,
  [hidden, layers, heads, kvHeads, intermediate]: [number, number, number, number, number],
  extra: Partial<LlmShape> = {},
): { vit: VitShape; llm: LlmShape } {
  return { vit, llm: { ...family, hidden, layers, heads, kvHeads, intermediate, ...extra } };
}

/**
 * The published InternVL 2.5 shapes (spec §1.3–1.4). The LLM dims of 26B, 38B and 78B are those of
 * internlm2_5-20b-chat, Qwen2.5-32B-Instruct and Qwen2.5-72B-Instruct (the spec's table; the parameter
 * counts match the published checkpoints'). Not confirmed from the published configs (the spec marks
 * them "verify"): rope_theta 5e7 for 26B (internlm2_5-20b's value as recalled, not read from its
 * config) and rms eps 1e-6 for 38B/78B; random weights do not depend on them.
 */
export const RANDOM_SHAPES: Record<string, { vit: VitShape; llm: LlmShape }> = {
  'InternVL2_5-1B': shape(VIT_300M, QWEN, [896, 24, 14, 2, 4864]),
  'InternVL2_5-2B': shape(VIT_300M, INTERNLM, [2048, 24, 16, 8, 8192]),
  'InternVL2_5-4B': shape(VIT_300M, QWEN, [2048, 36, 16, 2, 11008]),
  'InternVL2_5-8B': shape(VIT_300M, INTERNLM, [4096, 32, 32, 8, 14336]),
  'InternVL2_5-26B': shape(VIT_6B, INTERNLM, [6144, 48, 48, 8, 16384], { ropeTheta: 50000000 }),
  'InternVL2_5-38B': shape(VIT_6B, QWEN, [5120, 64, 40, 8, 27648]),
  'InternVL2_5-78B': shape(VIT_6B, QWEN, [8192, 80, 64, 8, 29568]),
  'InternVL3-1B': shape(VIT_300M, QWEN, [896, 24, 14, 2, 4864]),
  'InternVL3-2B': shape(VIT_300M, QWEN, [1536, 28, 12, 2, 8960]),
  'InternVL3-8B': shape(VIT_300M, QWEN, [3584, 28, 28, 4, 18944]),
  'InternVL3_5-1B': shape(VIT_300M, QWEN3, [1024, 28, 16, 8, 3072]),
  'InternVL3_5-2B': shape(VIT_300M, QWEN3, [2048, 28, 16, 8, 6144]),
  'InternVL3_5-4B': shape(VIT_300M, QWEN3, [2560, 36, 32, 8, 9728]),
  'InternVL3_5-8B': shape(VIT_300M, QWEN3, [4096, 36, 32, 8, 12288]),
};

/** The llm_config fields every family writes the same way. */
function commonLlmConfig(llm: LlmShape): Record<string, unknown> {
  return {
    hidden_size: llm.hidden,
    intermediate_size: llm.intermediate,
    num_hidden_layers: llm.layers,
    num_attention_heads: llm.heads,
    num_key_value_heads: llm.kvHeads,
    rms_norm_eps: llm.rmsEps,
    hidden_act: 'silu',
    vocab_size: llm.vocab,
    torch_dtype: 'bfloat16',
  };
}

/** Qwen3's llm_config as InternVL3.5 writes it (attention_bias false, no rope scaling, 40960 positions). */
function qwen3LlmConfig(llm: LlmShape, specials: TokenizerLayout): Record<string, unknown> {
  return {
    architectures: ['Qwen3ForCausalLM'],
    ...commonLlmConfig(llm),
    model_type: 'qwen3',
    head_dim: llm.headDim,
    attention_bias: false,
    max_position_embeddings: 40960,
    rope_theta: llm.ropeTheta ?? 1000000.0,
    rope_scaling: null,
    use_sliding_window: false,
    sliding_window: null,
    tie_word_embeddings: llm.tied ?? false,
    bos_token_id: specials.pad,
    eos_token_id: specials.eos,
  };
}

export function randomConfigJson(
  vit: VitShape,
  llm: LlmShape,
  specials: TokenizerLayout,
): Record<string, unknown> {
  const llmConfig =
    llm.arch === 'qwen3'
      ? qwen3LlmConfig(llm, specials)
      : llm.arch === 'qwen2'
        ? {
            architectures: ['Qwen2ForCausalLM'],
            ...commonLlmConfig(llm),
            model_type: 'qwen2',
            max_position_embeddings: 32768,
            rope_theta: llm.ropeTheta ?? 1000000.0,
            rope_scaling: { factor: llm.ropeFactor ?? 2.0, rope_type: 'dynamic', type: 'dynamic' },
            sliding_window: 32768,
            use_sliding_window: false,
            tie_word_embeddings: false,
            bos_token_id: specials.pad,
            eos_token_id: specials.eos,
          }
        : {
            architectures: ['InternLM2ForCausalLM'],
            ...commonLlmConfig(llm),
            model_type: 'internlm2',
            max_position_embeddings: 32768,
            rope_theta: llm.ropeTheta ?? 1000000,
            rope_scaling: { type: 'dynamic', factor: llm.ropeFactor ?? 2.0 },
            bias: false,
            tie_word_embeddings: false,
            bos_token_id: specials.bos,
            eos_token_id: specials.eos,
            pad_token_id: specials.pad,
          };
  return {
    architectures: ['InternVLChatModel'],
    model_type: 'internvl_chat',
    template: 'internvl2_5',
    downsample_ratio: 0.5,
    ps_version: 'v2',
    select_layer: -1,
    force_image_size: 448,
    dynamic_image_size: true,
    use_thumbnail: true,
    min_dynamic_patch: 1,
    max_dynamic_patch: 12,
    pad2square: false,
    use_backbone_lora: 0,
    use_llm_lora: 0,
    tie_word_embeddings: false,
    vision_config: {
      architectures: ['InternVisionModel'],
      model_type: 'intern_vit_6b',
      hidden_size: vit.hidden,
      num_hidden_layers: vit.layers,
      num_attention_heads: vit.heads,
      intermediate_size: vit.intermediate,
      image_size: 448,
      patch_size: 14,
      num_channels: 3,
      qkv_bias: vit.style === '300M',
      qk_normalization: vit.style === '6B',
      norm_type: vit.style === '300M' ? 'layer_norm' : 'rms_norm',
      layer_norm_eps: 1e-6,
      hidden_act: 'gelu',
      drop_path_rate: 0.0,
      initializer_factor: vit.style === '300M' ? 1.0 : 0.1,
      initializer_range: 0.02,
    },
    llm_config: llmConfig,
  };
}
