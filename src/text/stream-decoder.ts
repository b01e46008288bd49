import type { DecodeOptions, Tokenizer } from './types.js';

/**
 * Incremental detokenisation: `push` ids as they are generated and get the new text. Trailing U+FFFD
 * (an incomplete UTF-8 character, or invalid bytes) is held back until text follows it or `flush`,
 * and the concatenation of every `push` and the final `flush` equals `tokenizer.decode(allIds, options)`
 * for tokenizers whose decode of a sequence extends the decode of its prefixes (true of byte-level BPE
 * and SentencePiece, not of `clean_up_tokenization_spaces`, which may remove an already emitted space).
 *
 * Each step decodes only a window of recent ids: the ids of the last emitted text (the context that
 * fixes leading-space handling) plus the ids not yet emitted, so the cost per id does not grow with
 * the length of the output.
 */
export class StreamDecoder {
  private readonly tokenizer: Tokenizer;
  private readonly options: DecodeOptions;
  /** The window: context ids, then pending ids. */
  private ids: number[] = [];
  /** How many ids at the start of the window are context (already emitted). */
  private contextLength = 0;
  /** decode(ids[0:contextLength]). */
  private contextText = '';
  /** How much of decode(ids) has been emitted (at least contextText.length). */
  private emittedLength = 0;

  constructor(tokenizer: Tokenizer, options?: { skipSpecialTokens?: boolean }) {
    this.tokenizer = tokenizer;
    this.options = { skipSpecialTokens: options?.skipSpecialTokens === true };
  }

  /** Adds one generated id; returns the text it completes (possibly ''). */
  push(id: number): string {
    // Ids that decode drops (unknown, or skipped specials) cannot change the text.
    const dropped =
      this.tokenizer.idToToken(id) === undefined ||
      (this.options.skipSpecialTokens && this.tokenizer.isSpecial(id));
    if (dropped) return '';
    this.ids.push(id);
    const text = this.tokenizer.decode(this.ids, this.options);
    // Trailing U+FFFD may be a character whose remaining bytes are still to come: hold it back.
    let safeEnd = text.length;
    while (safeEnd > 0 && text.charCodeAt(safeEnd - 1) === 0xfffd) safeEnd--;
    const emitted = safeEnd > this.emittedLength ? text.slice(this.emittedLength, safeEnd) : '';
    this.emittedLength = Math.max(this.emittedLength, safeEnd);
    if (safeEnd === text.length && text.length > this.contextText.length) {
      // The just-emitted ids become the context of the next window, unless on their own they decode
      // to nothing: a tokenizer that drops a leading space at the start of a decode would then drop
      // it from the following ids too, so the window keeps its earlier start.
      const newContext = this.ids.slice(this.contextLength);
      const newContextText = this.tokenizer.decode(newContext, this.options);
      if (newContextText.length > 0) {
        this.ids = newContext;
        this.contextText = newContextText;
      } else {
        this.contextText = text;
      }
      this.contextLength = this.ids.length;
      this.emittedLength = this.contextText.length;
    }
    return emitted;
  }

  /** Returns the text still held back and resets the decoder for a new stream. */
  flush(): string {
    const text = this.ids.length > this.contextLength ? this.tokenizer.decode(this.ids, this.options) : '';
    const rest = text.length > this.emittedLength ? text.slice(this.emittedLength) : '';
    this.ids = [];
    this.contextLength = 0;
    this.contextText = '';
    this.emittedLength = 0;
    return rest;
  }
}
