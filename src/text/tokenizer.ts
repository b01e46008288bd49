import { InternVLError } from '../errors.js';
import { createJsonTokenizer } from './json-tokenizer.js';
import { createSentencePieceTokenizer } from './sentencepiece-tokenizer.js';
import { isRecord, type TokenizerFileContents } from './special-token-settings.js';
import type { Tokenizer } from './types.js';

export { createJsonTokenizer } from './json-tokenizer.js';
export { cleanUpTokenization, createSentencePieceTokenizer } from './sentencepiece-tokenizer.js';
export type { TokenizerFileContents } from './special-token-settings.js';

/**
 * Builds the model's tokenizer from its files: SentencePiece when there is only tokenizer.model or the
 * config names InternLM2's slow tokenizer (InternVL loads tokenizers with use_fast=False), else tokenizer.json.
 */
export function createTokenizer(files: TokenizerFileContents): Tokenizer {
  const tokenizerClass = isRecord(files.tokenizerConfig) ? files.tokenizerConfig.tokenizer_class : undefined;
  const prefersSentencePiece =
    typeof tokenizerClass === 'string' && /^InternLM2Tokenizer$|^LlamaTokenizer$/.test(tokenizerClass);
  if (files.sentencePieceModel !== undefined && (files.tokenizerJson === undefined || prefersSentencePiece)) {
    return createSentencePieceTokenizer(files);
  }
  if (files.tokenizerJson !== undefined) return createJsonTokenizer(files);
  throw new InternVLError(
    'NOT_FOUND',
    `${files.source ?? 'tokenizer'}: no tokenizer.json or tokenizer.model to build a tokenizer from`,
  );
}
