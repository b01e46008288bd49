/**
 * InternLM3 decoder (InternLM3ForCausalLM, internlm3-8b-instruct: the LLM of InternVL3-9B), read from its
 * modeling_internlm3.py: the Qwen2 block (qwen2.ts) under the same names (q/k/v/o_proj, gate/up/down_proj,
 * input/post_attention_layernorm, model.embed_tokens, model.norm, lm_head), `head_dim` from the config,
 * q/k/v biases when `qkv_bias`, and dynamic-NTK or linear `rope_scaling` as InternLM2's. `bias` puts a
 * bias on o_proj and the MLP projections; the released model has none, and `bias: true` is refused.
 */
import {
  bool,
  llmConfigSchema,
  type ParsedLlmConfig,
  positiveInt,
  positiveNumber,
  ropeScalingObject,
} from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { commonDecoderDims, type DecoderArchitecture, hfRopeScaling } from './decoder.js';
import { type QwenVariant, qwen2Architecture, qwenLayer, qwenTensorSpecs } from './qwen2.js';

const internlm3ConfigSchema = llmConfigSchema('internlm3', 'InternLM3ForCausalLM', {
  max_position_embeddings: positiveInt().default(32768),
  rms_norm_eps: positiveNumber().default(1e-6),
  qkv_bias: bool().default(false),
  bias: bool().default(false),
  rope_scaling: ropeScalingObject(),
});
type InternLM3LlmConfig = ParsedLlmConfig<typeof internlm3ConfigSchema>;

const INTERNLM3: QwenVariant = {
  qkvBias: (dims) => dims.attentionBias,
  outputBias: () => false,
  qkNorm: false,
};

export const internlm3Architecture: DecoderArchitecture = {
  // The Qwen2 names: embeddings, head, final norm, layer prefix, LoRA targets.
  ...qwen2Architecture,
  modelType: 'internlm3',
  hfArchitecture: 'InternLM3ForCausalLM',
  configSchema: internlm3ConfigSchema,
  // Tool calls taken to be InternLM2.5's (<|action_start|><|plugin|> … <|action_end|>); not checked against
  // internlm3-8b-instruct's chat template.
  toolFormat: 'internlm2',
  dims: (config) => {
    const llm = config as InternLM3LlmConfig;
    if (llm.bias) {
      throw new InternVLError(
        'UNSUPPORTED',
        'llm_config.bias: true (biases on o_proj and the MLP projections) is not supported for InternLM3',
      );
    }
    return {
      arch: 'internlm3',
      ...commonDecoderDims(llm),
      ropeScaling: hfRopeScaling(llm.rope_scaling),
      attentionBias: llm.qkv_bias,
    };
  },
  tensorSpecs: (dims) => qwenTensorSpecs(internlm3Architecture, INTERNLM3, dims),
  layer: qwenLayer(INTERNLM3),
};
