/**
 * Qwen2 decoder (transformers Qwen2ForCausalLM as used by InternVL 2.5) as an ONNX graph:
 * per layer x += o_proj(attn(rope(q_proj h), rope(k_proj h), v_proj h)) with h = input_layernorm(x),
 * then x += down_proj(silu(gate_proj h) ⊙ up_proj h) with h = post_attention_layernorm(x);
 * final norm and lm_head. With int4 weights q/k/v and gate/up each run as one matmul (fusedLinear).
 * Qwen3 (qwen3.ts) is this block with per-head q/k RMSNorm and no q/k/v bias: `QwenVariant`.
 */
import type { Graph } from '../onnx/graph.js';
import {
  checkpointLayers,
  commonDecoderDims,
  type DecoderArchitecture,
  type DecoderDims,
  type DecoderGraphOptions,
  finishDecoderGraph,
  fusedLinear,
  hfRopeScaling,
  layerOutput,
  outputHeadName,
  perHeadRmsNorm,
  ResidualStream,
  selfAttention,
  startDecoderGraph,
  swiGlu,
} from './decoder.js';
import { checkTensorShapes, type TensorSpec, type WeightSource } from './weights.js';

export const QWEN2_EMBEDDING = 'language_model.model.embed_tokens.weight';
const FINAL_NORM = 'language_model.model.norm.weight';
const LM_HEAD = 'language_model.lm_head.weight';
const layerPrefix = (i: number) => `language_model.model.layers.${i}.`;

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
  specs.push({ name: FINAL_NORM, shape: [d] });
  if (!dims.tieWordEmbeddings) specs.push({ name: arch.lmHeadName, shape: [vocabSize, d] });
  return specs;
}

/** Builds a Qwen-family decoder graph (contract in ./decoder.ts) from checkpoint tensors. */
export async function buildQwenGraph(
  arch: DecoderArchitecture,
  variant: QwenVariant,
  dims: DecoderDims,
  weights: WeightSource,
  options: DecoderGraphOptions = {},
): Promise<Graph> {
  checkTensorShapes(weights, arch.tensorSpecs(dims));
  const { hiddenSize: d, headDim, intermediateSize: ff } = dims;
  const qWidth = dims.numHeads * headDim;
  const kvWidth = dims.numKvHeads * headDim;
  const qkvBias = variant.qkvBias(dims);
  const ctx = startDecoderGraph(`${arch.modelType}-decoder`, dims, options);
  const { load, named, norm, part, proj } = checkpointLayers(ctx, weights);

  const residual = new ResidualStream(ctx, ctx.inputsEmbeds);
  for (let i = 0; i < dims.numLayers; i++) {
    const p = layerPrefix(i);
    const h = await norm(residual, `${p}input_layernorm.weight`);
    let [q, k, v] = fusedLinear(
      ctx,
      h,
      `${p}self_attn.qkv_proj.weight`,
      [
        await part(`${p}self_attn.q_proj`, qWidth, qkvBias),
        await part(`${p}self_attn.k_proj`, kvWidth, qkvBias),
        await part(`${p}self_attn.v_proj`, kvWidth, qkvBias),
      ],
      d,
    );
    if (variant.qkNorm) {
      q = perHeadRmsNorm(
        ctx,
        q,
        dims.numHeads,
        `${p}self_attn.q_norm.weight`,
        await load(`${p}self_attn.q_norm.weight`),
      );
      k = perHeadRmsNorm(
        ctx,
        k,
        dims.numKvHeads,
        `${p}self_attn.k_norm.weight`,
        await load(`${p}self_attn.k_norm.weight`),
      );
    }
    const attn = selfAttention(ctx, i, q, k, v);
    residual.add(await proj(attn, `${p}self_attn.o_proj`, d, qWidth, variant.outputBias(dims)));

    const h2 = await norm(residual, `${p}post_attention_layernorm.weight`);
    const [gate, up] = fusedLinear(
      ctx,
      h2,
      `${p}mlp.gate_up_proj.weight`,
      [await part(`${p}mlp.gate_proj`, ff), await part(`${p}mlp.up_proj`, ff)],
      d,
    );
    residual.add(await proj(swiGlu(ctx, gate, up), `${p}mlp.down_proj`, d, ff));
    layerOutput(ctx, i, residual);
  }
  return finishDecoderGraph(
    ctx,
    residual.value(),
    await named(FINAL_NORM),
    await named(outputHeadName(arch, dims)),
  );
}

const QWEN2: QwenVariant = { qkvBias: () => true, outputBias: () => false, qkNorm: false };

export const qwen2Architecture: DecoderArchitecture = {
  modelType: 'qwen2',
  embeddingName: QWEN2_EMBEDDING,
  lmHeadName: LM_HEAD,
  dims: (llm) => ({
    arch: 'qwen2',
    ...commonDecoderDims(llm),
    ropeScaling: hfRopeScaling(llm.rope_scaling),
    attentionBias: true,
  }),
  tensorSpecs: (dims) => qwenTensorSpecs(qwen2Architecture, QWEN2, dims),
  buildGraph: (dims, weights, options) => buildQwenGraph(qwen2Architecture, QWEN2, dims, weights, options),
};
