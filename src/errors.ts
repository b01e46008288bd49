/**
 * Every error this library raises on bad input is an InternVLError: the message names the
 * problem (file, tensor, field, URL…), and `code` lets callers branch without parsing text.
 */
export type ErrorCode =
  | 'BAD_CHECKPOINT'
  | 'BAD_CONFIG'
  | 'UNSUPPORTED'
  | 'NOT_FOUND'
  | 'DOWNLOAD'
  | 'UNAUTHORIZED'
  | 'OFFLINE'
  | 'BAD_IMAGE'
  | 'BAD_VIDEO'
  | 'BAD_TOKENIZER'
  | 'BAD_PROMPT'
  | 'BAD_INPUT'
  | 'CONTEXT_OVERFLOW'
  | 'ABORTED'
  | 'OUT_OF_MEMORY'
  | 'INTERNAL';

export class InternVLError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'InternVLError';
    this.code = code;
  }
}
