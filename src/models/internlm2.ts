/**
 * InternLM2 decoder (InternVL's modeling_internlm2.py) as an ONNX graph. Same block as Qwen2 with other
 * names: attention_norm → packed wqkv → rope → GQA → wo; ffn_norm → w2(silu(w1 h) ⊙ w3 h); final norm
 * and an untied `output` head. The packed wqkv rows are regrouped as [q | k | v] at build time (one matmul,
 * split after, with int4 weights), and w1 / w3 likewise.
 */
import type { Graph } from '../onnx/graph.js';
import type { Int4Blocks } from '../onnx/quantize.js';
import {
  checkpointLayers,
  commonDecoderDims,
  type DecoderArchitecture,
  type DecoderDims,
  type DecoderGraphOptions,
  finishDecoderGraph,
  fusedLinear,
  hfRopeScaling,
  type LinearWeight,
  layerOutput,
  outputHeadName,
  ResidualStream,
  selfAttention,
  startDecoderGraph,
  swiGlu,
} from './decoder.js';
import { checkTensorShapes, type TensorSpec, type WeightSource } from './weights.js';

export const INTERNLM2_EMBEDDING = 'language_model.model.tok_embeddings.weight';
const FINAL_NORM = 'language_model.model.norm.weight';
const LM_HEAD = 'language_model.output.weight';
const layerPrefix = (i: number) => `language_model.model.layers.${i}.`;

/** Every tensor the InternLM2 decoder reads, with its checkpoint shape. */
function internlm2TensorSpecs(dims: DecoderDims): TensorSpec[] {
  const { hiddenSize: d, headDim, numHeads, numKvHeads, intermediateSize: ff, vocabSize } = dims;
  const qkvWidth = (numHeads + 2 * numKvHeads) * headDim;
  const specs: TensorSpec[] = [{ name: INTERNLM2_EMBEDDING, shape: [vocabSize, d] }];
  for (let i = 0; i < dims.numLayers; i++) {
    const p = layerPrefix(i);
    specs.push(
      { name: `${p}attention_norm.weight`, shape: [d] },
      { name: `${p}attention.wqkv.weight`, shape: [qkvWidth, d] },
      { name: `${p}attention.wo.weight`, shape: [d, numHeads * headDim] },
      { name: `${p}ffn_norm.weight`, shape: [d] },
      { name: `${p}feed_forward.w1.weight`, shape: [ff, d] },
      { name: `${p}feed_forward.w3.weight`, shape: [ff, d] },
      { name: `${p}feed_forward.w2.weight`, shape: [d, ff] },
    );
    if (dims.attentionBias) {
      specs.push(
        { name: `${p}attention.wqkv.bias`, shape: [qkvWidth] },
        { name: `${p}attention.wo.bias`, shape: [d] },
      );
    }
  }
  specs.push({ name: FINAL_NORM, shape: [d] });
  if (!dims.tieWordEmbeddings) specs.push({ name: LM_HEAD, shape: [vocabSize, d] });
  return specs;
}

export interface SplitQkv<T = Float32Array> {
  q: T;
  k: T;
  v: T;
}

/**
 * Splits packed wqkv rows (weight [(H + 2·kvH)·hd, cols], or a bias with cols = 1) into q, k, v.
 * For each KV head g the packed rows are [q heads g·n_rep … (g+1)·n_rep − 1 | k head g | v head g],
 * each head_dim rows (einops `(h gs d)` with gs = n_rep + 2).
 */
export function splitPackedQkv<T extends Float32Array | Uint8Array>(
  packed: T,
  dims: DecoderDims,
  cols: number,
): SplitQkv<T> {
  const { numHeads, numKvHeads, headDim } = dims;
  const nRep = numHeads / numKvHeads;
  const headSize = headDim * cols;
  const make = (heads: number) => packed.slice(0, heads * headSize) as T;
  const q = make(numHeads);
  const k = make(numKvHeads);
  const v = make(numKvHeads);
  for (let g = 0; g < numKvHeads; g++) {
    const block = g * (nRep + 2) * headSize;
    for (let r = 0; r < nRep; r++) {
      const src = block + r * headSize;
      q.set(packed.subarray(src, src + headSize), (g * nRep + r) * headSize);
    }
    const kSrc = block + nRep * headSize;
    k.set(packed.subarray(kSrc, kSrc + headSize), g * headSize);
    v.set(packed.subarray(kSrc + headSize, kSrc + 2 * headSize), g * headSize);
  }
  return { q, k, v };
}

/**
 * The wqkv weight split into q, k, v rows. 4-bit blocks (AWQ and GPTQ checkpoints quantise wqkv as one
 * linear) split the same way: each output row's packed values, scales and zero points are its own.
 */
function splitQkvWeight(weight: LinearWeight, dims: DecoderDims): SplitQkv<LinearWeight> {
  if (weight instanceof Float32Array) return splitPackedQkv(weight, dims, dims.hiddenSize);
  const { kBlocks, blockSize } = weight;
  const packed = splitPackedQkv(weight.packed, dims, kBlocks * (blockSize / 2));
  const scales = splitPackedQkv(weight.scales, dims, kBlocks);
  const zeroPoints = splitPackedQkv(weight.zeroPoints, dims, Math.ceil(kBlocks / 2));
  const rows = (which: 'q' | 'k' | 'v'): Int4Blocks => ({
    ...weight,
    n: scales[which].length / kBlocks,
    packed: packed[which],
    scales: scales[which],
    zeroPoints: zeroPoints[which],
  });
  return { q: rows('q'), k: rows('k'), v: rows('v') };
}

/** Builds the decoder graph (contract in ./decoder.ts) from checkpoint tensors. */
async function buildInternLM2Graph(
  dims: DecoderDims,
  weights: WeightSource,
  options: DecoderGraphOptions = {},
): Promise<Graph> {
  checkTensorShapes(weights, internlm2TensorSpecs(dims));
  const { hiddenSize: d, headDim, intermediateSize: ff } = dims;
  const qWidth = dims.numHeads * headDim;
  const kvWidth = dims.numKvHeads * headDim;
  const ctx = startDecoderGraph('internlm2-decoder', dims, options);
  const { load, loadLinear, named, norm, part, proj } = checkpointLayers(ctx, weights);

  const residual = new ResidualStream(ctx, ctx.inputsEmbeds);
  for (let i = 0; i < dims.numLayers; i++) {
    const p = layerPrefix(i);
    const h = await norm(residual, `${p}attention_norm.weight`);
    const wqkv = `${p}attention.wqkv`;
    const w = splitQkvWeight(await loadLinear(`${wqkv}.weight`), dims);
    const b = dims.attentionBias ? splitPackedQkv(await load(`${wqkv}.bias`), dims, 1) : undefined;
    const [q, k, v] = fusedLinear(
      ctx,
      h,
      `${wqkv}.weight:qkv`,
      [
        {
          name: `${wqkv}.weight:q`,
          weight: w.q,
          bias: b && { name: `${wqkv}.bias:q`, data: b.q },
          outFeatures: qWidth,
        },
        {
          name: `${wqkv}.weight:k`,
          weight: w.k,
          bias: b && { name: `${wqkv}.bias:k`, data: b.k },
          outFeatures: kvWidth,
        },
        {
          name: `${wqkv}.weight:v`,
          weight: w.v,
          bias: b && { name: `${wqkv}.bias:v`, data: b.v },
          outFeatures: kvWidth,
        },
      ],
      d,
    );
    const attn = selfAttention(ctx, i, q, k, v);
    residual.add(await proj(attn, `${p}attention.wo`, d, qWidth, dims.attentionBias));

    const h2 = await norm(residual, `${p}ffn_norm.weight`);
    const [gate, up] = fusedLinear(
      ctx,
      h2,
      `${p}feed_forward.w1_w3.weight`,
      [await part(`${p}feed_forward.w1`, ff), await part(`${p}feed_forward.w3`, ff)],
      d,
    );
    residual.add(await proj(swiGlu(ctx, gate, up), `${p}feed_forward.w2`, d, ff));
    layerOutput(ctx, i, residual);
  }
  return finishDecoderGraph(
    ctx,
    residual.value(),
    await named(FINAL_NORM),
    await named(outputHeadName(internlm2Architecture, dims)),
  );
}

export const internlm2Architecture: DecoderArchitecture = {
  modelType: 'internlm2',
  embeddingName: INTERNLM2_EMBEDDING,
  lmHeadName: LM_HEAD,
  dims: (llm) => ({
    arch: 'internlm2',
    ...commonDecoderDims(llm),
    ropeScaling: hfRopeScaling(llm.rope_scaling),
    attentionBias: 'bias' in llm && llm.bias,
  }),
  tensorSpecs: internlm2TensorSpecs,
  buildGraph: buildInternLM2Graph,
};
