/** A prepared request run in the engine, its tokens turned into the pipeline's Response and stream chunks. */
import type { GenerateRequest } from '../engine/generate.js';
import type { InternVLModel } from '../engine/model.js';
import type { SampledToken } from '../engine/sampler.js';
import type { TaskProgress } from '../io/progress.js';
import { StreamDecoder } from '../text/stream-decoder.js';
import type { ToolFormat } from '../text/tool-prompts.js';
import type { Tokenizer } from '../text/types.js';
import type { ResolvedGenerationConfig } from './generation-config.js';
import type { FinishReason, Response, StreamChunk, TokenLogprobInfo } from './responses.js';
import { StopStringMatcher } from './stop.js';
import { RequestClock } from './timings.js';
import { ToolCallReader } from './tool-call-reader.js';

export interface ResponseDeps {
  model: InternVLModel;
  tokenizer: Tokenizer;
  onProgress?: (progress: TaskProgress) => void;
}

export interface PreparedRequest {
  request: GenerateRequest;
  config: ResolvedGenerationConfig;
  imageTokens: number;
  /** The model's tool format, when its calls are read out of the text. */
  toolFormat?: ToolFormat;
}

function logprobInfo(tokenizer: Tokenizer, token: SampledToken): TokenLogprobInfo {
  const text = (id: number) => tokenizer.decode([id], { skipSpecialTokens: false });
  return {
    id: token.id,
    token: text(token.id),
    logprob: token.logprob ?? 0,
    topLogprobs: token.topLogprobs?.map((t) => ({ id: t.id, token: text(t.id), logprob: t.logprob })),
  };
}

/** Runs a prepared request in the engine, turning its tokens into text (stop strings, streaming). */
export async function generateResponse(
  deps: ResponseDeps,
  { request, config, imageTokens, toolFormat }: PreparedRequest,
  userSignal: AbortSignal | undefined,
  userOnChunk?: (chunk: StreamChunk) => void,
): Promise<Response> {
  const tools = toolFormat && new ToolCallReader(toolFormat);
  const onChunk = tools
    ? (chunk: StreamChunk) => {
        const read = tools.chunk(chunk);
        if (userOnChunk && (read.text || read.toolCalls || read.tokenIds.length)) userOnChunk(read);
      }
    : userOnChunk;
  const decoder = new StreamDecoder(deps.tokenizer, { skipSpecialTokens: config.skipSpecialTokens });
  const stops = new StopStringMatcher(config.stop);
  const end = new Set(config.endTokenIds);
  const stopped = new AbortController();
  const signal = userSignal ? AbortSignal.any([userSignal, stopped.signal]) : stopped.signal;
  const tokenIds: number[] = [];
  const logprobs: TokenLogprobInfo[] = [];
  let text = '';
  let generated = 0;
  let flushed = false;
  const emit = (piece: string, ids: number[], info: TokenLogprobInfo[]) => {
    text += piece;
    if (onChunk && (piece || ids.length)) {
      onChunk({ text: piece, tokenIds: ids, ...(config.logprobs ? { logprobs: info } : {}) });
    }
  };
  const clock = new RequestClock();
  const onToken = (token: SampledToken) => {
    clock.token();
    if (stops.stopped) return;
    generated++;
    const info = config.logprobs ? [logprobInfo(deps.tokenizer, token)] : [];
    logprobs.push(...info);
    if (end.has(token.id)) {
      flushed = true;
      emit(stops.push(decoder.flush()).emit + stops.flush(), [], info);
      return;
    }
    tokenIds.push(token.id);
    const { emit: piece, stopped: hit } = stops.push(decoder.push(token.id));
    emit(piece, [token.id], info);
    if (hit) stopped.abort();
  };
  const progress = deps.onProgress;
  const onEncode = (done: number, total: number) => {
    clock.encoded();
    progress?.({ label: 'encoding tiles', done, total });
  };
  const onPrefill =
    progress && ((done: number, total: number) => progress({ label: 'prefill', done, total }));
  const result = await deps.model.generate(request, { onToken, onEncode, onPrefill, signal });
  let finishReason: FinishReason = result.finishReason;
  if (stops.stopped) finishReason = 'stop';
  // Also after a 'stop' without an end token: a response format whose text is complete.
  else if (!flushed) emit(stops.push(decoder.flush()).emit + stops.flush(), [], []);
  const response: Response = {
    text,
    finishReason,
    tokenIds,
    usage: {
      promptTokens: request.inputIds.length,
      completionTokens: generated,
      imageTokens,
      cachedTokens: result.stats.reusedTokens,
    },
    ...(config.logprobs ? { logprobs } : {}),
    cache: { reusedPromptTokens: result.stats.reusedTokens, encodedTiles: result.stats.encodedTiles },
  };
  const timings = clock.timings(request.inputIds.length - result.stats.reusedTokens);
  if (timings) response.timings = timings;
  if (!tools) return response;
  const rest = tools.flush();
  if (rest && userOnChunk) userOnChunk(rest);
  return tools.finish(response);
}
