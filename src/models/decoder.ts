/**
 * What a decoder architecture is: its dimensions, the checkpoint tensors it reads, and its layer written
 * once against DecoderLayerOps. Two backends run that layer: models/decoder-graph.ts with the fused
 * inference ops (GroupQueryAttention over engine-owned KV buffers, SkipSimplifiedLayerNormalization,
 * MatMulNBits / DynamicQuantizeMatMul) and train/decoder-ops.ts with the primitive ops the autodiff
 * differentiates (packed sequences, LoRA).
 *
 * Inference graph contract (B = batch, S = chunk length, C = KV capacity, N = logits rows):
 *   inputs  inputs_embeds [B,S,D]; rope_cos/rope_sin [P, hd/2] and rope_index int64 [B,S] (row of the
 *           tables per token); seqlens_k int32 [B] (= past + S − 1); total_sequence_length int32 [];
 *           past_key.i/past_value.i [B,kvH,C,hd] (only the first `past` slots valid); logits_rows int64 [N]
 *           (rows of the flattened [B·S, D] hidden states to project).
 *   outputs logits [N,V]; key.i/value.i [B,S,kvH·hd] (this chunk's rotated keys and values, for the
 *           engine to append to its buffers); with hiddenStates: hidden.i [B,S,D], final_norm [N,D].
 */
import type { z } from 'zod';
import type { LlmConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import type { LinearQuant } from '../onnx/quantize.js';
import type { ToolFormatName } from '../text/tool-prompts.js';
import type { RopeScaling } from './rope.js';
import type { TensorSpec } from './weights.js';

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

/** A torch Linear of the checkpoint: `${name}.weight` [outFeatures, in] and, with `bias`, `${name}.bias`. */
export interface LinearSpec {
  name: string;
  outFeatures: number;
  bias?: boolean;
}

/**
 * The operations a decoder layer is written in. Values are graph value names; activations are
 * [..., features] (the inference backend's [B,S,·], training's packed [T,·]). The layer reads the
 * residual stream through `norm` and adds its branches with `addResidual`.
 */
export interface DecoderLayerOps {
  readonly dims: DecoderDims;
  /** RMSNorm (weight tensor `name`) of the residual stream. */
  norm(name: string): Promise<string>;
  /** residual += delta */
  addResidual(delta: string): void;
  /** A torch Linear over x [..., inFeatures]. */
  linear(x: string, inFeatures: number, spec: LinearSpec): Promise<string>;
  /**
   * Several torch Linears over the same x, in order; a backend may run them as one matmul (the stacked
   * weight named `fusedName`).
   */
  linears(x: string, inFeatures: number, fusedName: string, parts: LinearSpec[]): Promise<string[]>;
  /**
   * A q/k/v projection packed per KV head (InternLM2's wqkv: for each KV head, its n_rep query heads, then
   * its key head, then its value head): q [..., H·hd], k and v [..., kvH·hd].
   */
  packedQkv(x: string, spec: Omit<LinearSpec, 'outFeatures'>): Promise<[string, string, string]>;
  /** RMSNorm over each head's vector of x [..., heads·hd], one weight [hd] (Qwen3's q_norm / k_norm). */
  headNorm(x: string, heads: number, name: string): Promise<string>;
  /** Rotary on q and k, then causal attention (GQA) within the sequence; returns [..., H·hd]. */
  attention(layer: number, q: string, k: string, v: string): string;
  /** silu(gate) ⊙ up */
  swiGlu(gate: string, up: string): string;
}

/**
 * One LLM architecture: how its config maps to DecoderDims, which checkpoint tensors it reads and its
 * layer. models/registry.ts lists them; nothing else switches on the architecture.
 */
export interface DecoderArchitecture {
  /** `llm_config.model_type`, also DecoderDims.arch. */
  modelType: string;
  /** `llm_config.architectures[0]`, the transformers class (e.g. Qwen2ForCausalLM). */
  hfArchitecture: string;
  /** Its llm_config schema (config/model-config.ts `llmConfigSchema`). */
  configSchema: z.ZodType;
  /** The token-embedding table's checkpoint name. */
  embeddingName: string;
  /** The output head's checkpoint name when the embeddings are not tied. */
  lmHeadName: string;
  /** The RMSNorm after the last layer. */
  finalNormName: string;
  /** The Linears of a layer that LoRA adapts (`use_llm_lora`), as module names within the layer. */
  loraTargets: readonly string[];
  /** How the LLM was trained to call tools (text/tool-prompts.ts). */
  toolFormat: ToolFormatName;
  /** The prefix of layer i's tensors. */
  layerPrefix(layer: number): string;
  dims(llm: LlmConfig): DecoderDims;
  /** Every tensor the decoder reads, with its checkpoint shape (embeddings and head included). */
  tensorSpecs(dims: DecoderDims): TensorSpec[];
  /** Layer `layer` of the decoder, for inference and training alike. */
  layer(ops: DecoderLayerOps, layer: number): Promise<void>;
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
  /**
   * How attention reads the KV buffers: 'gqa' (default) GroupQueryAttention, fast for long chunks but it
   * copies the whole buffer in every layer; 'matmul' (./cache-attention.ts) matmuls over the buffer in
   * place, faster for decode steps and short chunks and slower for long ones. An engine with a separate
   * prefill graph builds its decode graph with 'matmul'.
   */
  attention?: 'gqa' | 'matmul';
}
