/**
 * Qwen2 decoder (transformers Qwen2ForCausalLM as used by InternVL 2.5):
 * per layer x += o_proj(attn(rope(q_proj h), rope(k_proj h), v_proj h)) with h = input_layernorm(x),
 * then x += down_proj(silu(gate_proj h) ⊙ up_proj h) with h = post_attention_layernorm(x);
 * final norm and lm_head. The layer is written once (qwenLayer) for inference and training.
 * Qwen3 (qwen3.ts) is this block with per-head q/k RMSNorm and no q/k/v bias: `QwenVariant`.
 */
import {
  bool,
  llmConfigSchema,
  type ParsedLlmConfig,
  positiveInt,
  ropeScalingObject,
} from '../config/model-config.js';
import { commonDecoderDims, type DecoderArchitecture, type DecoderDims, hfRopeScaling } from './decoder.js';
import type { TensorSpec } from './weights.js';

export const QWEN2_EMBEDDING = 'language_model.model.embed_tokens.weight';
export const QWEN_FINAL_NORM = 'language_model.model.norm.weight';
const LM_HEAD = 'language_model.lm_head.weight';
export const qwenLayerPrefix = (i: number) => `language_model.model.layers.${i}.`;
const layerPrefix = qwenLayerPrefix;
/** PEFT targets of the official wrap_llm_lora for Qwen2 / LLaMA-style layers. */
export const QWEN_LORA_TARGETS = [
  'self_attn.q_proj',
  'self_attn.k_proj',
  'self_attn.v_proj',
  'self_attn.o_proj',
  'mlp.gate_proj',
  'mlp.down_proj',
  'mlp.up_proj',
];

/** What a member of the Qwen family changes in the block. */
export interface QwenVariant {
  /** q/k/v projections have biases. */
  qkvBias: (dims: DecoderDims) => boolean;
  /** o_proj has a bias. */
  outputBias: (dims: DecoderDims) => boolean;
  /** q_norm / k_norm: RMSNorm over each head's q and k before RoPE. */
  qkNorm: boolean;
}

/** Every tensor a Qwen-family decoder reads, with its checkpoint shape. */
export function qwenTensorSpecs(
  arch: DecoderArchitecture,
  variant: QwenVariant,
  dims: DecoderDims,
): TensorSpec[] {
  const { hiddenSize: d, headDim, numHeads, numKvHeads, intermediateSize: ff, vocabSize } = dims;
  const qWidth = numHeads * headDim;
  const kvWidth = numKvHeads * headDim;
  const qkvBias = variant.qkvBias(dims);
  const specs: TensorSpec[] = [{ name: QWEN2_EMBEDDING, shape: [vocabSize, d] }];
  for (let i = 0; i < dims.numLayers; i++) {
    const p = `${layerPrefix(i)}self_attn.`;
    specs.push({ name: `${layerPrefix(i)}input_layernorm.weight`, shape: [d] });
    for (const [proj, width] of [
      ['q', qWidth],
      ['k', kvWidth],
      ['v', kvWidth],
    ] as const) {
      specs.push({ name: `${p}${proj}_proj.weight`, shape: [width, d] });
      if (qkvBias) specs.push({ name: `${p}${proj}_proj.bias`, shape: [width] });
    }
    if (variant.qkNorm) {
      specs.push(
        { name: `${p}q_norm.weight`, shape: [headDim] },
        { name: `${p}k_norm.weight`, shape: [headDim] },
      );
    }
    specs.push({ name: `${p}o_proj.weight`, shape: [d, qWidth] });
    if (variant.outputBias(dims)) specs.push({ name: `${p}o_proj.bias`, shape: [d] });
    const m = `${layerPrefix(i)}mlp.`;
    specs.push(
      { name: `${layerPrefix(i)}post_attention_layernorm.weight`, shape: [d] },
      { name: `${m}gate_proj.weight`, shape: [ff, d] },
      { name: `${m}up_proj.weight`, shape: [ff, d] },
      { name: `${m}down_proj.weight`, shape: [d, ff] },
    );
  }
  specs.push({ name: arch.finalNormName, shape: [d] });
  if (!dims.tieWordEmbeddings) specs.push({ name: arch.lmHeadName, shape: [vocabSize, d] });
  return specs;
}

/** One Qwen-family layer (module comment), written against DecoderLayerOps. */
export function qwenLayer(variant: QwenVariant): DecoderArchitecture['layer'] {
  return async (ops, i) => {
    const { dims } = ops;
    const { hiddenSize: d, headDim, intermediateSize: ff } = dims;
    const qWidth = dims.numHeads * headDim;
    const kvWidth = dims.numKvHeads * headDim;
    const bias = variant.qkvBias(dims);
    const p = layerPrefix(i);
    const h = await ops.norm(`${p}input_layernorm.weight`);
    let [q, k, v] = await ops.linears(h, d, `${p}self_attn.qkv_proj`, [
      { name: `${p}self_attn.q_proj`, outFeatures: qWidth, bias },
      { name: `${p}self_attn.k_proj`, outFeatures: kvWidth, bias },
      { name: `${p}self_attn.v_proj`, outFeatures: kvWidth, bias },
    ]);
    if (variant.qkNorm) {
      q = await ops.headNorm(q, dims.numHeads, `${p}self_attn.q_norm.weight`);
      k = await ops.headNorm(k, dims.numKvHeads, `${p}self_attn.k_norm.weight`);
    }
    const attn = ops.attention(i, q, k, v);
    ops.addResidual(
      await ops.linear(attn, qWidth, {
        name: `${p}self_attn.o_proj`,
        outFeatures: d,
        bias: variant.outputBias(dims),
      }),
    );

    const h2 = await ops.norm(`${p}post_attention_layernorm.weight`);
    const [gate, up] = await ops.linears(h2, d, `${p}mlp.gate_up_proj`, [
      { name: `${p}mlp.gate_proj`, outFeatures: ff },
      { name: `${p}mlp.up_proj`, outFeatures: ff },
    ]);
    ops.addResidual(
      await ops.linear(ops.swiGlu(gate, up), ff, { name: `${p}mlp.down_proj`, outFeatures: d }),
    );
  };
}

const qwen2ConfigSchema = llmConfigSchema('qwen2', 'Qwen2ForCausalLM', {
  max_position_embeddings: positiveInt().default(32768),
  rope_scaling: ropeScalingObject(),
  use_sliding_window: bool().default(false),
  sliding_window: positiveInt().nullable().optional(),
});

const QWEN2: QwenVariant = { qkvBias: () => true, outputBias: () => false, qkNorm: false };

export const qwen2Architecture: DecoderArchitecture = {
  modelType: 'qwen2',
  hfArchitecture: 'Qwen2ForCausalLM',
  configSchema: qwen2ConfigSchema,
  embeddingName: QWEN2_EMBEDDING,
  lmHeadName: LM_HEAD,
  finalNormName: QWEN_FINAL_NORM,
  toolFormat: 'hermes',
  loraTargets: QWEN_LORA_TARGETS,
  layerPrefix: qwenLayerPrefix,
  dims: (llm) => ({
    arch: 'qwen2',
    ...commonDecoderDims(llm),
    ropeScaling: hfRopeScaling((llm as ParsedLlmConfig<typeof qwen2ConfigSchema>).rope_scaling),
    attentionBias: true,
  }),
  tensorSpecs: (dims) => qwenTensorSpecs(qwen2Architecture, QWEN2, dims),
  layer: qwenLayer(QWEN2),
};
