/**
 * Prompt KV caches kept across requests, so a request whose prompt starts like an earlier one (an
 * OpenAI-style client resending the conversation with a new question, the same system prompt, the
 * same image) prefills only what follows. Entries are the prompts of finished requests (not their
 * answers: the prefix a hit gives is what prefilling the prompt would compute), least recently used
 * first out, bounded by their bytes. A hit copies the prefix into a sequence of its own, so entries
 * are shared read-only by any number of concurrent requests.
 *
 * Image tokens are all `<IMG_CONTEXT>`, so token ids alone cannot tell two images apart: an entry
 * also records its images' content keys, and a match stops before the first image that differs.
 */
import type { Sequence } from './kv-cache.js';

export interface PrefixImage {
  key: string;
  numTiles: number;
}

interface Entry {
  seq: Sequence;
  tokens: readonly number[];
  images: readonly PrefixImage[];
  bytes: number;
}

export interface PrefixCacheStats {
  entries: number;
  bytes: number;
  /** Prompt tokens served from the cache since start. */
  hitTokens: number;
  hits: number;
  lookups: number;
}

export interface PrefixMatch {
  seq: Sequence;
  /** Leading prompt tokens whose keys and values `seq` holds. */
  length: number;
}

/** Prompts shorter than this are not kept: a hit would save less than the copy costs. */
export const MIN_PREFIX_TOKENS = 16;

export class PrefixCache {
  readonly #entries: Entry[] = [];
  #bytes = 0;
  #hitTokens = 0;
  #hits = 0;
  #lookups = 0;

  constructor(
    readonly maxBytes: number,
    private readonly imgContextId: number,
    private readonly tokensPerTile: number,
  ) {}

  get stats(): PrefixCacheStats {
    return {
      entries: this.#entries.length,
      bytes: this.#bytes,
      hitTokens: this.#hitTokens,
      hits: this.#hits,
      lookups: this.#lookups,
    };
  }

  /** The entry sharing the longest prefix with this prompt (at least MIN_PREFIX_TOKENS), or none. */
  lookup(ids: readonly number[], images: readonly PrefixImage[]): PrefixMatch | undefined {
    this.#lookups++;
    let best: { entry: Entry; length: number } | undefined;
    for (const entry of this.#entries) {
      const length = this.#matchLength(entry, ids, images);
      if (length >= MIN_PREFIX_TOKENS && length > (best?.length ?? 0)) best = { entry, length };
    }
    if (!best) return undefined;
    this.#touch(best.entry);
    return { seq: best.entry.seq, length: best.length };
  }

  /** Counts a hit of `tokens` prompt tokens (after the caller has taken the prefix). */
  recordHit(tokens: number): void {
    this.#hits++;
    this.#hitTokens += tokens;
  }

  /** Keeps a finished prompt's cache (`seq` must hold exactly `tokens`, in buffers of its own). */
  store(seq: Sequence, tokens: readonly number[], images: readonly PrefixImage[], bytes: number): void {
    if (tokens.length < MIN_PREFIX_TOKENS || bytes > this.maxBytes) return;
    // A prompt another entry already covers adds nothing.
    for (const entry of this.#entries) {
      if (this.#matchLength(entry, tokens, images) === tokens.length) {
        this.#touch(entry);
        return;
      }
    }
    this.#entries.push({ seq, tokens, images, bytes });
    this.#bytes += bytes;
    while (this.#bytes > this.maxBytes) {
      const evicted = this.#entries.shift() as Entry;
      this.#bytes -= evicted.bytes;
    }
  }

  clear(): void {
    this.#entries.length = 0;
    this.#bytes = 0;
  }

  #touch(entry: Entry): void {
    this.#entries.splice(this.#entries.indexOf(entry), 1);
    this.#entries.push(entry);
  }

  /** Tokens of `ids` the entry holds: the common token prefix, cut before the first differing image. */
  #matchLength(entry: Entry, ids: readonly number[], images: readonly PrefixImage[]): number {
    const n = Math.min(entry.tokens.length, ids.length);
    let length = 0;
    let image = 0;
    let imageStart = 0;
    let rowsLeft = 0;
    while (length < n && entry.tokens[length] === ids[length]) {
      if (ids[length] === this.imgContextId) {
        if (rowsLeft === 0) {
          const mine = entry.images[image];
          const theirs = images[image];
          if (!mine || !theirs || mine.key !== theirs.key || mine.numTiles !== theirs.numTiles) break;
          rowsLeft = mine.numTiles * this.tokensPerTile;
          imageStart = length;
          image++;
        }
        rowsLeft--;
      }
      length++;
    }
    // A match that ends inside an image stops before it: its features come all or nothing.
    if (rowsLeft > 0) length = imageStart;
    return length;
  }
}
