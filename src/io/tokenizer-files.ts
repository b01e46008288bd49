import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { createTokenizer, type TokenizerFileContents } from '../text/tokenizer.js';
import type { Tokenizer } from '../text/types.js';

async function readOptional(file: string): Promise<Buffer | undefined> {
  try {
    return await readFile(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    throw new InternVLError('BAD_TOKENIZER', `cannot read ${file}: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

async function readOptionalJson(file: string): Promise<unknown> {
  const bytes = await readOptional(file);
  if (bytes === undefined) return undefined;
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new InternVLError('BAD_TOKENIZER', `${file} is not valid JSON: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

/**
 * Reads a model folder's tokenizer files (tokenizer.json or tokenizer.model, with tokenizer_config.json,
 * special_tokens_map.json and added_tokens.json when present) and builds its Tokenizer.
 */
export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  const [tokenizerJson, sentencePieceModel, tokenizerConfig, specialTokensMap, addedTokens] =
    await Promise.all([
      readOptionalJson(path.join(dir, 'tokenizer.json')),
      readOptional(path.join(dir, 'tokenizer.model')),
      readOptionalJson(path.join(dir, 'tokenizer_config.json')),
      readOptionalJson(path.join(dir, 'special_tokens_map.json')),
      readOptionalJson(path.join(dir, 'added_tokens.json')),
    ]);
  if (tokenizerJson === undefined && sentencePieceModel === undefined) {
    throw new InternVLError('NOT_FOUND', `${dir} has neither tokenizer.json nor tokenizer.model`);
  }
  const files: TokenizerFileContents = {
    tokenizerJson,
    sentencePieceModel:
      sentencePieceModel === undefined
        ? undefined
        : new Uint8Array(
            sentencePieceModel.buffer,
            sentencePieceModel.byteOffset,
            sentencePieceModel.byteLength,
          ),
    tokenizerConfig,
    specialTokensMap,
    addedTokens,
    source: dir,
  };
  return createTokenizer(files);
}
