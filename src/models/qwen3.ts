/**
 * Qwen3 decoder (Qwen3ForCausalLM, the LLM of InternVL3.5): the Qwen2 block (qwen2.ts) with an RMSNorm
 * over each head's q and k (q_norm / k_norm [head_dim]) after the projections and before RoPE, no q/k/v
 * bias unless `attention_bias` (then o_proj has one too), `head_dim` from the config, and on the small
 * sizes the output head tied to the token embeddings.
 */
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

const QWEN3: QwenVariant = {
  qkvBias: (dims) => dims.attentionBias,
  outputBias: (dims) => dims.attentionBias,
  qkNorm: true,
};

export const qwen3Architecture: DecoderArchitecture = {
  modelType: 'qwen3',
  embeddingName: QWEN2_EMBEDDING,
  lmHeadName: 'language_model.lm_head.weight',
  finalNormName: QWEN_FINAL_NORM,
  toolFormat: 'hermes',
  loraTargets: QWEN_LORA_TARGETS,
  layerPrefix: qwenLayerPrefix,
  dims: (llm) => ({
    arch: 'qwen3',
    ...commonDecoderDims(llm),
    ropeScaling: hfRopeScaling(llm.rope_scaling),
    attentionBias: 'attention_bias' in llm && llm.attention_bias,
  }),
  tensorSpecs: (dims) => qwenTensorSpecs(qwen3Architecture, QWEN3, dims),
  layer: qwenLayer(QWEN3),
};
