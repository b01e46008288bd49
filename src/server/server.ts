/**
 * `internvl serve`: an OpenAI-compatible HTTP server on node:http.
 *
 * Each request (each of its `n` choices) is one concurrent pipeline call; the engine shares decode
 * steps between concurrent calls. `maxBatchSize` bounds how many run at once, the rest wait in a
 * FIFO queue. A client that disconnects aborts its generations and frees their slots.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { existsSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import path from 'node:path';
import type { ResponseFormat } from '../engine/grammar-types.js';
import { InternVLError } from '../errors.js';
import { pipeline as loadPipeline, type Pipeline, type PipelineOptions } from '../pipeline/pipeline.js';
import { sendChatPage } from './chat-page.js';
import { HttpError, toOpenAIError } from './errors.js';
import { type Choice, collectChat, writeGeneration } from './generation.js';
import { readBody, sendJson, sseData } from './http.js';
import { DEFAULT_MEDIA_POLICY, type MediaPolicy } from './media.js';
import { ServerMetrics, SlotLimiter } from './metrics.js';
import {
  chatGeneration,
  choiceConfigs,
  completionGeneration,
  type MediaLimits,
  prepareMessages,
} from './openai.js';
import { RequestBodyParser } from './request-body.js';
import { responseFormatParam } from './response-format.js';
import { compileRequestTools } from './tool-calls.js';

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
  /** Largest request body. Default 16 MiB (room for an image of up to about 12 MiB as a base64 data URL). */
  bodyLimitBytes?: number;
  /** The whole request body must arrive within this time. Default 30 s. */
  bodyTimeoutMs?: number;
  /** /metrics also requires the API key (with `apiKey` set). Default false: /metrics is open. */
  metricsAuth?: boolean;
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

/** The default largest request body: room for an image of up to about 12 MiB as a base64 data URL. */
export const DEFAULT_BODY_LIMIT_BYTES = 16 * 1024 * 1024;

const digest = (key: string) => createHash('sha256').update(key).digest();

/** The path of a request target without trailing slashes; a target that is no URL path is '/invalid'. */
function requestPath(target: string | undefined): string {
  let pathname: string;
  try {
    pathname = new URL(target ?? '/', 'http://localhost').pathname;
  } catch {
    return '/invalid';
  }
  return pathname.replace(/\/+$/, '') || '/';
}

function decodePathPart(part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new HttpError(400, `the path part '${part.slice(0, 100)}' is not valid percent-encoding`, {
      openaiCode: 'invalid_url',
    });
  }
}

export class InternVLServer {
  readonly httpServer: http.Server;
  readonly metrics = new ServerMetrics();
  readonly limiter: SlotLimiter;
  /** Settles when the model has loaded (at once for a loaded pipeline); rejects if loading failed. */
  readonly ready: Promise<void>;
  readonly #inflight = new Set<AbortController>();
  #whenIdle: (() => void)[] = [];
  readonly #keys: Buffer[];
  readonly #metricsAuth: boolean;
  readonly #media: Omit<MediaLimits, 'defaultTiles'>;
  readonly #bodyLimit: number;
  readonly #bodyTimeout: number;
  readonly #bodies = new RequestBodyParser();
  readonly #log: (line: string) => void;
  readonly #created = Math.floor(Date.now() / 1000);
  readonly #loading: Promise<Pipeline>;
  #pipeline: Pipeline | undefined;
  #loadError: unknown;
  #draining = false;
  #closing: Promise<void> | undefined;

  /**
   * `pipeline` may still be loading: the server then listens at once, /ready answers 503 and
   * generation requests get 503 until it has loaded.
   */
  constructor(
    pipeline: Pipeline | Promise<Pipeline>,
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
    this.#metricsAuth = options.metricsAuth === true;
    if (this.#metricsAuth && keys.length === 0) {
      throw new InternVLError('BAD_INPUT', 'server option metricsAuth needs an apiKey to check');
    }
    const maxTilesPerImage = positive(options.maxTilesPerImage, 'maxTilesPerImage', 24);
    const maxVideoFrames = positive(options.maxVideoFrames, 'maxVideoFrames', 32);
    this.#media = {
      policy: { ...DEFAULT_MEDIA_POLICY, ...options.media },
      maxTilesPerImage,
      maxImages: positive(options.maxImages, 'maxImages', 16),
      maxVideoFrames,
      defaultVideoFrames: Math.min(8, maxVideoFrames),
    };
    this.#bodyLimit = positive(options.bodyLimitBytes, 'bodyLimitBytes', DEFAULT_BODY_LIMIT_BYTES);
    this.#bodyTimeout = positive(options.bodyTimeoutMs, 'bodyTimeoutMs', 30_000);
    this.#log = options.log ?? (() => {});
    this.httpServer = http.createServer((req, res) => void this.#handle(req, res));
    // Backstop for clients that never finish their headers or body; #readBody answers first.
    this.httpServer.requestTimeout = this.#bodyTimeout + 5_000;
    this.httpServer.headersTimeout = Math.min(60_000, this.#bodyTimeout + 1_000);
    if (pipeline instanceof Promise) {
      this.#loading = pipeline;
      this.ready = pipeline.then(
        (loaded) => {
          this.#pipeline = loaded;
          // Loading blocks the loop at times; the delay metric is about serving.
          this.metrics.eventLoopDelay.reset();
        },
        (err: unknown) => {
          this.#loadError = err;
          throw err;
        },
      );
      // Whoever awaits `ready` sees the failure; /ready and requests report it too.
      this.ready.catch(() => {});
    } else {
      this.#pipeline = pipeline;
      this.#loading = Promise.resolve(pipeline);
      this.ready = Promise.resolve();
    }
  }

  /** The loaded pipeline; a 503 while the model is loading or after it failed to load. */
  get pipeline(): Pipeline {
    if (this.#pipeline) return this.#pipeline;
    if (this.#loadError !== undefined) {
      const reason = this.#loadError instanceof Error ? this.#loadError.message : String(this.#loadError);
      throw new HttpError(503, `the model failed to load: ${reason}`, { openaiCode: 'model_not_ready' });
    }
    throw new HttpError(503, 'the model is still loading; retry when /ready answers 200', {
      openaiCode: 'model_not_ready',
    });
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

  /**
   * A graceful stop: stops accepting connections (new requests on open ones get 503), lets the
   * requests in flight finish for up to `timeoutMs`, then closes as `close` does. Resolves with how
   * many requests were still running at the deadline and had to be aborted.
   */
  async drain(timeoutMs: number): Promise<{ aborted: number }> {
    this.#draining = true;
    this.httpServer.close();
    this.httpServer.closeIdleConnections();
    if (this.#inflight.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => this.#whenIdle.push(resolve)),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, timeoutMs);
        }),
      ]);
      clearTimeout(timer);
    }
    const aborted = this.#inflight.size;
    await this.close();
    return { aborted };
  }

  /** Aborts running generations, closes connections, and closes the pipeline if the server loaded it. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#draining = true;
      for (const c of this.#inflight) c.abort(new InternVLError('ABORTED', 'the server is shutting down'));
      const closed = new Promise<void>((resolve) => this.httpServer.close(() => resolve()));
      this.httpServer.closeAllConnections();
      await closed;
      await this.#bodies.close();
      this.metrics.stop();
      if (!this.ownsPipeline) return;
      // A model still loading is closed once it has loaded; the caller need not wait for that.
      if (this.#pipeline) await this.#pipeline.close();
      else
        void this.#loading.then(
          (p) => p.close(),
          () => {},
        );
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
    const pathname = requestPath(req.url);
    const gone = new AbortController();
    this.#inflight.add(gone);
    let endpoint = pathname.startsWith('/v1/models') ? '/v1/models' : pathname;
    res.once('close', () => {
      this.#inflight.delete(gone);
      if (this.#inflight.size === 0) for (const resolve of this.#whenIdle.splice(0)) resolve();
      const disconnected = !res.writableFinished;
      if (disconnected) gone.abort(new InternVLError('ABORTED', 'the client disconnected'));
      const status = disconnected ? 499 : res.statusCode;
      this.metrics.countRequest(endpoint, status);
      const seconds = (performance.now() - started) / 1000;
      this.metrics.requestDuration.observe(seconds);
      this.#log(`${req.method} ${pathname} ${status} ${(seconds * 1000).toFixed(0)}ms`);
    });
    try {
      if (this.#draining && pathname !== '/health') {
        throw new HttpError(503, 'the server is shutting down', { openaiCode: 'shutting_down' });
      }
      const route = this.#route(req.method ?? 'GET', pathname);
      if (!route) {
        endpoint = 'unknown';
        throw new HttpError(404, `no route ${req.method} ${pathname}`, {
          code: 'NOT_FOUND',
          openaiCode: 'not_found',
        });
      }
      const needsKey = pathname.startsWith('/v1/') || (pathname === '/metrics' && this.#metricsAuth);
      if (needsKey && !this.#authorized(req)) {
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
    // After a 413 the rest of the body is read and dropped, so the client sees the reply (see readBody).
    const close = status === 408 || this.#draining ? { connection: 'close' } : undefined;
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
      '/ready': {
        GET: async (_req, res) => {
          // The getter throws the 503 that says why (loading, or failed to load).
          void this.pipeline;
          sendJson(res, 200, { status: 'ready' });
        },
      },
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
      const id = decodePathPart(pathname.slice('/v1/models/'.length));
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

  #mediaLimits(pipe: Pipeline): MediaLimits {
    return { ...this.#media, defaultTiles: pipe.options.maxTiles ?? pipe.config.max_dynamic_patch };
  }

  async #chat(
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
    started: number,
  ): Promise<void> {
    const pipe = this.pipeline;
    const raw = await readBody(req, this.#bodyLimit, this.#bodyTimeout);
    const body = await this.#bodies.parse(raw, 'chat');
    if (body.model != null && body.model !== this.modelName) throw this.#unknownModel(body.model);
    const gen = chatGeneration(body);
    const n = body.n ?? 1;
    if (gen.responseFormat) await this.#compileFormat(gen.responseFormat, responseFormatParam(body));
    await compileRequestTools(pipe, gen);
    const prepared = await prepareMessages(body, this.#mediaLimits(pipe), signal);
    try {
      const choices = choiceConfigs(gen, n).map(
        (g, index): Choice => ({
          index,
          run: (s, onChunk) => collectChat(pipe, prepared.messages, g, s, onChunk),
        }),
      );
      await writeGeneration(this, res, signal, started, choices, {
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
    const pipe = this.pipeline;
    const raw = await readBody(req, this.#bodyLimit, this.#bodyTimeout);
    const body = await this.#bodies.parse(raw, 'completion');
    if (body.model != null && body.model !== this.modelName) throw this.#unknownModel(body.model);
    const gen = completionGeneration(body);
    const n = body.n ?? 1;
    if (gen.responseFormat) await this.#compileFormat(gen.responseFormat, responseFormatParam(body));
    const prompts = typeof body.prompt === 'string' ? [body.prompt] : body.prompt;
    if (prompts.length * n > this.limiter.maxQueue) {
      throw new HttpError(
        400,
        `${prompts.length} prompts × n ${n} = ${prompts.length * n} generations, above the server's ` +
          `limit of ${this.limiter.maxQueue} per request`,
        { param: 'n', openaiCode: 'too_many_generations' },
      );
    }
    const configs = choiceConfigs(gen, n);
    const choices = prompts.flatMap((prompt, p) =>
      configs.map(
        (g, i): Choice => ({
          index: p * n + i,
          run: (s, onChunk) => pipe.complete(prompt, g, { signal: s, onChunk }),
        }),
      ),
    );
    await writeGeneration(this, res, signal, started, choices, {
      kind: 'text',
      stream: body.stream === true,
      includeUsage: body.stream_options?.include_usage === true,
      logprobs: body.logprobs != null,
      n,
      prompts: prompts.length,
    });
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
