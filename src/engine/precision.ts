/**
 * Weight precision choices for the engine's graphs, validated and resolved to what each graph is built
 * with. The LLM can use one graph for decode (`llmDtype`) and another for long prefill chunks
 * (`prefillDtype`): MatMulNBits int4 is the fast M = 1 kernel, DynamicQuantizeMatMul int8 the fast
 * large-M one. Token embeddings stay in JS (bf16 when the checkpoint is bf16, widened on lookup).
 */
import {
  checkAccuracyLevel,
  checkBlockSize,
  checkWeightDtype,
  DEFAULT_ACCURACY_LEVEL,
  DEFAULT_BLOCK_SIZE,
  type LinearQuant,
  type WeightDtype,
} from '../onnx/quantize.js';

export type { WeightDtype } from '../onnx/quantize.js';
export type VitDtype = 'fp32' | 'int8';

export interface LlmPrecisionOptions {
  /** LLM linear weights of the decode graph (default fp32). */
  llmDtype?: WeightDtype;
  /**
   * LLM linear weights of a second graph used for chunks of at least PREFILL_GRAPH_MIN_TOKENS tokens
   * (default: llmDtype, i.e. one graph). 'int8' with llmDtype 'int4' is the fastest CPU combination.
   */
  prefillDtype?: WeightDtype;
  /** lm_head weights; 'auto' (default): int4 when the graph's layers are int4 or int8, else fp32. */
  lmHeadDtype?: WeightDtype | 'auto';
  /** int4 block size along K (default 32). */
  blockSize?: number;
  /** MatMulNBits accuracy_level (default 4: int8 activations). */
  accuracyLevel?: number;
}

export interface LlmPrecision {
  llmDtype: WeightDtype;
  prefillDtype: WeightDtype;
  lmHeadDtype: WeightDtype | 'auto';
  blockSize: number;
  accuracyLevel: number;
}

/** Chunks of at least this many tokens run on the prefill graph when there is one. */
export const PREFILL_GRAPH_MIN_TOKENS = 16;

export function resolveLlmPrecision(options: LlmPrecisionOptions): LlmPrecision {
  const llmDtype = checkWeightDtype('llmDtype', options.llmDtype ?? 'fp32');
  return {
    llmDtype,
    prefillDtype: checkWeightDtype('prefillDtype', options.prefillDtype ?? llmDtype),
    lmHeadDtype:
      options.lmHeadDtype === undefined || options.lmHeadDtype === 'auto'
        ? 'auto'
        : checkWeightDtype('lmHeadDtype', options.lmHeadDtype),
    blockSize: checkBlockSize(options.blockSize ?? DEFAULT_BLOCK_SIZE),
    accuracyLevel: checkAccuracyLevel(options.accuracyLevel ?? DEFAULT_ACCURACY_LEVEL),
  };
}

/**
 * The linear and lm_head storage of a decoder graph whose layers use `dtype`. lm_head at M = 1 is a
 * pure weight stream (vocab × hidden), so quantised graphs default to an int4 lm_head.
 */
export function decoderGraphQuant(
  precision: LlmPrecision,
  dtype: WeightDtype,
): { linearQuant?: LinearQuant; lmHeadQuant?: LinearQuant } {
  const quant = (d: WeightDtype): LinearQuant | undefined =>
    d === 'fp32'
      ? undefined
      : { dtype: d, blockSize: precision.blockSize, accuracyLevel: precision.accuracyLevel };
  const lmHead =
    precision.lmHeadDtype === 'auto' ? (dtype === 'fp32' ? 'fp32' : 'int4') : precision.lmHeadDtype;
  return { linearQuant: quant(dtype), lmHeadQuant: quant(lmHead) ?? { dtype: 'fp32' } };
}

/** The part of a graph cache key that the precision decides (fp32 keeps the historical key). */
export function llmCacheTag(precision: LlmPrecision, dtype: WeightDtype): Record<string, unknown> {
  const { linearQuant, lmHeadQuant } = decoderGraphQuant(precision, dtype);
  if (!linearQuant && lmHeadQuant?.dtype === 'fp32') return { dtype: 'fp32' };
  return { dtype, linear: linearQuant ?? null, lmHead: lmHeadQuant };
}

export function vitCacheTag(vitDtype: VitDtype): Record<string, unknown> {
  return { dtype: vitDtype };
}
