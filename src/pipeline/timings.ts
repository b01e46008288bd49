/**
 * Wall-clock timings of one request as the pipeline sees the engine's events: when the last image
 * tile was encoded, when the first and the last token came. Under continuous batching a request shares
 * the engine with others, so these are what this request waited, not what it alone cost.
 */

export interface Timings {
  /** Seconds from the request to its first generated token (includes ViT and prefill). */
  timeToFirstToken: number;
  /** Seconds until the last image tile was encoded (0 without tiles to encode). */
  vitSeconds: number;
  /** Prompt tokens prefilled (those not reused from the session) per second, after the ViT. */
  prefillTokensPerSecond: number;
  /** Tokens after the first, per second (undefined with fewer than two tokens). */
  decodeTokensPerSecond?: number;
}

export class RequestClock {
  readonly #start = performance.now();
  #lastEncode: number | undefined;
  #firstToken: number | undefined;
  #lastToken: number | undefined;
  #tokens = 0;

  encoded(): void {
    this.#lastEncode = performance.now();
  }

  token(): void {
    const now = performance.now();
    this.#firstToken ??= now;
    this.#lastToken = now;
    this.#tokens++;
  }

  /** The timings, or undefined when no token came (an aborted or failed request). */
  timings(prefilledTokens: number): Timings | undefined {
    if (this.#firstToken === undefined || this.#lastToken === undefined) return undefined;
    const seconds = (ms: number) => Math.round(ms) / 1000;
    const vitEnd = this.#lastEncode ?? this.#start;
    const prefill = Math.max(this.#firstToken - vitEnd, 1e-3);
    const timings: Timings = {
      timeToFirstToken: seconds(this.#firstToken - this.#start),
      vitSeconds: seconds(vitEnd - this.#start),
      prefillTokensPerSecond: Math.round((prefilledTokens / prefill) * 1000 * 10) / 10,
    };
    if (this.#tokens >= 2 && this.#lastToken > this.#firstToken) {
      timings.decodeTokensPerSecond =
        Math.round(((this.#tokens - 1) / (this.#lastToken - this.#firstToken)) * 1000 * 10) / 10;
    }
    return timings;
  }
}
