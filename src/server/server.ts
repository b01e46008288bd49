/**
 * `internvl serve`: an OpenAI-compatible HTTP server on node:http.
 *
 * Each request (each of its `n` choices) is one concurrent pipeline call; the engine shares decode
 * steps between concurrent calls. `maxBatchSize` bounds how many run at once, the rest wait in a
 * FIFO queue. A client that disconnects aborts its generations and frees their slots.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { existsSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import path from 'node:path';
import type { ResponseFormat } from '../engine/grammar-types.js';
import { InternVLError } from '../errors.js';
import type { ChatMessage } from '../pipeline/conversation.js';
import type { GenerationConfigInput } from '../pipeline/generation-config.js';
import {
  type FinishReason,
  pipeline as loadPipeline,
  type Pipeline,
  type PipelineOptions,
  type StreamChunk,
  type TokenLogprobInfo,
  type Usage,
} from '../pipeline/pipeline.js';
import { sendChatPage } from './chat-page.js';
import { HttpError, toOpenAIError } from './errors.js';
import { DEFAULT_MEDIA_POLICY, type MediaPolicy } from './media.js';
import { ServerMetrics, SlotLimiter } from './metrics.js';
import {
  chatCompletionRequestSchema,
  chatGeneration,
  chatLogprobs,
  choiceConfigs,
  completionGeneration,
  completionLogprobs,
  completionRequestSchema,
  type MediaLimits,
  parseRequest,
  prepareMessages,
  sumUsage,
} from './openai.js';
import { responseFormatParam } from './response-format.js';

export interface ServerOptions {
  /** The id in /v1/models and the `model` requests must name; default the model path's last part. */
  modelName?: string;
  /** Requests to /v1/* must send `Authorization: Bearer <key>` with one of these. */
  apiKey?: string | string[];
  /** Sequences generating at once; more wait in a FIFO queue. Default 8. */
  maxBatchSize?: number;
  /** Sequences that may wait; beyond it requests get 503. Default 1024. */
  maxQueue?: number;
  /** Largest tile budget one image may ask for (max_dynamic_patch, detail). Default 24. */
  maxTilesPerImage?: number;
  /** Images per request. Default 16. */
  maxImages?: number;
  /** Frames sampled from one video. Default 32 (8 when a part names no num_segments). */
  maxVideoFrames?: number;
  /** Largest request body. Default 64 MiB. */
  bodyLimitBytes?: number;
  /** The whole request body must arrive within this time. Default 30 s. */
  bodyTimeoutMs?: number;
  /** Remote and local media policy (domains, local files, size and time limits). */
  media?: Partial<MediaPolicy>;
  /** Pipeline options when `createServer` is given a model path. */
  pipeline?: PipelineOptions;
  /** One line per request and for internal errors; default silent. */
  log?: (line: string) => void;
}

export interface ServerAddress {
  host: string;
  port: number;
  /** `http://host:port`, the base of `/v1`. */
  url: string;
}

interface ChoiceResult {
  finishReason: FinishReason;
  usage: Usage;
}

/** One generation of a request: `run` streams its chunks and resolves with how it ended. */
interface Choice {
  index: number;
  run(signal: AbortSignal, onChunk: (chunk: StreamChunk) => void): Promise<ChoiceResult>;
}

interface GenerationReply {
  kind: 'chat' | 'text';
  stream: boolean;
  includeUsage: boolean;
  logprobs: boolean;
  /** Choices per prompt (n): usage counts each prompt once. */
  n: number;
  prompts: number;
}

const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  connection: 'keep-alive',
  'x-accel-buffering': 'no',
};

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function sseData(res: ServerResponse, payload: unknown): void {
  res.write(`data: ${typeof payload === 'string' ? payload : JSON.stringify(payload)}\n\n`);
}

function readBody(req: IncomingMessage, limit: number, timeoutMs: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (declared > limit) {
    return Promise.reject(
      new HttpError(413, `the request body is ${declared} bytes, above the limit of ${limit}`, {
        openaiCode: 'request_too_large',
      }),
    );
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    const finish = (err?: unknown) => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      if (err) {
        // Discard the rest without buffering it; the connection closes after the reply.
        req.resume();
        reject(err);
      } else resolve(Buffer.concat(chunks));
    };
    const timer = setTimeout(
      () =>
        finish(
          new HttpError(408, `the request body did not arrive within ${timeoutMs} ms`, {
            openaiCode: 'request_timeout',
          }),
        ),
      timeoutMs,
    );
    const onData = (chunk: Buffer) => {
      total += chunk.length;
      if (total > limit) {
        finish(
          new HttpError(413, `the request body is larger than the limit of ${limit} bytes`, {
            openaiCode: 'request_too_large',
          }),
        );
      } else chunks.push(chunk);
    };
    const onEnd = () => finish();
    const onError = (err: Error) => finish(err);
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
  });
}

function parseJson(body: Buffer): unknown {
  if (body.length === 0) throw new HttpError(400, 'the request body is empty; expected a JSON object');
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, `the request body is not valid JSON: ${(err as Error).message}`, {
      openaiCode: 'invalid_json',
    });
  }
}

const digest = (key: string) => createHash('sha256').update(key).digest();

async function collectChat(
  pipe: Pipeline,
  messages: ChatMessage[],
  gen: GenerationConfigInput,
  signal: AbortSignal,
  onChunk: (chunk: StreamChunk) => void,
): Promise<ChoiceResult> {
  let last: StreamChunk | undefined;
  for await (const chunk of pipe.stream(messages, gen, { signal })) {
    if (chunk.finishReason) last = chunk;
    else onChunk(chunk);
  }
  if (!last?.finishReason || !last.usage)
    throw new InternVLError('INTERNAL', 'the stream ended without its final chunk');
  return { finishReason: last.finishReason, usage: last.usage };
}

/** Logprobs of the chunk's generated tokens (an end-of-turn token's entry is not part of the text). */
function tokenLogprobs(chunk: StreamChunk): TokenLogprobInfo[] | undefined {
  return chunk.logprobs?.slice(0, chunk.tokenIds.length);
}

export class InternVLServer {
  readonly httpServer: http.Server;
  readonly metrics = new ServerMetrics();
  readonly limiter: SlotLimiter;
  readonly #inflight = new Set<AbortController>();
  readonly #keys: Buffer[];
  readonly #media: MediaLimits;
  readonly #bodyLimit: number;
  readonly #bodyTimeout: number;
  readonly #log: (line: string) => void;
  readonly #created = Math.floor(Date.now() / 1000);
  #closing: Promise<void> | undefined;

  constructor(
    readonly pipeline: Pipeline,
    readonly modelName: string,
    options: ServerOptions,
    private readonly ownsPipeline: boolean,
  ) {
    const positive = (value: number | undefined, name: string, fallback: number) => {
      const v = value ?? fallback;
      if (!Number.isInteger(v) || v < 1) {
        throw new InternVLError(
          'BAD_INPUT',
          `server option ${name} must be a positive integer, got ${value}`,
        );
      }
      return v;
    };
    this.limiter = new SlotLimiter(
      positive(options.maxBatchSize, 'maxBatchSize', 8),
      positive(options.maxQueue, 'maxQueue', 1024),
    );
    const keys = options.apiKey === undefined ? [] : [options.apiKey].flat();
    if (keys.some((k) => typeof k !== 'string' || k.length === 0)) {
      throw new InternVLError('BAD_INPUT', 'server option apiKey must be a non-empty string');
    }
    this.#keys = keys.map(digest);
    const maxTilesPerImage = positive(options.maxTilesPerImage, 'maxTilesPerImage', 24);
    const maxVideoFrames = positive(options.maxVideoFrames, 'maxVideoFrames', 32);
    this.#media = {
      policy: { ...DEFAULT_MEDIA_POLICY, ...options.media },
      defaultTiles: pipeline.options.maxTiles ?? pipeline.config.max_dynamic_patch,
      maxTilesPerImage,
      maxImages: positive(options.maxImages, 'maxImages', 16),
      maxVideoFrames,
      defaultVideoFrames: Math.min(8, maxVideoFrames),
    };
    this.#bodyLimit = positive(options.bodyLimitBytes, 'bodyLimitBytes', 64 * 1024 * 1024);
    this.#bodyTimeout = positive(options.bodyTimeoutMs, 'bodyTimeoutMs', 30_000);
    this.#log = options.log ?? (() => {});
    this.httpServer = http.createServer((req, res) => void this.#handle(req, res));
    // Backstop for clients that never finish their headers or body; #readBody answers first.
    this.httpServer.requestTimeout = this.#bodyTimeout + 5_000;
    this.httpServer.headersTimeout = Math.min(60_000, this.#bodyTimeout + 1_000);
  }

  /** Starts listening (port 0 picks a free port). */
  listen(port = 23333, host = '127.0.0.1'): Promise<ServerAddress> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) =>
        reject(new InternVLError('BAD_INPUT', `cannot listen on ${host}:${port}: ${err.message}`));
      this.httpServer.once('error', onError);
      this.httpServer.listen(port, host, () => {
        this.httpServer.off('error', onError);
        const address = this.httpServer.address();
        const bound = typeof address === 'object' && address ? address.port : port;
        const shown = host.includes(':') ? `[${host}]` : host;
        resolve({ host, port: bound, url: `http://${shown}:${bound}` });
      });
    });
  }

  /** Aborts running generations, closes connections, and closes the pipeline if the server loaded it. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const c of this.#inflight) c.abort(new InternVLError('ABORTED', 'the server is shutting down'));
      const closed = new Promise<void>((resolve) => this.httpServer.close(() => resolve()));
      this.httpServer.closeAllConnections();
      await closed;
      if (this.ownsPipeline) await this.pipeline.close();
    })();
    return this.#closing;
  }

  #authorized(req: IncomingMessage): boolean {
    if (this.#keys.length === 0) return true;
    const match = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '');
    if (!match) return false;
    const given = digest(match[1].trim());
    return this.#keys.some((k) => timingSafeEqual(k, given));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    const pathname = new URL(req.url ?? '/', 'http://localhost').pathname.replace(/\/+$/, '') || '/';
    const gone = new AbortController();
    this.#inflight.add(gone);
    let endpoint = pathname.startsWith('/v1/models') ? '/v1/models' : pathname;
    res.once('close', () => {
      this.#inflight.delete(gone);
      const disconnected = !res.writableFinished;
      if (disconnected) gone.abort(new InternVLError('ABORTED', 'the client disconnected'));
      const status = disconnected ? 499 : res.statusCode;
      this.metrics.countRequest(endpoint, status);
      const seconds = (performance.now() - started) / 1000;
      this.metrics.requestDuration.observe(seconds);
      this.#log(`${req.method} ${pathname} ${status} ${(seconds * 1000).toFixed(0)}ms`);
    });
    try {
      const route = this.#route(req.method ?? 'GET', pathname);
      if (!route) {
        endpoint = 'unknown';
        throw new HttpError(404, `no route ${req.method} ${pathname}`, {
          code: 'NOT_FOUND',
          openaiCode: 'not_found',
        });
      }
      if (pathname.startsWith('/v1/') && !this.#authorized(req)) {
        throw new HttpError(401, 'missing or invalid API key (send Authorization: Bearer <key>)', {
          code: 'UNAUTHORIZED',
          openaiCode: 'invalid_api_key',
        });
      }
      await route(req, res, gone.signal, started);
    } catch (err) {
      this.#fail(res, err);
    }
  }

  #fail(res: ServerResponse, err: unknown): void {
    const { status, body } = toOpenAIError(err);
    if (status >= 500 && status !== 503) {
      this.#log(`internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    }
    if (res.headersSent) {
      if (!res.writableEnded && !res.destroyed) {
        sseData(res, body);
        sseData(res, '[DONE]');
        res.end();
      }
      return;
    }
    if (res.destroyed) return;
    const close = status === 408 || status === 413 ? { connection: 'close' } : undefined;
    sendJson(res, status, body, close);
  }

  #route(
    method: string,
    pathname: string,
  ):
    | ((req: IncomingMessage, res: ServerResponse, signal: AbortSignal, started: number) => Promise<void>)
    | undefined {
    const routes: Record<
      string,
      Record<
        string,
        (req: IncomingMessage, res: ServerResponse, signal: AbortSignal, started: number) => Promise<void>
      >
    > = {
      '/': { GET: async (_req, res) => sendChatPage(res) },
      '/health': { GET: async (_req, res) => sendJson(res, 200, { status: 'ok' }) },
      '/metrics': {
        GET: async (_req, res) => {
          this.metrics.queueDepth = this.limiter.queued;
          this.metrics.runningSequences = this.limiter.running;
          const text = this.metrics.render();
          res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
          res.end(text);
        },
      },
      '/v1/models': {
        GET: async (_req, res) => sendJson(res, 200, { object: 'list', data: [this.#modelCard()] }),
      },
      '/v1/chat/completions': { POST: (req, res, signal, started) => this.#chat(req, res, signal, started) },
      '/v1/completions': {
        POST: (req, res, signal, started) => this.#completions(req, res, signal, started),
      },
    };
    if (pathname.startsWith('/v1/models/')) {
      const id = decodeURIComponent(pathname.slice('/v1/models/'.length));
      return async (_req, res) => {
        if (method !== 'GET')
          throw new HttpError(405, `${method} is not allowed on /v1/models/{id}; use GET`);
        if (id !== this.modelName) throw this.#unknownModel(id);
        sendJson(res, 200, this.#modelCard());
      };
    }
    const handlers = routes[pathname];
    if (!handlers) return undefined;
    const handler = handlers[method];
    if (handler) return handler;
    return async () => {
      throw new HttpError(
        405,
        `${method} is not allowed on ${pathname}; use ${Object.keys(handlers).join(', ')}`,
        {
          openaiCode: 'method_not_allowed',
        },
      );
    };
  }

  #modelCard() {
    return { id: this.modelName, object: 'model', created: this.#created, owned_by: 'internvl-ts' };
  }

  #unknownModel(name: string): HttpError {
    return new HttpError(404, `the model '${name}' does not exist; this server serves '${this.modelName}'`, {
      code: 'NOT_FOUND',
      param: 'model',
      openaiCode: 'model_not_found',
    });
  }

  async #body(req: IncomingMessage): Promise<unknown> {
    return parseJson(await readBody(req, this.#bodyLimit, this.#bodyTimeout));
  }

  async #chat(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
    started: number,
  ): Promise<void> {
    const body = parseRequest(chatCompletionRequestSchema, await this.#body(req));
    if (body.model != null && body.model !== this.modelName) throw this.#unknownModel(body.model);
    const gen = chatGeneration(body);
    const n = body.n ?? 1;
    if (gen.responseFormat) await this.#compileFormat(gen.responseFormat, responseFormatParam(body));
    const prepared = await prepareMessages(body, this.#media, signal);
    try {
      const choices = choiceConfigs(gen, n).map(
        (g, index): Choice => ({
          index,
          run: (s, onChunk) => collectChat(this.pipeline, prepared.messages, g, s, onChunk),
        }),
      );
      await this.#generate(res, signal, started, choices, {
        kind: 'chat',
        stream: body.stream === true,
        includeUsage: body.stream_options?.include_usage === true,
        logprobs: body.logprobs === true,
        n,
        prompts: 1,
      });
    } finally {
      await prepared.release();
    }
  }

  /** Compiles a response format (cached) before any work, so a bad schema is a 400 naming it. */
  async #compileFormat(format: ResponseFormat, param: string): Promise<void> {
    try {
      await this.pipeline.compileResponseFormat(format);
    } catch (err) {
      if (!(err instanceof InternVLError) || err.code !== 'BAD_INPUT') throw err;
      throw new HttpError(400, `${param}: ${err.message}`, {
        param,
        openaiCode: 'invalid_value',
        cause: err,
      });
    }
  }

  async #completions(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
    started: number,
  ): Promise<void> {
    const body = parseRequest(completionRequestSchema, await this.#body(req));
    if (body.model != null && body.model !== this.modelName) throw this.#unknownModel(body.model);
    const gen = completionGeneration(body);
    const n = body.n ?? 1;
    if (gen.responseFormat) await this.#compileFormat(gen.responseFormat, responseFormatParam(body));
    const prompts = typeof body.prompt === 'string' ? [body.prompt] : body.prompt;
    const configs = choiceConfigs(gen, n);
    const choices = prompts.flatMap((prompt, p) =>
      configs.map(
        (g, i): Choice => ({
          index: p * n + i,
          run: (s, onChunk) => this.pipeline.complete(prompt, g, { signal: s, onChunk }),
        }),
      ),
    );
    await this.#generate(res, signal, started, choices, {
      kind: 'text',
      stream: body.stream === true,
      includeUsage: body.stream_options?.include_usage === true,
      logprobs: body.logprobs != null,
      n,
      prompts: prompts.length,
    });
  }

  /** Runs every choice (each in a slot) and writes the JSON reply or the SSE stream. */
  async #generate(
    res: ServerResponse,
    gone: AbortSignal,
    started: number,
    choices: Choice[],
    reply: GenerationReply,
  ): Promise<void> {
    const id = `${reply.kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replaceAll('-', '')}`;
    const created = Math.floor(Date.now() / 1000);
    const object = reply.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
    const base = { id, object, created, model: this.modelName };
    const usageField = reply.stream && reply.includeUsage ? { usage: null } : {};
    const failed = new AbortController();
    const signal = AbortSignal.any([gone, failed.signal]);
    const texts = choices.map(() => '');
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
      if (kept) logprobs[choice].push(...kept);
      if (!reply.stream || res.destroyed || (!chunk.text && !kept?.length)) return;
      open();
      const choiceLogprobs = kept
        ? reply.kind === 'chat'
          ? chatLogprobs(kept)
          : completionLogprobs(kept, offset)
        : null;
      const payload =
        reply.kind === 'chat'
          ? { index: choice, delta: { content: chunk.text }, logprobs: choiceLogprobs, finish_reason: null }
          : { index: choice, text: chunk.text, logprobs: choiceLogprobs, finish_reason: null };
      sseData(res, { ...base, choices: [payload], ...usageField });
    };
    const results = await Promise.allSettled(
      choices.map(async (choice) => {
        try {
          const result = await this.#runInSlot(choice, signal, started, onChunk);
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
      this.metrics.abortedRequests++;
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
      model: this.modelName,
      choices: choices.map((c, i) =>
        reply.kind === 'chat'
          ? {
              index: c.index,
              message: { role: 'assistant', content: texts[i] },
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

  async #runInSlot(
    choice: Choice,
    signal: AbortSignal,
    started: number,
    onChunk: (choice: number, chunk: StreamChunk) => void,
  ): Promise<ChoiceResult> {
    const release = await this.limiter.acquire(
      signal,
      () =>
        new HttpError(503, `the server is busy: ${this.limiter.queued} sequences are already waiting`, {
          openaiCode: 'server_overloaded',
        }),
    );
    let last: number | undefined;
    try {
      const result = await choice.run(signal, (chunk) => {
        if (chunk.tokenIds.length > 0) {
          const now = performance.now();
          if (last === undefined) this.metrics.timeToFirstToken.observe((now - started) / 1000);
          else this.metrics.interTokenLatency.observe((now - last) / 1000 / chunk.tokenIds.length);
          last = now;
        }
        onChunk(choice.index, chunk);
      });
      this.metrics.promptTokens += result.usage.promptTokens;
      this.metrics.completionTokens += result.usage.completionTokens;
      return result;
    } finally {
      release();
    }
  }
}

/** The id a model is served under: a hub id as given (`Org/Name`), else the folder's name. */
export function defaultModelName(model: string): string {
  const hubId = /^[\w.-]+\/[\w.-]+(@[\w./-]+)?$/.test(model) && !existsSync(model);
  return hubId ? model : path.basename(model.replace(/[/\\]+$/, ''));
}

/**
 * A server over a loaded pipeline (the caller keeps ownership), or over a model path or hub id that
 * it loads (and closes with the server). Call `listen` to start serving.
 */
export async function createServer(
  pipelineOrModel: Pipeline | string,
  options: ServerOptions = {},
): Promise<InternVLServer> {
  if (typeof pipelineOrModel === 'string') {
    const pipe = await loadPipeline(pipelineOrModel, options.pipeline);
    try {
      const name = options.modelName ?? defaultModelName(pipelineOrModel);
      return new InternVLServer(pipe, name, options, true);
    } catch (err) {
      await pipe.close();
      throw err;
    }
  }
  const name = options.modelName ?? path.basename(pipelineOrModel.model.dir);
  return new InternVLServer(pipelineOrModel, name, options, false);
}
