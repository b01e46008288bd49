/**
 * `internvl serve`: an OpenAI-compatible HTTP server on node:http.
 *
 * Each request (each of its `n` choices) is one concurrent backend call; the engine shares decode
 * steps between concurrent calls. `maxBatchSize` bounds how many run at once, the rest wait in a
 * FIFO queue. A client that disconnects aborts its generations and frees their slots.
 *
 * This file is the HTTP side (routes, auth, lifecycle); endpoints.ts turns requests into backend
 * calls, generation.ts fans the choices out and writes the reply, backend.ts is what a model provides.
 */
import { existsSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { pipeline as loadPipeline, Pipeline } from '../pipeline/pipeline.js';
import type { ServerBackend } from './backend.js';
import { sendChatPage } from './chat-page.js';
import { chatCompletions, completions, type EndpointContext, modelCard, unknownModel } from './endpoints.js';
import { HttpError, toOpenAIError } from './errors.js';
import { sendJson, sseData } from './http.js';
import { ServerMetrics, SlotLimiter } from './metrics.js';
import { authorized, resolveServerOptions, type ServerLimits, type ServerOptions } from './options.js';
import { pipelineBackend } from './pipeline-backend.js';
import { RequestBodyParser } from './request-body.js';
import { findRoute, type Handler, modelIdOfPath, type RouteTable, requestPath } from './routes.js';

export type { ServerBackend } from './backend.js';
export { DEFAULT_BODY_LIMIT_BYTES, type ServerOptions } from './options.js';
export { pipelineBackend } from './pipeline-backend.js';

export interface ServerAddress {
  host: string;
  port: number;
  /** `http://host:port`, the base of `/v1`. */
  url: string;
}

export class InternVLServer implements EndpointContext {
  readonly httpServer: http.Server;
  readonly metrics = new ServerMetrics();
  readonly limiter: SlotLimiter;
  readonly limits: ServerLimits;
  readonly bodies = new RequestBodyParser();
  /** Settles when the model has loaded (at once for a loaded backend); rejects if loading failed. */
  readonly ready: Promise<void>;
  readonly #inflight = new Set<AbortController>();
  #whenIdle: (() => void)[] = [];
  readonly #created = Math.floor(Date.now() / 1000);
  readonly #loading: Promise<ServerBackend>;
  readonly #routes: RouteTable;
  #backend: ServerBackend | undefined;
  #loadError: unknown;
  #draining = false;
  #closing: Promise<void> | undefined;

  /**
   * `backend` may still be loading: the server then listens at once, /ready answers 503 and
   * generation requests get 503 until it has loaded. With `ownsBackend`, `close` closes it.
   */
  constructor(
    backend: ServerBackend | Promise<ServerBackend>,
    readonly modelName: string,
    options: ServerOptions,
    private readonly ownsBackend: boolean,
  ) {
    this.limits = resolveServerOptions(options);
    this.limiter = new SlotLimiter(this.limits.slots, this.limits.maxQueue);
    this.#routes = this.#routeTable();
    this.httpServer = http.createServer((req, res) => void this.#handle(req, res));
    // Backstop for clients that never finish their headers or body; readBody answers first.
    this.httpServer.requestTimeout = this.limits.bodyTimeout + 5_000;
    this.httpServer.headersTimeout = Math.min(60_000, this.limits.bodyTimeout + 1_000);
    if (backend instanceof Promise) {
      this.#loading = backend;
      this.ready = backend.then(
        (loaded) => {
          this.#backend = loaded;
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
      this.#backend = backend;
      this.#loading = Promise.resolve(backend);
      this.ready = Promise.resolve();
    }
  }

  /** The loaded backend; a 503 while the model is loading or after it failed to load. */
  get backend(): ServerBackend {
    if (this.#backend) return this.#backend;
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

  /** Aborts running generations, closes connections, and closes the backend if the server owns it. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#draining = true;
      for (const c of this.#inflight) c.abort(new InternVLError('ABORTED', 'the server is shutting down'));
      const closed = new Promise<void>((resolve) => this.httpServer.close(() => resolve()));
      this.httpServer.closeAllConnections();
      await closed;
      await this.bodies.close();
      this.metrics.stop();
      if (!this.ownsBackend) return;
      // A model still loading is closed once it has loaded; the caller need not wait for that.
      if (this.#backend) await this.#backend.close();
      else
        void this.#loading.then(
          (b) => b.close(),
          () => {},
        );
    })();
    return this.#closing;
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
      this.limits.log(`${req.method} ${pathname} ${status} ${(seconds * 1000).toFixed(0)}ms`);
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
      const needsKey = pathname.startsWith('/v1/') || (pathname === '/metrics' && this.limits.metricsAuth);
      if (needsKey && !authorized(req, this.limits.keys)) {
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
      this.limits.log(`internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
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

  #routeTable(): RouteTable {
    return {
      '/': { GET: async (_req, res) => sendChatPage(res) },
      '/health': { GET: async (_req, res) => sendJson(res, 200, { status: 'ok' }) },
      '/ready': {
        GET: async (_req, res) => {
          // The getter throws the 503 that says why (loading, or failed to load).
          void this.backend;
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
        GET: async (_req, res) =>
          sendJson(res, 200, { object: 'list', data: [modelCard(this.modelName, this.#created)] }),
      },
      '/v1/chat/completions': {
        POST: (req, res, signal, started) => chatCompletions(this, { req, res, signal, started }),
      },
      '/v1/completions': {
        POST: (req, res, signal, started) => completions(this, { req, res, signal, started }),
      },
    };
  }

  #route(method: string, pathname: string): Handler | undefined {
    const id = modelIdOfPath(pathname);
    if (id === undefined) return findRoute(this.#routes, method, pathname);
    return async (_req, res) => {
      if (method !== 'GET') throw new HttpError(405, `${method} is not allowed on /v1/models/{id}; use GET`);
      if (id !== this.modelName) throw unknownModel(id, this.modelName);
      sendJson(res, 200, modelCard(this.modelName, this.#created));
    };
  }
}

/** The id a model is served under: a hub id as given (`Org/Name`), else the folder's name. */
export function defaultModelName(model: string): string {
  const hubId = /^[\w.-]+\/[\w.-]+(@[\w./-]+)?$/.test(model) && !existsSync(model);
  return hubId ? model : path.basename(model.replace(/[/\\]+$/, ''));
}

/**
 * A server over a backend or a loaded pipeline (the caller keeps ownership), or over a model path or
 * hub id that it loads (and closes with the server). Call `listen` to start serving.
 */
export async function createServer(
  backendOrModel: ServerBackend | Pipeline | string,
  options: ServerOptions = {},
): Promise<InternVLServer> {
  if (typeof backendOrModel === 'string') {
    const pipe = await loadPipeline(backendOrModel, options.pipeline);
    try {
      const name = options.modelName ?? defaultModelName(backendOrModel);
      return new InternVLServer(pipelineBackend(pipe), name, options, true);
    } catch (err) {
      await pipe.close();
      throw err;
    }
  }
  const backend = backendOrModel instanceof Pipeline ? pipelineBackend(backendOrModel) : backendOrModel;
  return new InternVLServer(backend, options.modelName ?? backend.modelId, options, false);
}
