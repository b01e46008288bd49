/**
 * Reads tool calls out of generated text as it streams: text outside calls is content, each call
 * gives a first delta (index, id, name) and then its arguments' JSON text piece by piece, as OpenAI
 * streams `tool_calls`. The call syntax is the tool format's (text/tool-prompts.ts); under the tool
 * grammar it is exact, so the reader follows it literally. Text that opens like a call but is not one
 * stays content.
 *
 * Whitespace right before a call or at the very end, and right after a call, is not content (the
 * templates write a newline between the text and a call, and between calls).
 */
import type { ToolCall, ToolFormat } from './tool-prompts.js';

export interface ToolCallDelta {
  /** The call's position among the answer's calls. */
  index: number;
  /** On a call's first delta only. */
  id?: string;
  /** On a call's first delta only. */
  name?: string;
  /** The next piece of the arguments' JSON text ('' on the first delta). */
  arguments: string;
}

export interface ParsedPiece {
  content: string;
  calls: ToolCallDelta[];
}

type State = 'text' | 'head' | 'args' | 'tail';

/** The longest suffix of `text` that is a proper prefix of `marker`. */
function heldBack(text: string, marker: string): number {
  for (let n = Math.min(text.length, marker.length - 1); n > 0; n--) {
    if (marker.startsWith(text.slice(text.length - n))) return n;
  }
  return 0;
}

export class ToolCallParser {
  readonly calls: ToolCall[] = [];
  #content = '';
  #state: State = 'text';
  #buffer = '';
  /** Trailing whitespace of the content, kept back until something other than a call follows. */
  #space = '';
  #afterCall = false;
  #broken = false;
  #depth = 0;
  #inString = false;
  #escaped = false;
  readonly #namePrefix: string;
  readonly #nameSuffix: string;

  constructor(
    private readonly format: ToolFormat,
    private readonly newId: () => string,
  ) {
    const probe = JSON.stringify('\u0001');
    [this.#namePrefix, this.#nameSuffix] = format.callBegin('\u0001').split(probe);
  }

  /** All content so far. */
  get content(): string {
    return this.#content;
  }

  /** True when every call seen so far is complete and well formed. */
  get complete(): boolean {
    return this.#state === 'text' && !this.#broken;
  }

  push(text: string): ParsedPiece {
    const out: ParsedPiece = { content: '', calls: [] };
    this.#buffer += text;
    while (this.#step(out)) {}
    return out;
  }

  /** The end of the text: what was held back is content, unless it could only end a call. */
  finish(): ParsedPiece {
    const out: ParsedPiece = { content: '', calls: [] };
    if (this.#state === 'text') {
      this.#text(out, this.#buffer);
      this.#buffer = '';
    }
    if (this.calls.length === 0) this.#emit(out, this.#space);
    this.#space = '';
    return out;
  }

  #emit(out: ParsedPiece, text: string): void {
    out.content += text;
    this.#content += text;
  }

  /** Content text, its trailing whitespace kept back. */
  #text(out: ParsedPiece, text: string): void {
    let piece = text;
    if (this.#afterCall) {
      piece = piece.trimStart();
      if (piece) this.#afterCall = false;
    }
    if (!piece) return;
    const body = piece.trimEnd();
    if (body) {
      this.#emit(out, this.#space + body);
      this.#space = '';
    }
    this.#space += piece.slice(body.length);
  }

  /** Advances one state; false when it needs more text. */
  #step(out: ParsedPiece): boolean {
    switch (this.#state) {
      case 'text': {
        const at = this.#buffer.indexOf(this.format.trigger);
        if (at === -1) {
          const keep = heldBack(this.#buffer, this.format.trigger);
          this.#text(out, this.#buffer.slice(0, this.#buffer.length - keep));
          this.#buffer = this.#buffer.slice(this.#buffer.length - keep);
          return false;
        }
        this.#text(out, this.#buffer.slice(0, at));
        this.#buffer = this.#buffer.slice(at);
        this.#state = 'head';
        return true;
      }
      case 'head':
        return this.#head(out);
      case 'args':
        return this.#args(out);
      case 'tail': {
        const end = this.format.callEnd;
        const n = Math.min(end.length, this.#buffer.length);
        if (this.#buffer.slice(0, n) !== end.slice(0, n)) {
          // Not the call's end: the arguments went out already, so the call stays, marked broken.
          this.#broken = true;
          this.#state = 'text';
          return true;
        }
        if (n < end.length) return false;
        this.#buffer = this.#buffer.slice(end.length);
        this.#state = 'text';
        this.#afterCall = true;
        return true;
      }
    }
  }

  /** `<tool_call>\n{"name": "f", "arguments": ` (or the format's own): a call's first delta. */
  #head(out: ParsedPiece): boolean {
    const prefix = this.#namePrefix;
    const b = this.#buffer;
    const notACall = () => {
      // The trigger was text after all: it is content, and reading goes on after it.
      this.#text(out, this.format.trigger);
      this.#buffer = b.slice(this.format.trigger.length);
      this.#state = 'text';
      return true;
    };
    if (b.length < prefix.length) return prefix.startsWith(b) ? false : notACall();
    if (!b.startsWith(prefix)) return notACall();
    const quoted = b.slice(prefix.length);
    const name = /^"((?:[^"\\]|\\.)*)"/.exec(quoted);
    if (!name) return /^(?:"(?:[^"\\]|\\.)*\\?)?$/.test(quoted) ? false : notACall();
    const rest = b.slice(prefix.length + name[0].length);
    const suffix = this.#nameSuffix;
    if (rest.length < suffix.length) return suffix.startsWith(rest) ? false : notACall();
    if (!rest.startsWith(suffix)) return notACall();
    const index = this.calls.length;
    const id = this.newId();
    const fn = { name: JSON.parse(name[0]) as string, arguments: '' };
    this.calls.push({ id, type: 'function', function: fn });
    out.calls.push({ index, id, name: fn.name, arguments: '' });
    this.#space = '';
    this.#buffer = rest.slice(suffix.length);
    this.#state = 'args';
    this.#depth = 0;
    this.#inString = false;
    this.#escaped = false;
    return true;
  }

  /** The arguments' JSON, up to the end of its top-level value. */
  #args(out: ParsedPiece): boolean {
    const b = this.#buffer;
    let end = -1;
    for (let i = 0; i < b.length && end === -1; i++) {
      const ch = b[i];
      if (this.#inString) {
        if (this.#escaped) this.#escaped = false;
        else if (ch === '\\') this.#escaped = true;
        else if (ch === '"') this.#inString = false;
      } else if (ch === '"') this.#inString = true;
      else if (ch === '{' || ch === '[') this.#depth++;
      else if (ch === '}' || ch === ']') {
        this.#depth--;
        if (this.#depth === 0) end = i + 1;
      }
    }
    const piece = end === -1 ? b : b.slice(0, end);
    if (piece) {
      const call = this.calls[this.calls.length - 1];
      call.function.arguments += piece;
      out.calls.push({ index: this.calls.length - 1, arguments: piece });
    }
    this.#buffer = end === -1 ? '' : b.slice(end);
    if (end === -1) return false;
    this.#state = 'tail';
    return true;
  }
}
