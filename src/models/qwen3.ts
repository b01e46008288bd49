/**
 * Qwen3 decoder (Qwen3ForCausalLM, the LLM of InternVL3.5): the Qwen2 block (qwen2.ts) with an RMSNorm
 * over each head's q and k (q_norm / k_norm [head_dim]) after the projections and before RoPE, no q/k/v
 * bias unless `attention_bias` (then o_proj has one too), `head_dim` from the config, and on the small
 * sizes the output head tied to the token embeddings.
 */
import {
  bool,
  llmConfigSchema,
  type ParsedLlmConfig,
  positiveInt,
  ropeScalingObject,
} from '../config/model-config.js';
import { commonDecoderDims, type DecoderArchitecture, hfRopeScaling } from './decoder.js';
import {
  QWEN_FINAL_NORM,
  QWEN_LORA_TARGETS,
  QWEN2_EMBEDDING,
  type QwenVariant,
  qwenLayer,
  qwenLayerPrefix,
  qwenTensorSpecs,
} from './qwen2.js';

const qwen3ConfigSchema = llmConfigSchema('qwen3', 'Qwen3ForCausalLM', {
  max_position_embeddings: positiveInt().default(40960),
  attention_bias: bool().default(false),
  rope_scaling: ropeScalingObject(),
  use_sliding_window: bool().default(false),
  sliding_window: positiveInt().nullable().optional(),
});
type Qwen3LlmConfig = ParsedLlmConfig<typeof qwen3ConfigSchema>;

const QWEN3: QwenVariant = {
  qkvBias: (dims) => dims.attentionBias,
  outputBias: (dims) => dims.attentionBias,
  qkNorm: true,
};

export const qwen3Architecture: DecoderArchitecture = {
  modelType: 'qwen3',
  hfArchitecture: 'Qwen3ForCausalLM',
  configSchema: qwen3ConfigSchema,
  embeddingName: QWEN2_EMBEDDING,
  lmHeadName: 'language_model.lm_head.weight',
  finalNormName: QWEN_FINAL_NORM,
  toolFormat: 'hermes',
  loraTargets: QWEN_LORA_TARGETS,
  layerPrefix: qwenLayerPrefix,
  dims: (llm) => ({
    arch: 'qwen3',
    ...commonDecoderDims(llm),
    ropeScaling: hfRopeScaling((llm as Qwen3LlmConfig).rope_scaling),
    attentionBias: (llm as Qwen3LlmConfig).attention_bias,
  }),
  tensorSpecs: (dims) => qwenTensorSpecs(qwen3Architecture, QWEN3, dims),
  layer: qwenLayer(QWEN3),
};
