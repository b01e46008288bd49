/**
 * Qwen2 decoder (transformers Qwen2ForCausalLM as used by InternVL 2.5) as an ONNX graph:
 * per layer x += o_proj(attn(rope(q_proj h), rope(k_proj h), v_proj h)) with h = input_layernorm(x),
 * then x += down_proj(silu(gate_proj h) ⊙ up_proj h) with h = post_attention_layernorm(x);
 * final norm and an untied lm_head. With int4 weights q/k/v and gate/up each run as one matmul (fusedLinear).
 */
import type { Graph } from '../onnx/graph.js';
import {
  checkpointLayers,
  type DecoderDims,
  type DecoderGraphOptions,
  finishDecoderGraph,
  fusedLinear,
  layerOutput,
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

/** Every tensor the Qwen2 decoder reads, with its checkpoint shape. */
export function qwen2TensorSpecs(dims: DecoderDims): TensorSpec[] {
  const { hiddenSize: d, headDim, numHeads, numKvHeads, intermediateSize: ff, vocabSize } = dims;
  const qWidth = numHeads * headDim;
  const kvWidth = numKvHeads * headDim;
  const specs: TensorSpec[] = [{ name: QWEN2_EMBEDDING, shape: [vocabSize, d] }];
  for (let i = 0; i < dims.numLayers; i++) {
    const p = layerPrefix(i);
    specs.push(
      { name: `${p}input_layernorm.weight`, shape: [d] },
      { name: `${p}self_attn.q_proj.weight`, shape: [qWidth, d] },
      { name: `${p}self_attn.q_proj.bias`, shape: [qWidth] },
      { name: `${p}self_attn.k_proj.weight`, shape: [kvWidth, d] },
      { name: `${p}self_attn.k_proj.bias`, shape: [kvWidth] },
      { name: `${p}self_attn.v_proj.weight`, shape: [kvWidth, d] },
      { name: `${p}self_attn.v_proj.bias`, shape: [kvWidth] },
      { name: `${p}self_attn.o_proj.weight`, shape: [d, qWidth] },
      { name: `${p}post_attention_layernorm.weight`, shape: [d] },
      { name: `${p}mlp.gate_proj.weight`, shape: [ff, d] },
      { name: `${p}mlp.up_proj.weight`, shape: [ff, d] },
      { name: `${p}mlp.down_proj.weight`, shape: [d, ff] },
    );
  }
  specs.push({ name: FINAL_NORM, shape: [d] }, { name: LM_HEAD, shape: [vocabSize, d] });
  return specs;
}

/** Builds the decoder graph (contract in ./decoder.ts) from checkpoint tensors. */
export async function buildQwen2Graph(
  dims: DecoderDims,
  weights: WeightSource,
  options: DecoderGraphOptions = {},
): Promise<Graph> {
  checkTensorShapes(weights, qwen2TensorSpecs(dims));
  const { hiddenSize: d, headDim, intermediateSize: ff } = dims;
  const qWidth = dims.numHeads * headDim;
  const kvWidth = dims.numKvHeads * headDim;
  const ctx = startDecoderGraph('qwen2-decoder', dims, options);
  const { named, norm, part, proj } = checkpointLayers(ctx, weights);

  const residual = new ResidualStream(ctx, ctx.inputsEmbeds);
  for (let i = 0; i < dims.numLayers; i++) {
    const p = layerPrefix(i);
    const h = await norm(residual, `${p}input_layernorm.weight`);
    const [q, k, v] = fusedLinear(
      ctx,
      h,
      `${p}self_attn.qkv_proj.weight`,
      [
        await part(`${p}self_attn.q_proj`, qWidth, true),
        await part(`${p}self_attn.k_proj`, kvWidth, true),
        await part(`${p}self_attn.v_proj`, kvWidth, true),
      ],
      d,
    );
    const attn = selfAttention(ctx, i, q, k, v);
    residual.add(await proj(attn, `${p}self_attn.o_proj`, d, qWidth));

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
  return finishDecoderGraph(ctx, residual.value(), await named(FINAL_NORM), await named(LM_HEAD));
}
