/** A generate call's state as the Generator moves it through encode → prefill → decode, and helpers. */

import type { Sequence } from './decoder.js';
import type { GenerateEvent, GenerateRequest, GenerateResult } from './generate-types.js';
import type { TokenMatcher } from './grammar-types.js';
import { type SampledToken, Sampler } from './sampler.js';

export interface Session {
  seq: Sequence;
  /** The tokens whose keys and values are in `seq`. */
  tokens: number[];
  busy: boolean;
}

/**
 * Resolves after pending I/O and messages have run: setImmediate in Node; in a browser a
 * MessageChannel message (a zero-delay setTimeout would be clamped to 4 ms per step).
 */
export function yieldToEventLoop(): Promise<void> {
  return new Promise<void>((resolve) => {
    if (typeof setImmediate === 'function') {
      setImmediate(resolve);
      return;
    }
    const channel = new MessageChannel();
    // The browser's MessagePort (Node's typings describe worker_threads' EventEmitter port).
    const port = channel.port1 as unknown as { onmessage: (() => void) | null; close(): void };
    port.onmessage = () => {
      port.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** A request moving through encode → prefill → decode. */
export class Job {
  readonly sampler: Sampler;
  readonly end: Set<number>;
  /**
   * Plain greedy decoding: the graph's argmax replaces fetching the logits and sampling from them.
   * Never with a response format, whose mask must see the logits.
   */
  readonly argmaxOnly: boolean;
  matcher: TokenMatcher | undefined;
  seq!: Sequence;
  session: Session | undefined;
  reused = 0;
  /** Prompt tokens already in the cache. */
  prefilled = 0;
  /** Feature rows per image, filled as images are encoded (undefined = not needed). */
  features: (Float32Array | undefined)[] = [];
  /** Next image / tile to encode. */
  imageIndex = 0;
  tileIndex = 0;
  tileFeatures: Float32Array[] = [];
  encodedTiles = 0;
  /** Tiles this call must encode (images not cached and not in the reused prefix). */
  tilesToEncode = 0;
  embeds: Float32Array | undefined;
  history: number[];
  cached: number[];
  tokens: SampledToken[] = [];
  next: number | undefined;
  aborted = false;
  started = false;

  constructor(
    readonly request: GenerateRequest,
    readonly callId: number,
    readonly onEvent: (event: GenerateEvent) => void,
    readonly resolve: (r: GenerateResult) => void,
    readonly reject: (e: unknown) => void,
    vocabSize: number,
  ) {
    this.sampler = new Sampler(request.sampling, vocabSize);
    this.end = new Set(request.endTokenIds);
    const { temperature, repetitionPenalty, logprobs, topLogprobs } = request.sampling;
    this.argmaxOnly =
      temperature === 0 &&
      repetitionPenalty === 1 &&
      !logprobs &&
      !topLogprobs &&
      request.responseFormat === undefined;
    this.history = request.inputIds.slice();
    this.cached = request.inputIds.slice();
  }
}
