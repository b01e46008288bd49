/**
 * config.json parsed against the registered LLM architectures: `parseModelConfig` / `loadModelConfig`
 * (config/model-config.ts does the parsing; each architecture's file brings its llm_config schema).
 */
import {
  type ConfigSideFile,
  type LlmConfigSchemas,
  loadModelConfigWith,
  type ModelConfig,
  parseModelConfigWith,
} from '../config/model-config.js';
import { DECODER_ARCHITECTURES } from './registry.js';

const schemas: LlmConfigSchemas = {
  schemaOf: (name) => DECODER_ARCHITECTURES.find((a) => a.hfArchitecture === name)?.configSchema,
  supported: DECODER_ARCHITECTURES.map((a) => a.hfArchitecture),
};

/** The `llm_config.architectures[0]` names that load. */
export const SUPPORTED_LLM_ARCHITECTURES: readonly string[] = schemas.supported;

/**
 * Parses and validates the JSON of an InternVLChatModel config.json, or of a transformers-native
 * InternVLForConditionalGeneration one (`preprocessor`: its preprocessor_config.json when there is one).
 * Pure (no file access); `sourceName` is used in error messages, e.g. "config.json" or its full path.
 */
export function parseModelConfig(
  json: unknown,
  sourceName = 'config.json',
  preprocessor?: ConfigSideFile,
): ModelConfig {
  return parseModelConfigWith(schemas, json, sourceName, preprocessor);
}

/** Reads and validates `<dir>/config.json`. */
export function loadModelConfig(dir: string): Promise<ModelConfig> {
  return loadModelConfigWith(schemas, dir);
}

/** The LLM architecture (`llm_config.architectures[0]`, validated by parseModelConfig). */
export function llmArchitecture(config: ModelConfig): string {
  return config.llm_config.architectures[0];
}
