/**
 * Weight precision choices for the engine's graphs, validated and resolved to what each graph is built
 * with. The LLM can use one graph for decode (`llmDtype`) and another for long prefill chunks
 * (`prefillDtype`): MatMulNBits int4 is the fast M = 1 kernel, DynamicQuantizeMatMul int8 the fast
 * large-M one. Token embeddings stay in JS (bf16 when the checkpoint is bf16, widened on lookup).
 */
import {
  checkAccuracyLevel,
  checkBlockSize,
  checkInt8Kernel,
  checkWeightDtype,
  DEFAULT_ACCURACY_LEVEL,
  DEFAULT_BLOCK_SIZE,
  type Int8Kernel,
  type LinearQuant,
  type WeightDtype,
} from '../onnx/quantize.js';
import { defaultInt8Kernel } from './cpu.js';

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
  /** lm_head weights; 'auto' (default): `autoLmHeadDtype` when the graph's layers are int4 or int8, else fp32. */
  lmHeadDtype?: WeightDtype | 'auto';
  /**
   * The lm_head that 'auto' gives quantised graphs (default int4; int8 for AWQ / GPTQ checkpoints, whose
   * 16-bit head int4 would make the largest error of the model: see graph-plan.ts).
   */
  autoLmHeadDtype?: WeightDtype;
  /** int4 block size along K (default 32). */
  blockSize?: number;
  /** MatMulNBits accuracy_level (default 4: int8 activations). */
  accuracyLevel?: number;
  /** How int8 weights are stored (default 'auto': the scheme exact on this CPU, see cpu.ts). */
  int8Kernel?: Int8Kernel | 'auto';
}

export interface LlmPrecision {
  llmDtype: WeightDtype;
  prefillDtype: WeightDtype;
  lmHeadDtype: WeightDtype | 'auto';
  autoLmHeadDtype: WeightDtype;
  blockSize: number;
  accuracyLevel: number;
  int8Kernel: Int8Kernel;
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
    autoLmHeadDtype: checkWeightDtype('autoLmHeadDtype', options.autoLmHeadDtype ?? 'int4'),
    blockSize: checkBlockSize(options.blockSize ?? DEFAULT_BLOCK_SIZE),
    accuracyLevel: checkAccuracyLevel(options.accuracyLevel ?? DEFAULT_ACCURACY_LEVEL),
    int8Kernel:
      options.int8Kernel === undefined || options.int8Kernel === 'auto'
        ? defaultInt8Kernel()
        : checkInt8Kernel('int8Kernel', options.int8Kernel),
  };
}

/** How a linear layer of `dtype` is stored under `precision`. */
export function linearQuant(
  precision: Pick<LlmPrecision, 'blockSize' | 'accuracyLevel' | 'int8Kernel'>,
  dtype: WeightDtype,
): LinearQuant | undefined {
  if (dtype === 'fp32') return undefined;
  if (dtype === 'int8') return { dtype, int8Kernel: precision.int8Kernel };
  return { dtype, blockSize: precision.blockSize, accuracyLevel: precision.accuracyLevel };
}

/**
 * The linear and lm_head storage and the attention of a decoder graph whose layers use `dtype`. lm_head
 * at M = 1 is a pure weight stream (vocab × hidden), so quantised graphs default to a quantised lm_head
 * (`autoLmHeadDtype`: int4, or int8 on AWQ / GPTQ checkpoints). When a separate prefill graph takes the
 * long chunks, the decode graph (`llmDtype`) only sees short ones and attends with matmuls over the KV
 * buffers instead of GroupQueryAttention (models/cache-attention.ts).
 */
export function decoderGraphOptions(
  precision: LlmPrecision,
  dtype: WeightDtype,
): { linearQuant?: LinearQuant; lmHeadQuant?: LinearQuant; attention: 'gqa' | 'matmul' } {
  const lmHead =
    precision.lmHeadDtype === 'auto'
      ? dtype === 'fp32'
        ? 'fp32'
        : precision.autoLmHeadDtype
      : precision.lmHeadDtype;
  const decodeOnly = dtype === precision.llmDtype && precision.prefillDtype !== precision.llmDtype;
  return {
    linearQuant: linearQuant(precision, dtype),
    lmHeadQuant: linearQuant(precision, lmHead) ?? { dtype: 'fp32' },
    attention: decodeOnly ? 'matmul' : 'gqa',
  };
}

/** The part of a graph cache key that the precision decides (fp32 with GroupQueryAttention keeps the historical key). */
export function llmCacheTag(precision: LlmPrecision, dtype: WeightDtype): Record<string, unknown> {
  const { linearQuant, lmHeadQuant, attention } = decoderGraphOptions(precision, dtype);
  const attentionTag = attention === 'gqa' ? {} : { attention };
  if (!linearQuant && lmHeadQuant?.dtype === 'fp32') return { dtype: 'fp32', ...attentionTag };
  return { dtype, linear: linearQuant ?? null, lmHead: lmHeadQuant, ...attentionTag };
}

/** int8 keys name the kernel, so a cache copied to a CPU that needs the other one is rebuilt. */
export function vitCacheTag(vitDtype: VitDtype, int8Kernel: Int8Kernel): Record<string, unknown> {
  return vitDtype === 'int8' ? { dtype: vitDtype, int8Kernel } : { dtype: vitDtype };
}
