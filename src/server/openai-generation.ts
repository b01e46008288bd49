/**
 * OpenAI request parameters → the pipeline's GenerationConfigInput.
 *
 * - Sampling defaults come from the checkpoint (InternVL 2.5: greedy) when `temperature` is absent,
 *   not OpenAI's temperature 1.
 * - `n` > 1 runs n generations; with a `seed`, choice i samples with seed + i.
 * - `response_format` `json_object` / `json_schema` constrains decoding (XGrammar in the engine thread):
 *   the JSON is compact (no free whitespace), and `finish_reason: "length"` means max_tokens cut it off
 *   before it was complete. A schema XGrammar cannot read is a 400 naming the problem.
 * - Parameters that would change the output but that the engine does not implement are a 400.
 */
import type { GenerationConfigInput } from '../pipeline/generation-config.js';
import { HttpError } from './errors.js';
import type { ChatCompletionRequest, CompletionRequest } from './openai-schemas.js';
import { responseFormat } from './response-format.js';
import { toolOptions } from './tool-calls.js';

function unsupported(param: string, what: string): never {
  throw new HttpError(400, `${param} is not supported by this server (${what})`, {
    param,
    openaiCode: 'unsupported_parameter',
  });
}

type SamplingRequest = Pick<
  ChatCompletionRequest,
  | 'temperature'
  | 'top_p'
  | 'top_k'
  | 'min_p'
  | 'repetition_penalty'
  | 'stop'
  | 'seed'
  | 'ignore_eos'
  | 'skip_special_tokens'
  | 'presence_penalty'
  | 'frequency_penalty'
  | 'logit_bias'
>;

/** Rejects OpenAI features that would change the output but that the engine does not implement. */
function rejectUnsupportedSampling(req: SamplingRequest): void {
  if (req.presence_penalty) unsupported('presence_penalty', 'use repetition_penalty');
  if (req.frequency_penalty) unsupported('frequency_penalty', 'use repetition_penalty');
  if (req.logit_bias && Object.keys(req.logit_bias).length > 0)
    unsupported('logit_bias', 'no logit processors');
}

function baseGeneration(
  req: SamplingRequest,
  maxNewTokens: number | null | undefined,
): GenerationConfigInput {
  const gen: GenerationConfigInput = {};
  if (maxNewTokens != null) gen.maxNewTokens = maxNewTokens;
  if (req.temperature != null) gen.temperature = req.temperature;
  if (req.top_p != null) gen.topP = req.top_p;
  if (req.top_k != null) gen.topK = Math.max(0, req.top_k);
  if (req.min_p != null) gen.minP = req.min_p;
  if (req.repetition_penalty != null) gen.repetitionPenalty = req.repetition_penalty;
  if (req.stop != null) gen.stop = req.stop;
  if (req.seed != null) gen.seed = req.seed;
  if (req.ignore_eos != null) gen.ignoreEos = req.ignore_eos;
  if (req.skip_special_tokens != null) gen.skipSpecialTokens = req.skip_special_tokens;
  return gen;
}

/** The generation config of each of the `n` choices: with a seed, choice i gets seed + i. */
export function choiceConfigs(gen: GenerationConfigInput, n: number): GenerationConfigInput[] {
  return Array.from({ length: n }, (_, i) => {
    if (gen.seed === undefined || i === 0) return gen;
    const seed = gen.seed + i <= Number.MAX_SAFE_INTEGER ? gen.seed + i : gen.seed - i;
    return { ...gen, seed };
  });
}

export function chatGeneration(req: ChatCompletionRequest): GenerationConfigInput {
  rejectUnsupportedSampling(req);
  if (req.top_logprobs && !req.logprobs) {
    throw new HttpError(400, 'top_logprobs needs logprobs: true', { param: 'top_logprobs' });
  }
  const gen = { ...baseGeneration(req, req.max_completion_tokens ?? req.max_tokens), ...toolOptions(req) };
  const format = responseFormat(req);
  if (format) gen.responseFormat = format;
  if (req.logprobs) {
    gen.logprobs = true;
    gen.topLogprobs = req.top_logprobs ?? 0;
  }
  return gen;
}

/** OpenAI's legacy default length is 16 tokens (LMDeploy keeps it). */
export const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;

export function completionGeneration(req: CompletionRequest): GenerationConfigInput {
  rejectUnsupportedSampling(req);
  if (req.echo) unsupported('echo', 'the prompt is not returned');
  if (req.suffix) unsupported('suffix', 'no fill-in-the-middle');
  if (req.best_of != null && req.best_of !== (req.n ?? 1)) unsupported('best_of', 'use n');
  const gen = baseGeneration(req, req.max_tokens ?? COMPLETIONS_DEFAULT_MAX_TOKENS);
  const format = responseFormat(req);
  if (format) gen.responseFormat = format;
  if (req.logprobs != null) {
    gen.logprobs = true;
    gen.topLogprobs = req.logprobs;
  }
  return gen;
}
