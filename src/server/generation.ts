/**
 * One generation request's reply: each choice runs in a batch slot, and the answer goes out as one
 * JSON body or as an SSE stream (chat.completion.chunk / text_completion events).
 */
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { StreamChunk, TokenLogprobInfo } from '../pipeline/pipeline.js';
import { ToolCallAccumulator } from '../pipeline/tool-call-reader.js';
import type { BackendResult } from './backend.js';
import { HttpError } from './errors.js';
import { SSE_HEADERS, sendJson, sseData } from './http.js';
import type { ServerMetrics, SlotLimiter } from './metrics.js';
import { chatLogprobs, completionLogprobs, sumUsage } from './openai-responses.js';
import { toolCallDeltas } from './tool-calls.js';

export interface GenerationContext {
  readonly modelName: string;
  readonly metrics: ServerMetrics;
  readonly limiter: SlotLimiter;
}

export type ChoiceResult = BackendResult;

/** One generation of a request: `run` streams its chunks and resolves with how it ended. */
export interface Choice {
  index: number;
  run(signal: AbortSignal, onChunk: (chunk: StreamChunk) => void): Promise<ChoiceResult>;
}

export interface GenerationReply {
  kind: 'chat' | 'text';
  stream: boolean;
  includeUsage: boolean;
  logprobs: boolean;
  /** Choices per prompt (n): usage counts each prompt once. */
  n: number;
  prompts: number;
}

/** Logprobs of the chunk's generated tokens (an end-of-turn token's entry is not part of the text). */
function tokenLogprobs(chunk: StreamChunk): TokenLogprobInfo[] | undefined {
  return chunk.logprobs?.slice(0, chunk.tokenIds.length);
}

/** Runs every choice (each in a slot) and writes the JSON reply or the SSE stream. */
export async function writeGeneration(
  ctx: GenerationContext,
  res: ServerResponse,
  gone: AbortSignal,
  started: number,
  choices: Choice[],
  reply: GenerationReply,
): Promise<void> {
  const id = `${reply.kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replaceAll('-', '')}`;
  const created = Math.floor(Date.now() / 1000);
  const object = reply.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
  const base = { id, object, created, model: ctx.modelName };
  const usageField = reply.stream && reply.includeUsage ? { usage: null } : {};
  const failed = new AbortController();
  const signal = AbortSignal.any([gone, failed.signal]);
  const texts = choices.map(() => '');
  const toolCalls = choices.map(() => new ToolCallAccumulator());
  const logprobs: TokenLogprobInfo[][] = choices.map(() => []);
  let opened = false;
  const open = () => {
    if (opened || !reply.stream) return;
    opened = true;
    res.writeHead(200, SSE_HEADERS);
    if (reply.kind === 'chat') {
      for (const c of choices) {
        sseData(res, {
          ...base,
          choices: [
            {
              index: c.index,
              delta: { role: 'assistant', content: '' },
              logprobs: null,
              finish_reason: null,
            },
          ],
          ...usageField,
        });
      }
    }
  };
  const onChunk = (choice: number, chunk: StreamChunk) => {
    const kept = tokenLogprobs(chunk);
    const offset = texts[choice].length;
    texts[choice] += chunk.text;
    if (chunk.toolCalls) toolCalls[choice].add(chunk.toolCalls);
    if (kept) logprobs[choice].push(...kept);
    if (!reply.stream || res.destroyed || (!chunk.text && !kept?.length && !chunk.toolCalls)) return;
    open();
    const choiceLogprobs = kept
      ? reply.kind === 'chat'
        ? chatLogprobs(kept)
        : completionLogprobs(kept, offset)
      : null;
    const delta = chunk.toolCalls
      ? { ...(chunk.text ? { content: chunk.text } : {}), tool_calls: toolCallDeltas(chunk.toolCalls) }
      : { content: chunk.text };
    const payload =
      reply.kind === 'chat'
        ? { index: choice, delta, logprobs: choiceLogprobs, finish_reason: null }
        : { index: choice, text: chunk.text, logprobs: choiceLogprobs, finish_reason: null };
    sseData(res, { ...base, choices: [payload], ...usageField });
  };
  const results = await Promise.allSettled(
    choices.map(async (choice) => {
      try {
        const result = await runInSlot(ctx, choice, signal, started, onChunk);
        if (reply.stream && !res.destroyed) {
          open();
          const end =
            reply.kind === 'chat'
              ? { index: choice.index, delta: {}, logprobs: null, finish_reason: result.finishReason }
              : { index: choice.index, text: '', logprobs: null, finish_reason: result.finishReason };
          sseData(res, { ...base, choices: [end], ...usageField });
        }
        return result;
      } catch (err) {
        failed.abort(err);
        throw err;
      }
    }),
  );
  if (gone.aborted) {
    ctx.metrics.abortedRequests++;
    return;
  }
  const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failure) throw failure.reason;
  const usages = results.map((r) => (r as PromiseFulfilledResult<ChoiceResult>).value.usage);
  const usage = sumUsage(usages, reply.prompts);
  if (reply.stream) {
    open();
    if (reply.includeUsage) sseData(res, { ...base, choices: [], usage });
    sseData(res, '[DONE]');
    res.end();
    return;
  }
  const finishReasons = results.map((r) => (r as PromiseFulfilledResult<ChoiceResult>).value.finishReason);
  sendJson(res, 200, {
    id,
    object: reply.kind === 'chat' ? 'chat.completion' : 'text_completion',
    created,
    model: ctx.modelName,
    choices: choices.map((c, i) =>
      reply.kind === 'chat'
        ? {
            index: c.index,
            message: chatMessage(texts[i], toolCalls[i]),
            logprobs: reply.logprobs ? chatLogprobs(logprobs[i]) : null,
            finish_reason: finishReasons[i],
          }
        : {
            index: c.index,
            text: texts[i],
            logprobs: reply.logprobs ? completionLogprobs(logprobs[i], 0) : null,
            finish_reason: finishReasons[i],
          },
    ),
    usage,
  });
}

/** The reply's message: with tool calls, content is null unless there was text beside them. */
function chatMessage(text: string, tools: ToolCallAccumulator) {
  if (tools.calls.length === 0) return { role: 'assistant', content: text };
  return { role: 'assistant', content: text || null, tool_calls: tools.calls };
}

async function runInSlot(
  ctx: GenerationContext,
  choice: Choice,
  signal: AbortSignal,
  started: number,
  onChunk: (choice: number, chunk: StreamChunk) => void,
): Promise<ChoiceResult> {
  const release = await ctx.limiter.acquire(
    signal,
    () =>
      new HttpError(503, `the server is busy: ${ctx.limiter.queued} sequences are already waiting`, {
        openaiCode: 'server_overloaded',
      }),
  );
  let last: number | undefined;
  try {
    const result = await choice.run(signal, (chunk) => {
      if (chunk.tokenIds.length > 0) {
        const now = performance.now();
        if (last === undefined) ctx.metrics.timeToFirstToken.observe((now - started) / 1000);
        else ctx.metrics.interTokenLatency.observe((now - last) / 1000 / chunk.tokenIds.length);
        last = now;
      }
      onChunk(choice.index, chunk);
    });
    ctx.metrics.promptTokens += result.usage.promptTokens;
    ctx.metrics.cachedPromptTokens += result.usage.cachedTokens;
    ctx.metrics.completionTokens += result.usage.completionTokens;
    return result;
  } finally {
    release();
  }
}
