/**
 * InternVLModel: a checkpoint loaded into the engine, which runs in a worker thread so the caller's
 * event loop stays responsive while ONNX Runtime computes.
 */
import type { ModelConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { resolveModel } from '../io/hub.js';
import type { SampledToken } from '../pipeline/sampler.js';
import type { EngineOptions, ImageInput } from './core.js';
import type { GenerateEvent, GenerateRequest, GenerateResult } from './generate.js';
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

export class InternVLModel {
  private closed = false;

  private constructor(
    private readonly client: WorkerClient,
    readonly config: ModelConfig,
    readonly dir: string,
  ) {}

  /** Loads a local checkpoint folder or a hub id (`Org/Name[@revision]`). */
  static async load(dirOrId: string, options: LoadOptions = {}): Promise<InternVLModel> {
    const dir = await resolveModel(dirOrId);
    const { onProgress, ...engineOptions } = options;
    const client = new WorkerClient(workerUrl, { dir, options: engineOptions });
    try {
      const { config } = await client.call<{ config: ModelConfig }>('load', [], {
        onEvent: (e) => {
          const { done, total } = e as { done: number; total: number };
          onProgress?.(done, total);
        },
      });
      return new InternVLModel(client, config, dir);
    } catch (err) {
      await client.terminate();
      throw err;
    }
  }

  private call<T>(method: string, args: unknown[]): Promise<T> {
    if (this.closed) return Promise.reject(new InternVLError('BAD_INPUT', 'the model is closed'));
    return this.client.call<T>(method, args);
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
      signal?: AbortSignal;
    } = {},
  ): Promise<GenerateResult> {
    if (this.closed) throw new InternVLError('BAD_INPUT', 'the model is closed');
    const { signal, onToken, onEncode } = options;
    const call = this.client.start<GenerateResult>('generate', [request], {
      onEvent: (e) => {
        const event = e as GenerateEvent;
        if (event.type === 'token') onToken?.(event.token);
        else onEncode?.(event.done, event.total);
      },
    });
    const abort = () => void this.client.call('abort', [call.id]).catch(() => {});
    if (signal?.aborted) abort();
    signal?.addEventListener('abort', abort, { once: true });
    try {
      return await call.result;
    } finally {
      signal?.removeEventListener('abort', abort);
    }
  }

  /** Forgets a chat session's KV cache in the engine. */
  async releaseSession(sessionId: string): Promise<void> {
    if (!this.closed) await this.call('releaseSession', [sessionId]);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.client.call('close', []);
    } finally {
      await this.client.terminate();
    }
  }
}
