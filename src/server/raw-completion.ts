/**
 * `/v1/completions` continues the prompt text as given, without the chat template, as LMDeploy's
 * completions endpoint does (`do_preprocess=False`). Stop strings, end ids, the context guard and
 * streaming behave as in the pipeline.
 */

import type { GenerateRequest } from '../engine/generate.js';
import { InternVLError } from '../errors.js';
import type { GenerationConfigInput } from '../pipeline/generation-config.js';
import { resolveGenerationConfig } from '../pipeline/generation-config.js';
import type { FinishReason, Pipeline, StreamChunk, TokenLogprobInfo, Usage } from '../pipeline/pipeline.js';
import type { SampledToken } from '../pipeline/sampler.js';
import { StopStringMatcher } from '../pipeline/stop.js';
import { StreamDecoder } from '../text/stream-decoder.js';

export type RawPipeline = Pick<
  Pipeline,
  'model' | 'tokenizer' | 'template' | 'generationFile' | 'sessionLen'
>;

export interface RawResult {
  text: string;
  finishReason: FinishReason;
  tokenIds: number[];
  usage: Usage;
}

/** Generates a continuation of `prompt`; `onChunk` sees text as it is decided. */
export async function generateRaw(
  pipe: RawPipeline,
  prompt: string,
  gen: GenerationConfigInput,
  options: { signal?: AbortSignal; onChunk?: (chunk: StreamChunk) => void } = {},
): Promise<RawResult> {
  const { tokenizer } = pipe;
  const config = resolveGenerationConfig(gen, {
    fileConfig: pipe.generationFile,
    template: pipe.template,
    tokenizer,
  });
  if (prompt.length === 0) throw new InternVLError('BAD_INPUT', 'prompt must not be empty');
  const inputIds = tokenizer.encode(prompt);
  const imageContext = tokenizer.tokenToId('<IMG_CONTEXT>');
  if (imageContext !== undefined && inputIds.includes(imageContext)) {
    throw new InternVLError('BAD_INPUT', 'prompt contains <IMG_CONTEXT>, which only image features may fill');
  }
  if (inputIds.length === 0) throw new InternVLError('BAD_INPUT', 'prompt encodes to no tokens');
  if (inputIds.length + config.maxNewTokens > pipe.sessionLen) {
    throw new InternVLError(
      'CONTEXT_OVERFLOW',
      `the prompt has ${inputIds.length} tokens and max_tokens is ${config.maxNewTokens}: ` +
        `${inputIds.length + config.maxNewTokens} > session length ${pipe.sessionLen}`,
    );
  }
  if (options.signal?.aborted)
    throw new InternVLError('ABORTED', 'the request was aborted before it started');
  const request: GenerateRequest = {
    inputIds,
    images: [],
    sampling: {
      temperature: config.temperature,
      topK: config.topK,
      topP: config.topP,
      minP: config.minP,
      repetitionPenalty: config.repetitionPenalty,
      logprobs: config.logprobs,
      topLogprobs: config.topLogprobs,
      seed: config.seed,
    },
    maxNewTokens: config.maxNewTokens,
    endTokenIds: config.endTokenIds,
  };
  const decoder = new StreamDecoder(tokenizer, { skipSpecialTokens: config.skipSpecialTokens });
  const stops = new StopStringMatcher(config.stop);
  const end = new Set(config.endTokenIds);
  const stopped = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stopped.signal]) : stopped.signal;
  const tokenIds: number[] = [];
  let text = '';
  let generated = 0;
  const tokenText = (id: number) => tokenizer.decode([id], { skipSpecialTokens: false });
  const emit = (piece: string, ids: number[], info: TokenLogprobInfo[]) => {
    text += piece;
    if (options.onChunk && (piece || ids.length)) {
      options.onChunk({ text: piece, tokenIds: ids, ...(config.logprobs ? { logprobs: info } : {}) });
    }
  };
  const onToken = (token: SampledToken) => {
    if (stops.stopped) return;
    generated++;
    const info: TokenLogprobInfo[] = config.logprobs
      ? [
          {
            id: token.id,
            token: tokenText(token.id),
            logprob: token.logprob ?? 0,
            topLogprobs: token.topLogprobs?.map((t) => ({
              id: t.id,
              token: tokenText(t.id),
              logprob: t.logprob,
            })),
          },
        ]
      : [];
    if (end.has(token.id)) {
      emit(stops.push(decoder.flush()).emit + stops.flush(), [], info);
      return;
    }
    tokenIds.push(token.id);
    const { emit: piece, stopped: hit } = stops.push(decoder.push(token.id));
    emit(piece, [token.id], info);
    if (hit) stopped.abort();
  };
  const result = await pipe.model.generate(request, { onToken, signal });
  let finishReason: FinishReason = result.finishReason;
  if (stops.stopped) finishReason = 'stop';
  else if (finishReason !== 'stop') emit(stops.push(decoder.flush()).emit + stops.flush(), [], []);
  return {
    text,
    finishReason,
    tokenIds,
    usage: { promptTokens: inputIds.length, completionTokens: generated, imageTokens: 0 },
  };
}
