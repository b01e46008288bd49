/**
 * Errors in OpenAI's shape, `{error: {message, type, param, code}}`, with the HTTP status that each
 * InternVLError code stands for.
 */
import os from 'node:os';
import { type ErrorCode, InternVLError } from '../errors.js';

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Paths under the server's temporary and home directories, as they appear in error messages. */
const SERVER_PATHS = new RegExp(
  [os.tmpdir(), os.homedir()]
    .filter((dir) => dir.length > 1)
    .sort((a, b) => b.length - a.length)
    .map((dir) => `${escapeRegExp(dir)}(?:[/\\\\][^\\s'"\`:,;()]*)?(?![\\w.-])`)
    .join('|'),
  'g',
);

/** `message` with the server's own file paths (temporary files, caches) replaced by a placeholder. */
export function hideServerPaths(message: string): string {
  return message.replace(SERVER_PATHS, '<server path>');
}

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** An error that already knows its HTTP status and OpenAI `type`/`param`/`code`. */
export class HttpError extends InternVLError {
  readonly status: number;
  readonly param: string | null;
  readonly openaiCode: string | null;
  constructor(
    status: number,
    message: string,
    options: { code?: ErrorCode; param?: string | null; openaiCode?: string | null; cause?: unknown } = {},
  ) {
    super(options.code ?? (status >= 500 ? 'INTERNAL' : 'BAD_INPUT'), message, { cause: options.cause });
    this.name = 'HttpError';
    this.status = status;
    this.param = options.param ?? null;
    this.openaiCode = options.openaiCode ?? null;
  }
}

/** HTTP status per library error code; anything not listed is an internal failure (500). */
const STATUS_BY_CODE: Partial<Record<ErrorCode, number>> = {
  BAD_INPUT: 400,
  BAD_PROMPT: 400,
  BAD_IMAGE: 400,
  BAD_VIDEO: 400,
  CONTEXT_OVERFLOW: 400,
  DOWNLOAD: 400,
  UNSUPPORTED: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  // nginx's "client closed request": only ever logged and counted, the client is gone.
  ABORTED: 499,
};

function typeFor(status: number): string {
  if (status === 401) return 'authentication_error';
  if (status === 404) return 'not_found_error';
  if (status === 429 || status === 503) return 'server_overloaded';
  if (status >= 500) return 'internal_server_error';
  return 'invalid_request_error';
}

/**
 * The status and OpenAI body of any thrown value; internal failures keep their message. No message
 * shows the server's temporary or home directory paths.
 */
export function toOpenAIError(err: unknown): { status: number; body: OpenAIErrorBody } {
  const { status, body } = openAIError(err);
  body.error.message = hideServerPaths(body.error.message);
  return { status, body };
}

function openAIError(err: unknown): { status: number; body: OpenAIErrorBody } {
  if (err instanceof HttpError) {
    return {
      status: err.status,
      body: {
        error: {
          message: err.message,
          type: typeFor(err.status),
          param: err.param,
          code: err.openaiCode ?? err.code.toLowerCase(),
        },
      },
    };
  }
  if (err instanceof InternVLError) {
    const status = STATUS_BY_CODE[err.code] ?? 500;
    return {
      status,
      body: {
        error: { message: err.message, type: typeFor(status), param: null, code: err.code.toLowerCase() },
      },
    };
  }
  const message = err instanceof Error ? err.message : String(err);
  return {
    status: 500,
    body: {
      error: {
        message: `internal error: ${message}`,
        type: 'internal_server_error',
        param: null,
        code: 'internal',
      },
    },
  };
}
