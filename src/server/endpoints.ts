/**
 * The generation endpoints: a request body → validated request → the choices each backend call
 * makes (`n` per prompt) → the reply written by generation.ts. Also the model card and its 404.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ResponseFormat } from '../engine/grammar-types.js';
import { InternVLError } from '../errors.js';
import type { ServerBackend } from './backend.js';
import { HttpError } from './errors.js';
import { type Choice, writeGeneration } from './generation.js';
import { readBody } from './http.js';
import type { ServerMetrics, SlotLimiter } from './metrics.js';
import { chatGeneration, choiceConfigs, completionGeneration } from './openai-generation.js';
import { prepareMessages } from './openai-messages.js';
import type { ServerLimits } from './options.js';
import type { RequestBodyParser, RequestKinds } from './request-body.js';
import { responseFormatParam } from './response-format.js';
import { compileRequestTools } from './tool-calls.js';

/** What a generation endpoint reads from the server. */
export interface EndpointContext {
  readonly modelName: string;
  readonly metrics: ServerMetrics;
  readonly limiter: SlotLimiter;
  readonly limits: ServerLimits;
  readonly bodies: RequestBodyParser;
  /** The loaded backend; throws the 503 that says why when there is none yet. */
  readonly backend: ServerBackend;
}

/** One request: its body, the disconnect signal, and when it arrived (for time to first token). */
export interface EndpointRequest {
  req: IncomingMessage;
  res: ServerResponse;
  signal: AbortSignal;
  started: number;
}

export function modelCard(modelName: string, created: number) {
  return { id: modelName, object: 'model', created, owned_by: 'internvl-ts' };
}

export function unknownModel(name: string, served: string): HttpError {
  return new HttpError(404, `the model '${name}' does not exist; this server serves '${served}'`, {
    code: 'NOT_FOUND',
    param: 'model',
    openaiCode: 'model_not_found',
  });
}

/** A generation request's validated body; a model other than the one served is a 404. */
async function requestBody<K extends keyof RequestKinds>(
  ctx: EndpointContext,
  req: IncomingMessage,
  kind: K,
): Promise<RequestKinds[K]> {
  const raw = await readBody(req, ctx.limits.bodyLimit, ctx.limits.bodyTimeout);
  const body = await ctx.bodies.parse(raw, kind);
  if (body.model != null && body.model !== ctx.modelName) throw unknownModel(body.model, ctx.modelName);
  return body;
}

/** Compiles the request's response format (cached) before any work, so a bad schema is a 400 naming it. */
async function compileFormat(
  backend: ServerBackend,
  format: ResponseFormat | undefined,
  body: Parameters<typeof responseFormatParam>[0],
): Promise<void> {
  if (!format) return;
  const param = responseFormatParam(body);
  try {
    await backend.compileResponseFormat(format);
  } catch (err) {
    if (!(err instanceof InternVLError) || err.code !== 'BAD_INPUT') throw err;
    throw new HttpError(400, `${param}: ${err.message}`, { param, openaiCode: 'invalid_value', cause: err });
  }
}

export async function chatCompletions(ctx: EndpointContext, request: EndpointRequest): Promise<void> {
  const { req, res, signal, started } = request;
  const backend = ctx.backend;
  const body = await requestBody(ctx, req, 'chat');
  const gen = chatGeneration(body);
  const n = body.n ?? 1;
  await compileFormat(backend, gen.responseFormat, body);
  await compileRequestTools(backend, gen);
  const limits = { ...ctx.limits.media, defaultTiles: backend.defaultImageTiles };
  const prepared = await prepareMessages(body, limits, signal);
  try {
    const choices = choiceConfigs(gen, n).map(
      (g, index): Choice => ({
        index,
        run: (s, onChunk) => backend.chat(prepared.messages, g, { signal: s, onChunk }),
      }),
    );
    await writeGeneration(ctx, res, signal, started, choices, {
      kind: 'chat',
      stream: body.stream === true,
      includeUsage: body.stream_options?.include_usage === true,
      logprobs: body.logprobs === true,
      n,
      prompts: 1,
    });
  } catch (err) {
    // Errors about a downloaded video name the request's field, not the server's temporary file.
    if (err instanceof Error) err.message = prepared.hidePaths(err.message);
    throw err;
  } finally {
    await prepared.release();
  }
}

export async function completions(ctx: EndpointContext, request: EndpointRequest): Promise<void> {
  const { req, res, signal, started } = request;
  const backend = ctx.backend;
  const body = await requestBody(ctx, req, 'completion');
  const gen = completionGeneration(body);
  const n = body.n ?? 1;
  await compileFormat(backend, gen.responseFormat, body);
  const prompts = typeof body.prompt === 'string' ? [body.prompt] : body.prompt;
  if (prompts.length * n > ctx.limiter.maxQueue) {
    throw new HttpError(
      400,
      `${prompts.length} prompts × n ${n} = ${prompts.length * n} generations, above the server's ` +
        `limit of ${ctx.limiter.maxQueue} per request`,
      { param: 'n', openaiCode: 'too_many_generations' },
    );
  }
  const configs = choiceConfigs(gen, n);
  const choices = prompts.flatMap((prompt, p) =>
    configs.map(
      (g, i): Choice => ({
        index: p * n + i,
        run: (s, onChunk) => backend.complete(prompt, g, { signal: s, onChunk }),
      }),
    ),
  );
  await writeGeneration(ctx, res, signal, started, choices, {
    kind: 'text',
    stream: body.stream === true,
    includeUsage: body.stream_options?.include_usage === true,
    logprobs: body.logprobs != null,
    n,
    prompts: prompts.length,
  });
}
