export { type ErrorCode, InternVLError } from './errors.js';
export type { DecodeOptions, EncodeOptions, Tokenizer } from './text/types.js';
