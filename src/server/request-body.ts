/**
 * Request bodies → validated requests. JSON.parse and zod take hundreds of milliseconds on a body of
 * many megabytes (a list of a million numbers, say), so bodies above INLINE_PARSE_BYTES are parsed
 * and validated in a worker thread, and the event loop stays free for other requests and /health.
 * What comes back is validated, so it holds only bounded lists and no value of unbounded depth.
 */
import { WorkerClient } from '../engine/worker-rpc.js';
import { HttpError } from './errors.js';
import { parseJson } from './http.js';
import {
  type ChatCompletionRequest,
  type CompletionRequest,
  chatCompletionRequestSchema,
  completionRequestSchema,
  parseRequest,
} from './openai-schemas.js';

/** Bodies up to this size are parsed on the calling thread (about a millisecond at worst). */
export const INLINE_PARSE_BYTES = 64 * 1024;

export interface RequestKinds {
  chat: ChatCompletionRequest;
  completion: CompletionRequest;
}

type DecodeResult =
  | { ok: true; value: unknown }
  | {
      ok: false;
      error: { status: number; message: string; param: string | null; openaiCode: string | null };
    };

/** Parses and validates one body; a bad body is an `ok: false` result that rebuilds the same HttpError. */
export function decodeRequestBody(bytes: Uint8Array, kind: keyof RequestKinds): DecodeResult {
  const schema = kind === 'chat' ? chatCompletionRequestSchema : completionRequestSchema;
  try {
    return { ok: true, value: parseRequest<unknown>(schema, parseJson(Buffer.from(bytes))) };
  } catch (err) {
    if (!(err instanceof HttpError)) throw err;
    const { status, message, param, openaiCode } = err;
    return { ok: false, error: { status, message, param, openaiCode } };
  }
}

// Under tsx (tests, development) this module is a .ts file and so is the worker beside it.
const workerUrl = new URL(
  import.meta.url.endsWith('.ts') ? './request-worker.ts' : './request-worker.js',
  import.meta.url,
);

export class RequestBodyParser {
  #worker: WorkerClient | undefined;

  async parse<K extends keyof RequestKinds>(body: Buffer, kind: K): Promise<RequestKinds[K]> {
    let result: DecodeResult;
    if (body.length <= INLINE_PARSE_BYTES) result = decodeRequestBody(body, kind);
    else {
      // A worker that died (out of memory on some body) is replaced for the next request.
      if (!this.#worker || this.#worker.exited)
        this.#worker = new WorkerClient(workerUrl, {}, 'request parser');
      // The body's bytes move to the worker rather than being copied.
      const bytes = new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
      const owned = body.byteOffset === 0 && body.byteLength === body.buffer.byteLength;
      result = await this.#worker.call<DecodeResult>('decode', [bytes, kind], {
        transfer: owned ? [body.buffer as ArrayBuffer] : [],
      });
    }
    if (!result.ok) {
      const { status, message, param, openaiCode } = result.error;
      throw new HttpError(status, message, { param, openaiCode });
    }
    return result.value as RequestKinds[K];
  }

  async close(): Promise<void> {
    await this.#worker?.terminate();
    this.#worker = undefined;
  }
}
