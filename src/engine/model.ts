/**
 * InternVLModel: a checkpoint loaded into the engine, which runs in a worker thread so the caller's
 * event loop stays responsive while ONNX Runtime computes.
 */
import type { ModelConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { resolveModel } from '../io/hub.js';
import type { EngineOptions, ImageInput } from './core.js';
import type { GenerateEvent, GenerateRequest, GenerateResult } from './generate.js';
import type { ResponseFormat } from './grammar-types.js';
import type { SampledToken } from './sampler.js';
import { WorkerClient } from './worker-rpc.js';

export interface LoadOptions extends EngineOptions {
  /** Components loaded so far (vision encoder, language model); the first load builds their graphs. */
  onProgress?: (done: number, total: number) => void;
}

export interface ImageOptions {
  /** Normalised tiles, [numTiles, 3, S, S] float32. */
  pixelValues?: Float32Array;
  numTiles?: number;
}

// Under tsx (tests, development) this module is a .ts file and so is the worker beside it.
const workerUrl = new URL(import.meta.url.endsWith('.ts') ? './worker.ts' : './worker.js', import.meta.url);

function imageInput(opts: ImageOptions | undefined): ImageInput | undefined {
  if (!opts?.pixelValues) return undefined;
  const numTiles = opts.numTiles ?? 1;
  return { pixelValues: opts.pixelValues, numTiles };
}

function idList(inputIds: ArrayLike<number>): number[] {
  const ids = Array.from(inputIds, Number);
  if (ids.length === 0) throw new InternVLError('BAD_INPUT', 'inputIds is empty');
  return ids;
}

/** Starts an engine worker and loads the checkpoint in it. */
async function startEngine(
  dir: string,
  options: LoadOptions,
): Promise<{ client: WorkerClient; config: ModelConfig }> {
  const { onProgress, ...engineOptions } = options;
  const client = new WorkerClient(workerUrl, { dir, options: engineOptions });
  try {
    const { config } = await client.call<{ config: ModelConfig }>('load', [], {
      onEvent: (e) => {
        const { done, total } = e as { done: number; total: number };
        onProgress?.(done, total);
      },
    });
    return { client, config };
  } catch (err) {
    await client.terminate();
    throw err;
  }
}

export class InternVLModel {
  private closed = false;
  #restart: Promise<WorkerClient> | undefined;

  private constructor(
    private client: WorkerClient,
    readonly config: ModelConfig,
    readonly dir: string,
    private readonly options: LoadOptions,
  ) {}

  /** Loads a local checkpoint folder or a hub id (`Org/Name[@revision]`). */
  static async load(dirOrId: string, options: LoadOptions = {}): Promise<InternVLModel> {
    const dir = await resolveModel(dirOrId);
    const { client, config } = await startEngine(dir, options);
    return new InternVLModel(client, config, dir, options);
  }

  /**
   * The engine worker, started again (graphs from the cache, chat sessions' caches empty) when the
   * last one died, e.g. out of memory: the calls it was running fail, later calls work again.
   */
  private async engine(): Promise<WorkerClient> {
    if (this.closed) throw new InternVLError('BAD_INPUT', 'the model is closed');
    if (!this.client.exited) return this.client;
    this.#restart ??= startEngine(this.dir, { ...this.options, onProgress: undefined })
      .then(({ client }) => {
        this.client = client;
        return client;
      })
      .finally(() => {
        this.#restart = undefined;
      });
    return this.#restart;
  }

  private async call<T>(method: string, args: unknown[]): Promise<T> {
    return (await this.engine()).call<T>(method, args);
  }

  /** Projector output (image embeddings), [numTiles, 256, hidden]. */
  encodeImages(pixelValues: Float32Array, numTiles: number): Promise<Float32Array> {
    return this.call('encodeImages', [pixelValues, numTiles]);
  }

  /** InternViT last hidden state, [numTiles, 1 + g², C] (class token included). */
  visionHiddenState(pixelValues: Float32Array, numTiles: number): Promise<Float32Array> {
    return this.call('visionHiddenState', [pixelValues, numTiles]);
  }

  /** Logits of every position, [T, vocab]. */
  async forwardLogits(inputIds: ArrayLike<number>, opts?: ImageOptions): Promise<Float32Array> {
    return this.call('forwardLogits', [idList(inputIds), imageInput(opts)]);
  }

  /** Greedy continuation through the KV cache; does not stop at EOS. */
  generateGreedy(
    inputIds: ArrayLike<number>,
    opts: ImageOptions & { maxNewTokens: number },
  ): Promise<number[]> {
    return this.call('generateGreedy', [idList(inputIds), opts.maxNewTokens, imageInput(opts)]);
  }

  /**
   * Generates a continuation of `request.inputIds` in the engine thread. `onToken` sees each token as
   * it is chosen and `onEncode` the vision encoder's progress over the request's new tiles; aborting
   * `signal` stops generation before the next step (finishReason 'abort').
   */
  async generate(
    request: GenerateRequest,
    options: {
      onToken?: (token: SampledToken) => void;
      onEncode?: (done: number, total: number) => void;
      /** Prefill progress in prompt tokens, for prompts longer than one prefill chunk. */
      onPrefill?: (done: number, total: number) => void;
      signal?: AbortSignal;
    } = {},
  ): Promise<GenerateResult> {
    const engine = await this.engine();
    const { signal, onToken, onEncode, onPrefill } = options;
    const call = engine.start<GenerateResult>('generate', [request], {
      onEvent: (e) => {
        const event = e as GenerateEvent;
        if (event.type === 'token') onToken?.(event.token);
        else if (event.type === 'encode') onEncode?.(event.done, event.total);
        else onPrefill?.(event.done, event.total);
      },
    });
    const abort = () => void engine.call('abort', [call.id]).catch(() => {});
    if (signal?.aborted) abort();
    signal?.addEventListener('abort', abort, { once: true });
    try {
      return await call.result;
    } finally {
      signal?.removeEventListener('abort', abort);
    }
  }

  /**
   * Checks and compiles a response format in the engine thread (XGrammar against the model's
   * vocabulary; cached by format), so a bad one fails before generation. `compileMs` is 0 when cached.
   */
  compileGrammar(format: ResponseFormat): Promise<{ compileMs: number }> {
    return this.call('compileGrammar', [format]);
  }

  /** Forgets a chat session's KV cache in the engine. */
  async releaseSession(sessionId: string): Promise<void> {
    // A restarted engine has no sessions to forget.
    if (!this.closed && !this.client.exited) await this.call('releaseSession', [sessionId]);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.#restart?.catch(() => {});
    try {
      if (!this.client.exited) await this.client.call('close', []);
    } finally {
      await this.client.terminate();
    }
  }
}
