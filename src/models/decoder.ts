/**
 * Pieces shared by the Qwen2 and InternLM2 decoder graphs: the dimensions, the graph's inputs and
 * outputs, RMSNorm, linear layers, rotary + GroupQueryAttention over engine-owned KV buffers, SwiGLU,
 * and the final norm + lm_head over selected rows.
 *
 * Graph contract (B = batch, S = chunk length, C = KV capacity, N = logits rows):
 *   inputs  inputs_embeds [B,S,D]; rope_cos/rope_sin [P, hd/2] and rope_index int64 [B,S] (row of the
 *           tables per token); seqlens_k int32 [B] (= past + S − 1); total_sequence_length int32 [];
 *           past_key.i/past_value.i [B,kvH,C,hd] (only the first `past` slots valid); logits_rows int64 [N]
 *           (rows of the flattened [B·S, D] hidden states to project).
 *   outputs logits [N,V]; key.i/value.i [B,S,kvH·hd] (this chunk's rotated keys and values, for the
 *           engine to append to its buffers); with hiddenStates: hidden.i [B,S,D], final_norm [N,D].
 */
import type { LlmConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { type Graph, GraphBuilder, MS_DOMAIN } from '../onnx/graph.js';
import { DEFAULT_BLOCK_SIZE, type LinearQuant } from '../onnx/quantize.js';
import { type LinearPart, type LinearWeight, linear } from './linear-layers.js';
import type { RopeScaling } from './rope.js';
import type { TensorSpec, WeightSource } from './weights.js';

export { fusedLinear, type LinearPart, type LinearWeight, linear } from './linear-layers.js';
export type { RopeScaling } from './rope.js';

export interface DecoderDims {
  /** The architecture's `model_type` (models/registry.ts). */
  arch: string;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  maxPositionEmbeddings: number;
  /** Qwen2: q/k/v biases (always true). InternLM2: `bias` (wqkv and wo). Qwen3: `attention_bias`. */
  attentionBias: boolean;
  /** The output head is the token-embedding table (no separate lm_head tensor). Default false. */
  tieWordEmbeddings?: boolean;
}

/** The fields every architecture reads the same way from its llm_config. */
export function commonDecoderDims(
  llm: LlmConfig,
): Omit<DecoderDims, 'arch' | 'ropeScaling' | 'attentionBias'> {
  return {
    hiddenSize: llm.hidden_size,
    numLayers: llm.num_hidden_layers,
    numHeads: llm.num_attention_heads,
    numKvHeads: llm.num_key_value_heads,
    headDim: llm.head_dim,
    intermediateSize: llm.intermediate_size,
    vocabSize: llm.vocab_size,
    rmsNormEps: llm.rms_norm_eps,
    ropeTheta: llm.rope_theta,
    maxPositionEmbeddings: llm.max_position_embeddings,
    tieWordEmbeddings: llm.tie_word_embeddings,
  };
}

/** transformers' `rope_scaling` ({rope_type | type, factor}): default, dynamic NTK or linear. */
export function hfRopeScaling(
  scaling: { type?: string; rope_type?: string; factor?: number } | null,
): RopeScaling | null {
  const kind = scaling?.rope_type ?? scaling?.type;
  if (!scaling || kind === undefined || kind === 'default') return null;
  if (kind !== 'dynamic' && kind !== 'linear') {
    throw new InternVLError(
      'UNSUPPORTED',
      `llm_config.rope_scaling: type ${JSON.stringify(kind)} is not supported (supported: dynamic, linear)`,
    );
  }
  if (scaling.factor === undefined) {
    throw new InternVLError('BAD_CONFIG', `llm_config.rope_scaling: ${kind} scaling needs a factor`);
  }
  return { type: kind, factor: scaling.factor };
}

/**
 * One LLM architecture: how its config maps to DecoderDims, which checkpoint tensors it reads and how
 * its decoder graph is built. models/registry.ts lists them; nothing else switches on the architecture.
 */
export interface DecoderArchitecture {
  /** `llm_config.model_type`, also DecoderDims.arch. */
  modelType: string;
  /** The token-embedding table's checkpoint name. */
  embeddingName: string;
  /** The output head's checkpoint name when the embeddings are not tied. */
  lmHeadName: string;
  dims(llm: LlmConfig): DecoderDims;
  /** Every tensor the decoder reads, with its checkpoint shape (embeddings and head included). */
  tensorSpecs(dims: DecoderDims): TensorSpec[];
  /** Builds the decoder graph (contract above) from checkpoint tensors. */
  buildGraph(dims: DecoderDims, weights: WeightSource, options?: DecoderGraphOptions): Promise<Graph>;
}

/** The head the graph multiplies by: the embedding table when the config ties them. */
export function outputHeadName(arch: DecoderArchitecture, dims: DecoderDims): string {
  return dims.tieWordEmbeddings ? arch.embeddingName : arch.lmHeadName;
}

/** Names of the graph's inputs and outputs (see the module comment). */
export const DECODER_IO = {
  inputsEmbeds: 'inputs_embeds',
  ropeCos: 'rope_cos',
  ropeSin: 'rope_sin',
  ropeIndex: 'rope_index',
  seqlensK: 'seqlens_k',
  totalSequenceLength: 'total_sequence_length',
  logitsRows: 'logits_rows',
  logits: 'logits',
  /** argmax of each logits row (int64; ties → lowest id), so greedy decoding need not fetch the logits. */
  nextToken: 'next_token',
  finalNorm: 'final_norm',
  pastKey: (layer: number) => `past_key.${layer}`,
  pastValue: (layer: number) => `past_value.${layer}`,
  key: (layer: number) => `key.${layer}`,
  value: (layer: number) => `value.${layer}`,
  hidden: (layer: number) => `hidden.${layer}`,
} as const;

export interface DecoderGraphOptions {
  /** Also output every layer's hidden states and the final norm (for localising errors). */
  hiddenStates?: boolean;
  /** Storage of the layers' linear weights (default fp32). */
  linearQuant?: LinearQuant;
  /** Storage of lm_head (default: as linearQuant). */
  lmHeadQuant?: LinearQuant;
}

/** The graph under construction plus the values every layer reads. */
export interface DecoderGraphContext {
  g: GraphBuilder;
  dims: DecoderDims;
  options: DecoderGraphOptions;
  /** [B,S,D] */
  inputsEmbeds: string;
  ropeCos: string;
  ropeSin: string;
  ropeIndex: string;
  seqlensK: string;
  totalSequenceLength: string;
  logitsRows: string;
}

export function startDecoderGraph(
  name: string,
  dims: DecoderDims,
  options: DecoderGraphOptions,
): DecoderGraphContext {
  const g = new GraphBuilder(name);
  const half = dims.headDim / 2;
  return {
    g,
    dims,
    options,
    inputsEmbeds: g.input(DECODER_IO.inputsEmbeds, 'float32', ['batch', 'seq', dims.hiddenSize]),
    ropeCos: g.input(DECODER_IO.ropeCos, 'float32', ['rope_rows', half]),
    ropeSin: g.input(DECODER_IO.ropeSin, 'float32', ['rope_rows', half]),
    ropeIndex: g.input(DECODER_IO.ropeIndex, 'int64', ['batch', 'seq']),
    seqlensK: g.input(DECODER_IO.seqlensK, 'int32', ['batch']),
    totalSequenceLength: g.input(DECODER_IO.totalSequenceLength, 'int32', []),
    logitsRows: g.input(DECODER_IO.logitsRows, 'int64', ['rows']),
  };
}

/** RMSNorm in fp32 over the last axis: x / sqrt(mean(x²) + eps) · w. */
export function rmsNorm(ctx: DecoderGraphContext, x: string, name: string, weight: Float32Array): string {
  const { g, dims } = ctx;
  const w = g.initializer(name, 'float32', [weight.length], weight);
  return g.op('SimplifiedLayerNormalization', [x, w], {
    axis: { int: -1 },
    epsilon: dims.rmsNormEps,
    stash_type: { int: 1 },
  });
}

/** RMSNorm over each head's vector of x [B,S,heads·hd] with one weight [hd] (Qwen3's q_norm/k_norm). */
export function perHeadRmsNorm(
  ctx: DecoderGraphContext,
  x: string,
  heads: number,
  name: string,
  weight: Float32Array,
): string {
  const { g, dims } = ctx;
  const perHead = g.reshape(x, [0, 0, heads, dims.headDim]);
  return g.reshape(rmsNorm(ctx, perHead, name, weight), [0, 0, heads * dims.headDim]);
}

/**
 * The residual stream of a decoder: `add(delta)` keeps x + delta pending, and the next `norm` computes
 * the sum and its RMSNorm in one SkipSimplifiedLayerNormalization kernel instead of an Add and a norm.
 */
export class ResidualStream {
  #x: string;
  #pending: string | undefined;

  constructor(
    private readonly ctx: DecoderGraphContext,
    x: string,
  ) {
    this.#x = x;
  }

  add(delta: string): void {
    if (this.#pending) this.#x = this.ctx.g.add(this.#x, this.#pending);
    this.#pending = delta;
  }

  /** RMSNorm of the stream (the pending addition folded in). */
  norm(name: string, weight: Float32Array): string {
    const { g, dims } = this.ctx;
    if (!this.#pending) return rmsNorm(this.ctx, this.#x, name, weight);
    const w = g.initializer(name, 'float32', [weight.length], weight);
    const [normed, , , sum] = g.node(
      'SkipSimplifiedLayerNormalization',
      [this.#x, this.#pending, w],
      { epsilon: dims.rmsNormEps },
      { domain: MS_DOMAIN, outputs: [`${name}:normed`, '', '', `${name}:residual`] },
    );
    this.#x = sum;
    this.#pending = undefined;
    return normed;
  }

  /** The stream's current value. */
  value(): string {
    if (this.#pending) this.#x = this.ctx.g.add(this.#x, this.#pending);
    this.#pending = undefined;
    return this.#x;
  }
}

/** Layers read straight from checkpoint tensors by name, shared by the architecture files. */
export function checkpointLayers(ctx: DecoderGraphContext, weights: WeightSource) {
  const load = (name: string) => weights.float32(name);
  const named = async (name: string) => ({ name, data: await load(name) });
  /**
   * A torch Linear weight: the checkpoint's own 4-bit blocks when it stores them packed (AWQ, GPTQ) and the
   * graph is int4 with the same block size, so nothing is requantised; else float32.
   */
  const loadLinear = async (name: string): Promise<LinearWeight> => {
    const quant = ctx.options.linearQuant;
    if (quant?.dtype === 'int4' && weights.int4Blocks) {
      const blocks = await weights.int4Blocks(name);
      if (blocks && blocks.blockSize === (quant.blockSize ?? DEFAULT_BLOCK_SIZE)) return blocks;
    }
    return load(name);
  };
  return {
    load,
    named,
    loadLinear,
    /** RMSNorm with the weight tensor `name`. */
    norm: async (residual: ResidualStream, name: string) => residual.norm(name, await load(name)),
    /** The torch Linear `name` (.weight, and .bias when `bias`) as a fusedLinear part. */
    part: async (name: string, outFeatures: number, bias = false): Promise<LinearPart> => ({
      name: `${name}.weight`,
      weight: await loadLinear(`${name}.weight`),
      outFeatures,
      bias: bias ? await named(`${name}.bias`) : undefined,
    }),
    /** torch Linear `name` (.weight [out, in], optional .bias). */
    proj: async (x: string, name: string, outFeatures: number, inFeatures: number, bias = false) =>
      linear(
        ctx,
        x,
        `${name}.weight`,
        await loadLinear(`${name}.weight`),
        outFeatures,
        inFeatures,
        bias ? await named(`${name}.bias`) : undefined,
      ),
  };
}

/** silu(gate) ⊙ up. */
export function swiGlu(ctx: DecoderGraphContext, gate: string, up: string): string {
  const { g } = ctx;
  return g.mul(g.mul(gate, g.sigmoid(gate)), up);
}

/**
 * Rotary on q [B,S,H·hd] and k [B,S,kvH·hd], then causal GQA over the past buffers of `layer`.
 * Returns the attention output [B,S,H·hd]; declares key.i (rotated) and value.i as graph outputs.
 */
export function selfAttention(
  ctx: DecoderGraphContext,
  layer: number,
  q: string,
  k: string,
  v: string,
): string {
  const { g, dims } = ctx;
  const kvWidth = dims.numKvHeads * dims.headDim;
  const rotary = (x: string, heads: number) =>
    g.op(
      'RotaryEmbedding',
      [x, ctx.ropeIndex, ctx.ropeCos, ctx.ropeSin],
      { interleaved: { int: 0 }, num_heads: { int: heads } },
      MS_DOMAIN,
    );
  const qRot = rotary(q, dims.numHeads);
  const kRot = rotary(k, dims.numKvHeads);
  const pastShape = ['batch', dims.numKvHeads, 'capacity', dims.headDim];
  const pastKey = g.input(DECODER_IO.pastKey(layer), 'float32', pastShape);
  const pastValue = g.input(DECODER_IO.pastValue(layer), 'float32', pastShape);
  // present_key/present_value must stay as node outputs (ORT ignores the past without them); the engine never fetches them.
  const [out] = g.node(
    'GroupQueryAttention',
    [qRot, kRot, v, pastKey, pastValue, ctx.seqlensK, ctx.totalSequenceLength],
    {
      num_heads: { int: dims.numHeads },
      kv_num_heads: { int: dims.numKvHeads },
      scale: 1 / Math.sqrt(dims.headDim),
      do_rotary: { int: 0 },
    },
    { domain: MS_DOMAIN, outputs: 3 },
  );
  g.output(kRot, DECODER_IO.key(layer), 'float32', ['batch', 'seq', kvWidth]);
  g.output(v, DECODER_IO.value(layer), 'float32', ['batch', 'seq', kvWidth]);
  return out;
}

/** Marks a layer's output as a graph output when hidden states are requested. */
export function layerOutput(ctx: DecoderGraphContext, layer: number, residual: ResidualStream): void {
  if (ctx.options.hiddenStates) {
    ctx.g.output(residual.value(), DECODER_IO.hidden(layer), 'float32', [
      'batch',
      'seq',
      ctx.dims.hiddenSize,
    ]);
  }
}

/** Final RMSNorm and lm_head on the rows `logits_rows` of the flattened hidden states; returns the graph. */
export function finishDecoderGraph(
  ctx: DecoderGraphContext,
  x: string,
  finalNorm: { name: string; data: Float32Array },
  lmHead: { name: string; data: Float32Array },
): Graph {
  const { g, dims } = ctx;
  const rows = g.gather(g.reshape(x, [-1, dims.hiddenSize]), ctx.logitsRows, 0);
  const normed = rmsNorm(ctx, rows, finalNorm.name, finalNorm.data);
  if (ctx.options.hiddenStates) g.output(normed, DECODER_IO.finalNorm, 'float32', ['rows', dims.hiddenSize]);
  const lmHeadQuant = ctx.options.lmHeadQuant ?? ctx.options.linearQuant;
  const logits = linear(
    ctx,
    normed,
    lmHead.name,
    lmHead.data,
    dims.vocabSize,
    dims.hiddenSize,
    undefined,
    lmHeadQuant,
  );
  g.output(logits, DECODER_IO.logits, 'float32', ['rows', dims.vocabSize]);
  const next = g.op('ArgMax', [logits], { axis: { int: -1 }, keepdims: { int: 0 } });
  g.output(next, DECODER_IO.nextToken, 'int64', ['rows']);
  return g.graph;
}
