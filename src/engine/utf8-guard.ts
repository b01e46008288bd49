/**
 * Keeps constrained text valid UTF-8. XGrammar matches the bytes of byte-level tokens but lets some
 * invalid sequences through (e.g. a lead byte followed by a wrong continuation), which decode to
 * U+FFFD and break what the grammar counted (a string's maxLength, a regex's character classes).
 *
 * The guard runs the UTF-8 decoder's automaton (RFC 3629 well-formed sequences) over the chosen
 * tokens' bytes. For each of its 8 states it precomputes, once per vocabulary, the bitmask of tokens
 * whose bytes are well-formed from that state; each step then costs one AND of the grammar's mask
 * with the current state's.
 */
import type { VocabType } from './grammar-types.js';

/** GPT-2's byte-level alphabet, reversed: the byte each character stands for (bytes_to_unicode). */
const BYTE_OF_CHAR = (() => {
  const bytes = new Map<number, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    bytes.set(printable ? b : 256 + extra++, b);
  }
  return bytes;
})();

/** The bytes of a token as the vocabulary stores it (undefined when it is not text, e.g. special). */
export function tokenBytes(token: string, vocabType: VocabType): Uint8Array | undefined {
  if (token === '') return undefined;
  if (vocabType === 'byte_level') {
    const out = new Uint8Array(token.length);
    let n = 0;
    for (const ch of token) {
      const b = BYTE_OF_CHAR.get(ch.codePointAt(0)!);
      if (b === undefined) return new TextEncoder().encode(token);
      out[n++] = b;
    }
    return out.subarray(0, n);
  }
  if (vocabType === 'byte_fallback') {
    const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(token);
    if (m) return Uint8Array.of(Number.parseInt(m[1], 16));
    return new TextEncoder().encode(token.replaceAll('▁', ' '));
  }
  return new TextEncoder().encode(token);
}

// Automaton states: 0 = between characters; 1–3 = that many continuation bytes (80–BF) to go;
// 4 = after E0 (next A0–BF), 5 = after ED (80–9F), 6 = after F0 (90–BF), 7 = after F4 (80–8F).
const STATES = 8;
const ERROR = -1;

function step(state: number, b: number): number {
  switch (state) {
    case 0:
      if (b < 0x80) return 0;
      if (b >= 0xc2 && b <= 0xdf) return 1;
      if (b === 0xe0) return 4;
      if (b === 0xed) return 5;
      if (b >= 0xe1 && b <= 0xef) return 2;
      if (b === 0xf0) return 6;
      if (b >= 0xf1 && b <= 0xf3) return 3;
      if (b === 0xf4) return 7;
      return ERROR;
    case 1:
    case 2:
    case 3:
      return b >= 0x80 && b <= 0xbf ? state - 1 : ERROR;
    case 4:
      return b >= 0xa0 && b <= 0xbf ? 1 : ERROR;
    case 5:
      return b >= 0x80 && b <= 0x9f ? 1 : ERROR;
    case 6:
      return b >= 0x90 && b <= 0xbf ? 2 : ERROR;
    default:
      return b >= 0x80 && b <= 0x8f ? 2 : ERROR;
  }
}

export class Utf8Guard {
  readonly #bytes: (Uint8Array | undefined)[];
  readonly #masks: Int32Array[] = [];

  /** `bytes[id]`: each token's bytes; undefined ones (special tokens) are always allowed. */
  constructor(bytes: (Uint8Array | undefined)[]) {
    this.#bytes = bytes;
    const words = Math.ceil(bytes.length / 32);
    for (let s = 0; s < STATES; s++) {
      const mask = new Int32Array(words);
      for (let id = 0; id < bytes.length; id++) {
        if (this.next(s, id) !== ERROR) mask[id >> 5] |= 1 << (id & 31);
      }
      this.#masks.push(mask);
    }
  }

  /** The state after token `id` from `state`; -1 when its bytes are not well-formed there. */
  next(state: number, id: number): number {
    const bytes = this.#bytes[id];
    if (!bytes) return state;
    let s = state;
    for (let i = 0; i < bytes.length && s !== ERROR; i++) s = step(s, bytes[i]);
    return s;
  }

  /** Clears, in `mask`, the tokens that are not well-formed from `state`. */
  restrict(mask: Int32Array, state: number): void {
    const allowed = this.#masks[state];
    const n = Math.min(mask.length, allowed.length);
    for (let w = 0; w < n; w++) mask[w] &= allowed[w];
  }
}
