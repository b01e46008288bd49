import { InternVLError } from '../errors.js';

/** The already-read contents of a model folder's tokenizer files (JSON files parsed). */
export interface TokenizerFileContents {
  /** tokenizer.json (HF tokenizers format). */
  tokenizerJson?: unknown;
  /** tokenizer.model (SentencePiece ModelProto bytes). */
  sentencePieceModel?: Uint8Array;
  /** tokenizer_config.json */
  tokenizerConfig?: unknown;
  /** special_tokens_map.json */
  specialTokensMap?: unknown;
  /** added_tokens.json ({token: id}) */
  addedTokens?: unknown;
  /** Where the files came from, for error messages. */
  source?: string;
}

export interface AddedTokenSpec {
  id: number;
  content: string;
  special: boolean;
  lstrip: boolean;
  rstrip: boolean;
}

/** Special-token settings gathered from tokenizer_config.json, special_tokens_map.json and added_tokens.json. */
export interface SpecialTokenSettings {
  bos?: string;
  eos?: string;
  pad?: string;
  unk?: string;
  additional: string[];
  addBosToken?: boolean;
  addEosToken?: boolean;
  cleanUpTokenizationSpaces?: boolean;
  /** By id; tokenizer_config's added_tokens_decoder wins over added_tokens.json. */
  addedTokens: Map<number, AddedTokenSpec>;
}

export const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

export function asRecord(value: unknown, what: string): Record<string, unknown> {
  if (value === undefined || value === null) return {};
  if (!isRecord(value)) throw new InternVLError('BAD_TOKENIZER', `${what} must be a JSON object`);
  return value;
}

/** A token written as a string or as an AddedToken object `{content, …}`; null/absent → undefined. */
function tokenContent(value: unknown, what: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (isRecord(value) && typeof value.content === 'string') return value.content;
  throw new InternVLError('BAD_TOKENIZER', `${what} must be a string or an object with a string 'content'`);
}

function optionalBoolean(value: unknown, what: string): boolean | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'boolean') throw new InternVLError('BAD_TOKENIZER', `${what} must be a boolean`);
  return value;
}

function tokenIdKey(key: string, what: string): number {
  const id = Number(key);
  if (!Number.isSafeInteger(id) || id < 0) {
    throw new InternVLError('BAD_TOKENIZER', `${what}: '${key}' is not a token id`);
  }
  return id;
}

export function readSpecialTokenSettings(files: TokenizerFileContents, source: string): SpecialTokenSettings {
  const config = asRecord(files.tokenizerConfig, `${source}/tokenizer_config.json`);
  const map = asRecord(files.specialTokensMap, `${source}/special_tokens_map.json`);
  // special_tokens_map.json overrides tokenizer_config.json, as in transformers' from_pretrained.
  const pick = (key: string): string | undefined =>
    tokenContent(map[key], `${source}/special_tokens_map.json ${key}`) ??
    tokenContent(config[key], `${source}/tokenizer_config.json ${key}`);
  const additionalOf = (value: unknown, what: string): string[] => {
    if (value === undefined || value === null) return [];
    if (!Array.isArray(value)) throw new InternVLError('BAD_TOKENIZER', `${what} must be an array`);
    return value.map((v, i) => tokenContent(v, `${what}[${i}]`) as string).filter((v) => v !== undefined);
  };
  const additional = [
    ...new Set([
      ...additionalOf(
        config.additional_special_tokens,
        `${source}/tokenizer_config.json additional_special_tokens`,
      ),
      ...additionalOf(
        map.additional_special_tokens,
        `${source}/special_tokens_map.json additional_special_tokens`,
      ),
    ]),
  ];

  const addedTokens = new Map<number, AddedTokenSpec>();
  const addedJson = asRecord(files.addedTokens, `${source}/added_tokens.json`);
  for (const [content, id] of Object.entries(addedJson)) {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
      throw new InternVLError(
        'BAD_TOKENIZER',
        `${source}/added_tokens.json: id of '${content}' is not a token id`,
      );
    }
    addedTokens.set(id, { id, content, special: additional.includes(content), lstrip: false, rstrip: false });
  }
  const decoderWhat = `${source}/tokenizer_config.json added_tokens_decoder`;
  for (const [key, entry] of Object.entries(asRecord(config.added_tokens_decoder, decoderWhat))) {
    const id = tokenIdKey(key, decoderWhat);
    const content = tokenContent(entry, `${decoderWhat}.${key}`);
    if (content === undefined)
      throw new InternVLError('BAD_TOKENIZER', `${decoderWhat}.${key} has no content`);
    const spec = isRecord(entry) ? entry : {};
    addedTokens.set(id, {
      id,
      content,
      special: spec.special === true,
      lstrip: spec.lstrip === true,
      rstrip: spec.rstrip === true,
    });
  }
  return {
    bos: pick('bos_token'),
    eos: pick('eos_token'),
    pad: pick('pad_token'),
    unk: pick('unk_token'),
    additional,
    addBosToken: optionalBoolean(config.add_bos_token, `${source}/tokenizer_config.json add_bos_token`),
    addEosToken: optionalBoolean(config.add_eos_token, `${source}/tokenizer_config.json add_eos_token`),
    cleanUpTokenizationSpaces: optionalBoolean(
      config.clean_up_tokenization_spaces,
      `${source}/tokenizer_config.json clean_up_tokenization_spaces`,
    ),
    addedTokens,
  };
}
