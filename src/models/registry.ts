/**
 * The LLM architectures, one line each: every place that depends on the architecture asks here.
 * Adding one is a file in this folder implementing DecoderArchitecture (see docs/architecture.md) and
 * a line below; its llm_config schema is part of it (`configSchema`).
 */
import type { LlmConfig, ModelConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import type { Graph } from '../onnx/graph.js';
import type { DecoderArchitecture, DecoderDims, DecoderGraphOptions } from './decoder.js';
import { buildDecoderGraph as buildArchitectureGraph } from './decoder-graph.js';
import { internlm2Architecture } from './internlm2.js';
import { internlm3Architecture } from './internlm3.js';
import { qwen2Architecture } from './qwen2.js';
import { qwen3Architecture } from './qwen3.js';
import type { TensorSpec, WeightSource } from './weights.js';

export const DECODER_ARCHITECTURES: readonly DecoderArchitecture[] = [
  qwen2Architecture,
  internlm2Architecture,
  qwen3Architecture,
  internlm3Architecture,
];

/** The architecture of `llm_config.model_type` (or DecoderDims.arch). */
export function decoderArchitecture(modelType: string): DecoderArchitecture {
  const arch = DECODER_ARCHITECTURES.find((a) => a.modelType === modelType);
  if (!arch) {
    const known = DECODER_ARCHITECTURES.map((a) => a.modelType).join(', ');
    throw new InternVLError(
      'UNSUPPORTED',
      `LLM model_type ${JSON.stringify(modelType)} is not supported (supported: ${known})`,
    );
  }
  return arch;
}

/** The LLM dimensions of a parsed llm_config. */
export function decoderDimsFromLlmConfig(llm: LlmConfig): DecoderDims {
  return decoderArchitecture(llm.model_type).dims(llm);
}

/** The LLM dimensions of an InternVL config.json. */
export function decoderDimsFromConfig(config: ModelConfig): DecoderDims {
  return decoderDimsFromLlmConfig(config.llm_config);
}

export function buildDecoderGraph(
  dims: DecoderDims,
  weights: WeightSource,
  options: DecoderGraphOptions = {},
): Promise<Graph> {
  return buildArchitectureGraph(decoderArchitecture(dims.arch), dims, weights, options);
}

export function decoderTensorSpecs(dims: DecoderDims): TensorSpec[] {
  return decoderArchitecture(dims.arch).tensorSpecs(dims);
}

/** The checkpoint name of the token-embedding table. */
export function embeddingTensorName(dims: DecoderDims): string {
  return decoderArchitecture(dims.arch).embeddingName;
}
