/**
 * Token generation inside the engine thread: prompt embeddings (with image features scattered in),
 * prefill, then one sampled token per decode step until an end id, the token limit or an abort.
 * Chat sessions keep their KV cache between calls: a follow-up prompt that starts with the tokens
 * already cached prefills only what is new, and images whose tokens are all in that prefix are not
 * encoded again. Image features are also cached by content key, bounded in bytes.
 */
import { InternVLError } from '../errors.js';
import { type SampledToken, Sampler, type SamplingParams } from '../pipeline/sampler.js';
import type { DecoderRunner, Sequence } from './decoder.js';

/** One image of a request, in prompt order: its tiles, and a key naming its content. */
export interface ImageRef {
  /** Content key (e.g. a hash of the pixels and tiling); equal keys mean equal features. */
  key: string;
  numTiles: number;
  /** [numTiles, 3, S, S]; may be omitted when the features are known to be cached. */
  pixelValues?: Float32Array;
}

export interface GenerateRequest {
  inputIds: number[];
  images: ImageRef[];
  /** Keep the KV cache under this id for the next call of the same conversation. */
  sessionId?: string;
  sampling: SamplingParams;
  maxNewTokens: number;
  /** Generated ids that end generation (the id itself is returned). */
  endTokenIds: number[];
}

export type FinishReason = 'stop' | 'length' | 'abort';

export interface GenerateStats {
  promptTokens: number;
  /** Prompt tokens whose KV came from the session's earlier turns. */
  reusedTokens: number;
  /** Tiles run through the vision encoder for this call. */
  encodedTiles: number;
}

export interface GenerateResult {
  tokens: SampledToken[];
  finishReason: FinishReason;
  stats: GenerateStats;
}

/** Least-recently-used image features, bounded by their total size in bytes. */
export class FeatureCache {
  readonly #entries = new Map<string, Float32Array>();
  #bytes = 0;
  constructor(readonly maxBytes: number) {}

  get(key: string): Float32Array | undefined {
    const hit = this.#entries.get(key);
    if (hit) {
      this.#entries.delete(key);
      this.#entries.set(key, hit);
    }
    return hit;
  }

  set(key: string, features: Float32Array): void {
    if (features.byteLength > this.maxBytes) return;
    const old = this.#entries.get(key);
    if (old) {
      this.#bytes -= old.byteLength;
      this.#entries.delete(key);
    }
    this.#entries.set(key, features);
    this.#bytes += features.byteLength;
    for (const [k, v] of this.#entries) {
      if (this.#bytes <= this.maxBytes) break;
      this.#entries.delete(k);
      this.#bytes -= v.byteLength;
    }
  }

  get bytes(): number {
    return this.#bytes;
  }
}

interface Session {
  seq: Sequence;
  /** The tokens whose keys and values are in `seq`. */
  tokens: number[];
}

export interface GeneratorDeps {
  decoder: DecoderRunner;
  imgContextId: number;
  tokensPerTile: number;
  encode: (pixelValues: Float32Array, numTiles: number) => Promise<Float32Array>;
  featureCacheBytes?: number;
}

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

export class Generator {
  readonly features: FeatureCache;
  readonly #sessions = new Map<string, Session>();
  readonly #aborted = new Set<number>();

  constructor(private readonly deps: GeneratorDeps) {
    this.features = new FeatureCache(deps.featureCacheBytes ?? 512 * 1024 * 1024);
  }

  /** Marks a running (or queued) call as aborted; it stops before its next decode step. */
  abort(callId: number): void {
    this.#aborted.add(callId);
  }

  releaseSession(sessionId: string): boolean {
    return this.#sessions.delete(sessionId);
  }

  async generate(
    request: GenerateRequest,
    callId: number,
    onToken: (token: SampledToken) => void,
  ): Promise<GenerateResult> {
    try {
      return await this.#generate(request, callId, onToken);
    } finally {
      this.#aborted.delete(callId);
    }
  }

  async #generate(
    request: GenerateRequest,
    callId: number,
    onToken: (token: SampledToken) => void,
  ): Promise<GenerateResult> {
    const { decoder } = this.deps;
    const { inputIds, maxNewTokens } = request;
    if (inputIds.length === 0) throw new InternVLError('BAD_INPUT', 'the prompt has no tokens');
    if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) {
      throw new InternVLError('BAD_INPUT', `maxNewTokens must be a positive integer, got ${maxNewTokens}`);
    }
    this.#checkImageTokens(request);
    const sampler = new Sampler(request.sampling, decoder.dims.vocabSize);

    const session = request.sessionId ? this.#sessions.get(request.sessionId) : undefined;
    const seq = session?.seq ?? decoder.newSequence();
    // At least the last prompt token is run, so there are logits to sample from.
    const reused = session ? Math.min(commonPrefix(session.tokens, inputIds), inputIds.length - 1) : 0;
    seq.truncate(reused);
    if (request.sessionId) this.#sessions.set(request.sessionId, { seq, tokens: inputIds.slice(0, reused) });

    const { embeds, encodedTiles } = await this.#promptEmbeddings(request, reused);
    let logits = await decoder.forward(seq, embeds, inputIds.length - reused);
    const cached = inputIds.slice();
    const history = inputIds.slice();
    const tokens: SampledToken[] = [];
    let finishReason: FinishReason = 'length';
    const end = new Set(request.endTokenIds);
    for (;;) {
      if (this.#aborted.has(callId)) {
        finishReason = 'abort';
        break;
      }
      const token = sampler.next(logits, history);
      tokens.push(token);
      history.push(token.id);
      onToken(token);
      if (end.has(token.id)) {
        finishReason = 'stop';
        break;
      }
      if (tokens.length >= maxNewTokens) break;
      // Yield so an abort sent while this step ran is seen before the next one.
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.#aborted.has(callId)) {
        finishReason = 'abort';
        break;
      }
      logits = await decoder.forward(seq, decoder.embed([token.id]), 1);
      cached.push(token.id);
    }
    if (request.sessionId) this.#sessions.set(request.sessionId, { seq, tokens: cached });
    return {
      tokens,
      finishReason,
      stats: { promptTokens: inputIds.length, reusedTokens: reused, encodedTiles },
    };
  }

  #checkImageTokens(request: GenerateRequest): void {
    let contextTokens = 0;
    for (const id of request.inputIds) if (id === this.deps.imgContextId) contextTokens++;
    const expected = request.images.reduce((n, img) => n + img.numTiles * this.deps.tokensPerTile, 0);
    if (contextTokens !== expected) {
      throw new InternVLError(
        'BAD_INPUT',
        `the prompt has ${contextTokens} image-context tokens but the images need ${expected} ` +
          `(${request.images.length} image(s), ${this.deps.tokensPerTile} tokens per tile)`,
      );
    }
  }

  /**
   * Embeddings of inputIds[from:], with the feature rows of every image whose tokens fall in that
   * range (features from the cache when known, else encoded now).
   */
  async #promptEmbeddings(
    request: GenerateRequest,
    from: number,
  ): Promise<{ embeds: Float32Array; encodedTiles: number }> {
    const { decoder, imgContextId, tokensPerTile } = this.deps;
    const ids = request.inputIds;
    const d = decoder.dims.hiddenSize;
    const embeds = decoder.embed(ids.slice(from));
    let skippedRows = 0;
    for (let t = 0; t < from; t++) if (ids[t] === imgContextId) skippedRows++;

    let encodedTiles = 0;
    let imageStart = 0;
    let row = skippedRows;
    let t = from;
    for (const image of request.images) {
      const imageRows = image.numTiles * tokensPerTile;
      const imageEnd = imageStart + imageRows;
      if (imageEnd > skippedRows) {
        let features = this.features.get(image.key);
        if (!features) {
          if (!image.pixelValues) {
            throw new InternVLError('BAD_INPUT', `image ${image.key} is not cached and has no pixel values`);
          }
          features = await this.deps.encode(image.pixelValues, image.numTiles);
          encodedTiles += image.numTiles;
          this.features.set(image.key, features);
        }
        for (; row < imageEnd; row++) {
          while (ids[t] !== imgContextId) t++;
          const src = (row - imageStart) * d;
          embeds.set(features.subarray(src, src + d), (t - from) * d);
          t++;
        }
      }
      imageStart = imageEnd;
    }
    return { embeds, encodedTiles };
  }
}
