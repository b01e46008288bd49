/** Reading one generation's tool calls out of its streamed text (the pipeline's Response and chunks). */
import { type ParsedPiece, type ToolCallDelta, ToolCallParser } from '../text/tool-call-parser.js';
import type { ToolCall, ToolFormat } from '../text/tool-prompts.js';
import type { Response, StreamChunk } from './responses.js';

function newCallId(): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return `call_${Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('')}`;
}

/**
 * Reads one generation's calls: `chunk` turns a stream chunk's text into content and call deltas;
 * `finish` gives the response its calls, its content as `text` and finishReason 'tool_calls'. A call
 * cut off (maxNewTokens) leaves the whole text as content and no calls.
 */
export class ToolCallReader {
  readonly #parser: ToolCallParser;
  #raw = '';

  constructor(format: ToolFormat) {
    this.#parser = new ToolCallParser(format, newCallId);
  }

  chunk(chunk: StreamChunk): StreamChunk {
    this.#raw += chunk.text;
    return this.#merge(chunk, this.#parser.push(chunk.text));
  }

  /** What the parser held back, once the text is over (null when nothing). */
  flush(): StreamChunk | null {
    const piece = this.#parser.finish();
    return piece.content || piece.calls.length ? this.#merge({ text: '', tokenIds: [] }, piece) : null;
  }

  #merge(chunk: StreamChunk, piece: ParsedPiece): StreamChunk {
    const out: StreamChunk = { ...chunk, text: piece.content };
    if (piece.calls.length > 0) out.toolCalls = piece.calls as ToolCallDelta[];
    return out;
  }

  finish(response: Response): Response {
    const calls = this.#parser.calls;
    if (!this.#parser.complete || calls.length === 0 || !calls.every(argumentsParse)) {
      return { ...response, text: this.#raw };
    }
    return {
      ...response,
      text: this.#parser.content,
      toolCalls: calls,
      finishReason: response.finishReason === 'stop' ? 'tool_calls' : response.finishReason,
    };
  }
}

function argumentsParse(call: ToolCall): boolean {
  try {
    JSON.parse(call.function.arguments);
    return true;
  } catch {
    return false;
  }
}

/** A generation's tool calls rebuilt from its streamed deltas (StreamChunk.toolCalls). */
export class ToolCallAccumulator {
  readonly calls: ToolCall[] = [];

  add(deltas: readonly ToolCallDelta[]): void {
    for (const d of deltas) {
      if (d.id !== undefined) {
        this.calls[d.index] = { id: d.id, type: 'function', function: { name: d.name ?? '', arguments: '' } };
      }
      const call = this.calls[d.index];
      if (call) call.function.arguments += d.arguments;
    }
  }
}
