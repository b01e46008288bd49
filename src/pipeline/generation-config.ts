import type { GenerationConfigFile } from '../config/generation-config.js';
import {
  type GenerationConfigInput as EngineGenerationConfigInput,
  parseGenerationConfigInput,
  type ResolvedGenerationConfig,
} from '../engine/generation-config.js';
import type { ResponseFormat } from '../engine/grammar-types.js';
import { InternVLError } from '../errors.js';
import type { Template } from '../text/templates.js';
import type { Tokenizer } from '../text/types.js';
import { type ToolOptions, withoutToolOptions } from './tool-calls.js';

export * from '../engine/generation-config.js';

/**
 * What pipeline callers may pass: the engine's fields, and the tool options (`tools`, `toolChoice`,
 * `parallelToolCalls`; pipeline/tool-calls.ts), which shape the prompt and the output grammar.
 */
export type GenerationConfigInput = EngineGenerationConfigInput & ToolOptions;

/** Default `maxNewTokens` when neither the user nor generation_config.json gives one (LMDeploy's). */
export const DEFAULT_MAX_NEW_TOKENS = 512;

export interface ResolveGenerationOptions {
  /** The checkpoint's parsed generation_config.json; absent = Hugging Face defaults. */
  fileConfig?: GenerationConfigFile;
  template: Template;
  tokenizer: Tokenizer;
}

function fileMinP(fileConfig: GenerationConfigFile | undefined): number {
  const value = (fileConfig as Record<string, unknown> | undefined)?.min_p;
  return typeof value === 'number' && value >= 0 && value <= 1 ? value : 0;
}

function idList(value: number | number[] | null | undefined): number[] {
  if (value === null || value === undefined) return [];
  return Array.isArray(value) ? value : [value];
}

/**
 * The config one request runs with. Each field comes from the user, else from generation_config.json,
 * else from the defaults that the official `chat()` gets from Hugging Face `generate` (greedy unless
 * `do_sample`; top_k 50 and top_p 1 apply once sampling) and LMDeploy (maxNewTokens 512,
 * skipSpecialTokens true). InternVL 2.5 checkpoints' generation_config.json carries only eos ids, so
 * the default is greedy decoding; setting `temperature` > 0 turns sampling on. `topLogprobs` > 0
 * implies `logprobs`. `max_length` (prompt + output) is not used: the context guard bounds the total.
 *
 * End ids: the template's end-of-turn token (`<|im_end|>`), which `chat()` stops at, plus
 * generation_config.json's `eos_token_id`s; `ignoreEos` disables these but not the user's
 * `stopTokenIds`, as vLLM does.
 */
export function resolveGenerationConfig(
  user: GenerationConfigInput | undefined,
  options: ResolveGenerationOptions,
): ResolvedGenerationConfig {
  const given = parseGenerationConfigInput(withoutToolOptions(user));
  const { fileConfig, template, tokenizer } = options;
  const templateEos = tokenizer.tokenToId(template.eosToken);
  if (templateEos === undefined) {
    throw new InternVLError(
      'BAD_TOKENIZER',
      `the tokenizer has no token '${template.eosToken}', the end-of-turn token of template '${template.name}'`,
    );
  }
  const sampling = fileConfig?.do_sample === true;
  const topLogprobs = given.topLogprobs ?? 0;
  const ignoreEos = given.ignoreEos ?? false;
  const stopTokenIds = [...new Set(given.stopTokenIds ?? [])];
  const eosTokenIds = [...new Set([templateEos, ...idList(fileConfig?.eos_token_id)])];
  const resolved: ResolvedGenerationConfig = {
    maxNewTokens: given.maxNewTokens ?? fileConfig?.max_new_tokens ?? DEFAULT_MAX_NEW_TOKENS,
    temperature: given.temperature ?? (sampling ? (fileConfig?.temperature ?? 1) : 0),
    topK: given.topK ?? fileConfig?.top_k ?? 50,
    topP: given.topP ?? fileConfig?.top_p ?? 1,
    minP: given.minP ?? fileMinP(fileConfig),
    repetitionPenalty: given.repetitionPenalty ?? fileConfig?.repetition_penalty ?? 1,
    stop: [...new Set(given.stop ?? [])],
    stopTokenIds,
    ignoreEos,
    logprobs: given.logprobs ?? topLogprobs > 0,
    topLogprobs,
    skipSpecialTokens: given.skipSpecialTokens ?? true,
    eosTokenIds,
    endTokenIds: [...new Set([...(ignoreEos ? [] : eosTokenIds), ...stopTokenIds])],
  };
  if (given.seed !== undefined) resolved.seed = given.seed;
  if (given.responseFormat !== undefined) {
    if (resolved.endTokenIds.length === 0) {
      throw new InternVLError(
        'BAD_INPUT',
        'invalid generation config: responseFormat needs an end token to finish on; ignoreEos leaves none unless stopTokenIds names one',
      );
    }
    resolved.responseFormat = given.responseFormat as ResponseFormat;
  }
  if (topLogprobs > 0 && !resolved.logprobs) {
    throw new InternVLError('BAD_INPUT', 'invalid generation config: topLogprobs needs logprobs');
  }
  return resolved;
}
