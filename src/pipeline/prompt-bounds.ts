/**
 * Bounds on prompt text, checked before any tokenizing, so that no request can make the tokenizer
 * run for seconds or exhaust memory only to be refused by the sessionLen check afterwards.
 *
 * - Characters: no token of the tokenizer stands for more than `maxCharsPerToken` characters (its
 *   longest vocabulary or added-token string; byte-level tokens hold one character per UTF-8 byte, so
 *   they never stand for more characters than they have). A text of more than
 *   `promptTokens × maxCharsPerToken` characters therefore cannot fit in `promptTokens` tokens.
 *   Characters are counted as sent: a SentencePiece model that collapses whitespace runs
 *   (remove_extra_whitespaces) might fit a prompt of long blank runs that this bound refuses.
 * - Words: no run without whitespace longer than MAX_WORD_CHARS reaches the tokenizer, whose BPE
 *   merges a whole pre-tokenized word at once.
 */
import { InternVLError } from '../errors.js';
import type { Tokenizer } from '../text/types.js';

/** The longest run of non-whitespace characters a prompt may hold. */
export const MAX_WORD_CHARS = 65_536;

/** The length of the longest token string (vocabulary and added tokens): the most characters one token covers. */
export function longestTokenChars(tokenizer: Tokenizer): number {
  let longest = 1;
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    const token = tokenizer.idToToken(id);
    if (token !== undefined && token.length > longest) longest = token.length;
  }
  return longest;
}

function isWhitespace(code: number): boolean {
  // ASCII whitespace, NEL, NBSP, the Unicode space separators, line/paragraph separators, BOM.
  return (
    (code >= 9 && code <= 13) ||
    code === 32 ||
    code === 0x85 ||
    code === 0xa0 ||
    code === 0x1680 ||
    (code >= 0x2000 && code <= 0x200a) ||
    code === 0x2028 ||
    code === 0x2029 ||
    code === 0x202f ||
    code === 0x205f ||
    code === 0x3000 ||
    code === 0xfeff
  );
}

/** The longest run of non-whitespace UTF-16 code units in `text`, and where it starts. */
export function longestWord(text: string): { length: number; start: number } {
  let best = 0;
  let bestStart = 0;
  let runStart = 0;
  for (let i = 0; i <= text.length; i++) {
    if (i < text.length && !isWhitespace(text.charCodeAt(i))) continue;
    if (i - runStart > best) {
      best = i - runStart;
      bestStart = runStart;
    }
    runStart = i + 1;
  }
  return { length: best, start: bestStart };
}

export class PromptBounds {
  constructor(
    readonly sessionLen: number,
    readonly maxCharsPerToken: number,
    readonly maxWordChars = MAX_WORD_CHARS,
  ) {}

  /** The most characters a prompt may have when `maxNewTokens` of sessionLen are kept for the answer. */
  maxPromptChars(maxNewTokens: number): number {
    return Math.max(0, this.sessionLen - maxNewTokens) * this.maxCharsPerToken;
  }

  /** Refuses `chars` characters of text (`what`, e.g. "messages[2]") that cannot fit beside maxNewTokens. */
  checkLength(chars: number, what: string, maxNewTokens: number): void {
    const limit = this.maxPromptChars(maxNewTokens);
    if (chars > limit) {
      throw new InternVLError(
        'CONTEXT_OVERFLOW',
        `${what} has ${chars} characters, above the limit of ${limit}: sessionLen ${this.sessionLen} ` +
          `minus maxNewTokens ${maxNewTokens} leaves ${Math.max(0, this.sessionLen - maxNewTokens)} tokens, ` +
          `and no token of this tokenizer covers more than ${this.maxCharsPerToken} characters`,
      );
    }
  }

  /** Refuses a text (`what`) that holds a run without whitespace longer than maxWordChars. */
  checkWords(text: string, what: string): void {
    const word = longestWord(text);
    if (word.length > this.maxWordChars) {
      throw new InternVLError(
        'BAD_PROMPT',
        `${what} has a run of ${word.length} characters without whitespace (from character ${word.start}); ` +
          `the limit is ${this.maxWordChars}`,
      );
    }
  }
}
