/** The top level of an InternVL chat config.json as the OpenGVLab releases write it (LLM and ViT added per test). */
export const topLevel = {
  architectures: ['InternVLChatModel'],
  auto_map: { AutoConfig: 'configuration_internvl_chat.InternVLChatConfig' },
  downsample_ratio: 0.5,
  dynamic_image_size: true,
  force_image_size: 448,
  max_dynamic_patch: 12,
  min_dynamic_patch: 1,
  model_type: 'internvl_chat',
  ps_version: 'v2',
  select_layer: -1,
  template: 'internvl2_5',
  torch_dtype: 'bfloat16',
  use_backbone_lora: 0,
  use_llm_lora: 0,
  use_thumbnail: true,
};

/** InternViT-300M-448px-V2_5 as InternVL3 configs write it, MoE fields included (off). */
export const vit300mV25 = {
  architectures: ['InternVisionModel'],
  attention_dropout: 0.0,
  capacity_factor: 1.2,
  drop_path_rate: 0.1,
  dropout: 0.0,
  eval_capacity_factor: 1.4,
  hidden_act: 'gelu',
  hidden_size: 1024,
  image_size: 448,
  initializer_factor: 0.1,
  initializer_range: 1e-10,
  intermediate_size: 4096,
  laux_allreduce: 'all_nodes',
  layer_norm_eps: 1e-6,
  model_type: 'intern_vit_6b',
  moe_coeff_ratio: 0.5,
  moe_intermediate_size: 768,
  moe_output_scale: 4.0,
  noise_slope_bound: 0.0,
  norm_type: 'layer_norm',
  num_attention_heads: 16,
  num_channels: 3,
  num_experts: 8,
  num_hidden_layers: 24,
  num_routed_experts: 4,
  num_shared_experts: 4,
  patch_size: 14,
  qk_normalization: false,
  qkv_bias: true,
  shared_expert_intermediate_size: 3072,
  torch_dtype: 'bfloat16',
  use_flash_attn: true,
  use_moe: false,
  use_residual: true,
  use_rts: false,
};

export const releaseTop = { ...topLevel, vision_config: vit300mV25 };

export interface LlmShape {
  hidden: number;
  ff: number;
  layers: number;
  heads: number;
  kv: number;
  headDim?: number;
  tied: boolean;
}

/** The llm_config fields every Qwen-family release writes the same way (transformers ≥ 4.5x: layer_types). */
export function qwenFamily(name: string, s: LlmShape) {
  return {
    _name_or_path: name,
    attention_dropout: 0.0,
    bos_token_id: 151643,
    eos_token_id: 151645,
    hidden_act: 'silu',
    hidden_size: s.hidden,
    intermediate_size: s.ff,
    layer_types: Array(s.layers).fill('full_attention'),
    num_attention_heads: s.heads,
    num_hidden_layers: s.layers,
    num_key_value_heads: s.kv,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    sliding_window: null,
    tie_word_embeddings: s.tied,
    torch_dtype: 'bfloat16',
    use_cache: true,
    use_sliding_window: false,
  };
}

/** A Qwen2.5 llm_config (InternVL3): no MoE (`moe_config: null`). */
export function qwen25(name: string, s: LlmShape) {
  return {
    ...releaseTop,
    hidden_size: s.hidden,
    llm_config: {
      ...qwenFamily(name, s),
      architectures: ['Qwen2ForCausalLM'],
      max_position_embeddings: 32768,
      max_window_layers: 70,
      model_type: 'qwen2',
      moe_config: null,
      rope_scaling: { factor: 2.0, rope_type: 'dynamic', type: 'dynamic' },
      vocab_size: 151674,
    },
  };
}

/** A Qwen3 llm_config (InternVL3.5 dense). */
export function qwen3(name: string, s: LlmShape) {
  return {
    ...releaseTop,
    hidden_size: s.hidden,
    llm_config: {
      ...qwenFamily(name, s),
      architectures: ['Qwen3ForCausalLM'],
      attention_bias: false,
      head_dim: s.headDim,
      max_position_embeddings: 40960,
      max_window_layers: s.layers,
      model_type: 'qwen3',
      rope_scaling: null,
      vocab_size: 151936,
    },
  };
}
