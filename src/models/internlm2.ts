/**
 * InternLM2 decoder (InternVL's modeling_internlm2.py). Same block as Qwen2 with other names:
 * attention_norm → packed wqkv → rope → GQA → wo; ffn_norm → w2(silu(w1 h) ⊙ w3 h); final norm and an
 * untied `output` head. wqkv packs each KV head's query heads, key and value together (`packedQkv`).
 */
import { z } from 'zod';
import {
  bool,
  expected,
  llmConfigSchema,
  type ParsedLlmConfig,
  positiveInt,
  positiveNumber,
} from '../config/model-config.js';
import {
  commonDecoderDims,
  type DecoderArchitecture,
  type DecoderDims,
  type DecoderLayerOps,
  hfRopeScaling,
} from './decoder.js';
import type { TensorSpec } from './weights.js';

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

/** One InternLM2 layer, written against DecoderLayerOps. */
async function internlm2Layer(ops: DecoderLayerOps, i: number): Promise<void> {
  const { dims } = ops;
  const { hiddenSize: d, intermediateSize: ff } = dims;
  const p = layerPrefix(i);
  const h = await ops.norm(`${p}attention_norm.weight`);
  const [q, k, v] = await ops.packedQkv(h, { name: `${p}attention.wqkv`, bias: dims.attentionBias });
  const attn = ops.attention(i, q, k, v);
  ops.addResidual(
    await ops.linear(attn, dims.numHeads * dims.headDim, {
      name: `${p}attention.wo`,
      outFeatures: d,
      bias: dims.attentionBias,
    }),
  );

  const h2 = await ops.norm(`${p}ffn_norm.weight`);
  const [gate, up] = await ops.linears(h2, d, `${p}feed_forward.w1_w3`, [
    { name: `${p}feed_forward.w1`, outFeatures: ff },
    { name: `${p}feed_forward.w3`, outFeatures: ff },
  ]);
  ops.addResidual(
    await ops.linear(ops.swiGlu(gate, up), ff, { name: `${p}feed_forward.w2`, outFeatures: d }),
  );
}

const internlm2ConfigSchema = llmConfigSchema('internlm2', 'InternLM2ForCausalLM', {
  max_position_embeddings: positiveInt().default(2048),
  bias: bool().default(true),
  rope_scaling: z
    .looseObject(
      {
        type: z.enum(['dynamic', 'linear'], { error: expected('"dynamic" or "linear"') }),
        factor: positiveNumber(),
      },
      { error: expected('an object or null') },
    )
    .nullable()
    .default(null),
});
type InternLM2LlmConfig = ParsedLlmConfig<typeof internlm2ConfigSchema>;

export const internlm2Architecture: DecoderArchitecture = {
  modelType: 'internlm2',
  hfArchitecture: 'InternLM2ForCausalLM',
  configSchema: internlm2ConfigSchema,
  embeddingName: INTERNLM2_EMBEDDING,
  lmHeadName: LM_HEAD,
  finalNormName: FINAL_NORM,
  toolFormat: 'internlm2',
  loraTargets: ['attention.wqkv', 'attention.wo', 'feed_forward.w1', 'feed_forward.w2', 'feed_forward.w3'],
  layerPrefix,
  dims: (llm) => ({
    arch: 'internlm2',
    ...commonDecoderDims(llm),
    ropeScaling: hfRopeScaling((llm as InternLM2LlmConfig).rope_scaling),
    attentionBias: (llm as InternLM2LlmConfig).bias,
  }),
  tensorSpecs: internlm2TensorSpecs,
  layer: internlm2Layer,
};
