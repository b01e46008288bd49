/**
 * The graphs a checkpoint needs for one set of precision choices, with their cache keys: what
 * `internvl convert` writes ahead of time and what EngineCore.load then finds in the cache.
 */
import type { ModelConfig } from '../config/model-config.js';
import { llmQuantization } from '../config/quantization-config.js';
import type { Checkpoint } from '../io/safetensors.js';
import { buildDecoderGraph, decoderDimsFromConfig } from '../models/registry.js';
import type { WeightSource } from '../models/weights.js';
import type { Graph } from '../onnx/graph.js';
import { checkWeightDtype } from '../onnx/quantize.js';
import { type GraphSource, graphCacheKey } from './graph-cache.js';
import { chooseInt8Kernel } from './int8-probe.js';
import {
  decoderGraphOptions,
  type LlmPrecision,
  type LlmPrecisionOptions,
  llmCacheTag,
  resolveLlmPrecision,
  type VitDtype,
  vitCacheTag,
  type WeightDtype,
} from './precision.js';
import { buildVisionGraph, visionDimsFromConfig } from './vision.js';

export interface PrecisionOptions extends LlmPrecisionOptions {
  /** Shorthand for llmDtype; llmDtype wins when both are given. */
  dtype?: WeightDtype;
  vitDtype?: VitDtype;
}

export interface ResolvedPrecision extends LlmPrecision {
  vitDtype: VitDtype;
}

/**
 * What a checkpoint's own format asks for when the options leave it open: an AWQ or GPTQ checkpoint runs its
 * packed 4-bit weights as they are (int4 graphs with one block per quantisation group), and its 16-bit
 * lm_head as int8 in those graphs. Measured with eval-quant on AWQ-packed tiny golden models (group 64,
 * 64 prompt + 16 decode tokens), max |logit − exact fp32 weights| over the prompt: fp32 head 0.084, int8
 * 0.091, int4 0.411 (Qwen2.5; greedy agreement 1, 1, 0.94); InternLM2 0.061, 0.081, 0.412 (1, 1, 0.81):
 * an int4 head is most of the error, an int8 one adds little at a quarter of fp32's bytes.
 */
export function checkpointPrecisionDefaults(
  config: ModelConfig,
): Pick<LlmPrecisionOptions, 'llmDtype' | 'blockSize' | 'autoLmHeadDtype'> {
  const quantization = llmQuantization(config);
  return quantization ? { llmDtype: 'int4', blockSize: quantization.groupSize, autoLmHeadDtype: 'int8' } : {};
}

/**
 * Validates the precision options (`config`: the checkpoint's, for its defaults). When any graph has int8 weights and no int8 kernel is asked for,
 * onnxruntime is probed once for the scheme that is exact on this CPU (int8-probe.ts).
 */
export async function resolvePrecision(
  options: PrecisionOptions,
  config?: ModelConfig,
): Promise<ResolvedPrecision> {
  const vitDtype = checkWeightDtype('vitDtype', options.vitDtype ?? 'fp32', ['fp32', 'int8']) as VitDtype;
  const defaults = config ? checkpointPrecisionDefaults(config) : {};
  const llm = resolveLlmPrecision({
    ...options,
    llmDtype: options.llmDtype ?? options.dtype ?? defaults.llmDtype,
    blockSize: options.blockSize ?? defaults.blockSize,
    autoLmHeadDtype: options.autoLmHeadDtype ?? defaults.autoLmHeadDtype,
  });
  const quantisedGraph = llm.llmDtype !== 'fp32' || llm.prefillDtype !== 'fp32';
  const usesInt8 =
    vitDtype === 'int8' ||
    llm.llmDtype === 'int8' ||
    llm.prefillDtype === 'int8' ||
    llm.lmHeadDtype === 'int8' ||
    (llm.lmHeadDtype === 'auto' && quantisedGraph && llm.autoLmHeadDtype === 'int8');
  if (!usesInt8) return { ...llm, vitDtype };
  return { ...llm, int8Kernel: (await chooseInt8Kernel(options.int8Kernel)).kernel, vitDtype };
}

/** The cache key of one engine graph (the same formula EngineCore.load uses). */
export function engineGraphKey(
  checkpoint: Checkpoint,
  component: 'vision' | 'decoder',
  dims: unknown,
  tag: Record<string, unknown>,
): string {
  return graphCacheKey(checkpoint.files(), { component, dims, ...tag });
}

export interface PlannedGraph {
  /** 'vision', 'decoder' or 'decoder-prefill'. */
  role: string;
  dtype: string;
  key: string;
  /** What it is built from, recorded in its cache entry (graph-source.ts). */
  source: GraphSource;
  build: () => Promise<Graph>;
}

/** Vision, decoder and (when prefillDtype differs) prefill graphs for `precision`. */
export function planEngineGraphs(
  config: ModelConfig,
  checkpoint: Checkpoint,
  weights: WeightSource,
  precision: ResolvedPrecision,
): PlannedGraph[] {
  const visionDims = visionDimsFromConfig(config);
  const decoderDims = decoderDimsFromConfig(config);
  const plan: PlannedGraph[] = [
    {
      role: 'vision',
      dtype: precision.vitDtype,
      key: engineGraphKey(
        checkpoint,
        'vision',
        visionDims,
        vitCacheTag(precision.vitDtype, precision.int8Kernel),
      ),
      source: { files: checkpoint.files(), component: 'vision', dtype: precision.vitDtype },
      build: () =>
        buildVisionGraph(visionDims, weights, {
          vitDtype: precision.vitDtype,
          int8Kernel: precision.int8Kernel,
        }),
    },
  ];
  const decoderGraph = (role: string, dtype: WeightDtype): PlannedGraph => ({
    role,
    dtype,
    key: engineGraphKey(checkpoint, 'decoder', decoderDims, llmCacheTag(precision, dtype)),
    source: { files: checkpoint.files(), component: 'decoder', dtype },
    build: () => buildDecoderGraph(decoderDims, weights, decoderGraphOptions(precision, dtype)),
  });
  plan.push(decoderGraph('decoder', precision.llmDtype));
  if (precision.prefillDtype !== precision.llmDtype) {
    plan.push(decoderGraph('decoder-prefill', precision.prefillDtype));
  }
  return plan;
}
