import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { InternVLError } from '../errors.js';
import { PieceType, parseSentencePieceModel, SentencePieceBpe } from './sentencepiece.js';
import type { DecodeOptions, EncodeOptions, Tokenizer } from './types.js';

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

interface AddedTokenSpec {
  id: number;
  content: string;
  special: boolean;
  lstrip: boolean;
  rstrip: boolean;
}

/** Special-token settings gathered from tokenizer_config.json, special_tokens_map.json and added_tokens.json. */
interface SpecialTokenSettings {
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

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function asRecord(value: unknown, what: string): Record<string, unknown> {
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

function readSpecialTokenSettings(files: TokenizerFileContents, source: string): SpecialTokenSettings {
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

/** transformers' `clean_up_tokenization`: removes the space before punctuation and English contractions. */
export function cleanUpTokenization(text: string): string {
  return text
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

function checkText(text: unknown): string {
  if (typeof text !== 'string')
    throw new InternVLError('BAD_INPUT', `text to encode must be a string, got ${typeof text}`);
  return text;
}

function checkIds(ids: unknown): ArrayLike<number> {
  if (ids === null || typeof ids !== 'object' || typeof (ids as ArrayLike<number>).length !== 'number') {
    throw new InternVLError('BAD_INPUT', 'ids to decode must be an array of numbers');
  }
  return ids as ArrayLike<number>;
}

/** Shared parts of both tokenizer kinds: specials, BOS/EOS handling. */
abstract class BaseTokenizer implements Tokenizer {
  abstract readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  readonly padTokenId: number | undefined;
  readonly addBosToken: boolean;
  readonly addEosToken: boolean;
  protected readonly specialIds: ReadonlySet<number>;

  abstract tokenToId(token: string): number | undefined;
  abstract idToToken(id: number): string | undefined;
  /** Ids of `text` without BOS/EOS. */
  protected abstract encodeText(text: string): number[];
  /** Text of ids that are all known to the tokenizer (specials already removed if asked). */
  protected abstract decodeKnown(ids: number[]): string;

  protected constructor(
    settings: SpecialTokenSettings,
    defaults: { bos?: string; eos?: string; pad?: string; unk?: string; addBos: boolean; addEos: boolean },
    lookup: (token: string) => number | undefined,
    extraSpecialIds: Iterable<number>,
  ) {
    const idOf = (token: string | undefined): number | undefined =>
      token === undefined ? undefined : lookup(token);
    this.bosTokenId = idOf(settings.bos ?? defaults.bos);
    this.eosTokenId = idOf(settings.eos ?? defaults.eos);
    this.padTokenId = idOf(settings.pad ?? defaults.pad);
    this.addBosToken = (settings.addBosToken ?? defaults.addBos) && this.bosTokenId !== undefined;
    this.addEosToken = (settings.addEosToken ?? defaults.addEos) && this.eosTokenId !== undefined;
    const special = new Set<number>(extraSpecialIds);
    for (const t of settings.addedTokens.values()) if (t.special) special.add(t.id);
    for (const token of [settings.bos, settings.eos, settings.pad, settings.unk, ...settings.additional]) {
      const id = idOf(token);
      if (id !== undefined) special.add(id);
    }
    for (const id of [this.bosTokenId, this.eosTokenId, this.padTokenId])
      if (id !== undefined) special.add(id);
    this.specialIds = special;
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  encode(text: string, options?: EncodeOptions): number[] {
    const ids = this.encodeText(checkText(text));
    if (options?.addSpecialTokens === false) return ids;
    if (this.addBosToken) ids.unshift(this.bosTokenId as number);
    if (this.addEosToken) ids.push(this.eosTokenId as number);
    return ids;
  }

  decode(ids: ArrayLike<number>, options?: DecodeOptions): string {
    const list = checkIds(ids);
    const skip = options?.skipSpecialTokens === true;
    const known: number[] = [];
    for (let i = 0; i < list.length; i++) {
      const id = list[i];
      if (this.idToToken(id) === undefined) continue;
      if (skip && this.specialIds.has(id)) continue;
      known.push(id);
    }
    return known.length === 0 ? '' : this.decodeKnown(known);
  }
}

/** A tokenizer.json tokenizer (Qwen2 / byte-level BPE), run by @huggingface/tokenizers. */
class JsonTokenizer extends BaseTokenizer {
  readonly vocabSize: number;
  private readonly hf: HfTokenizer;
  private readonly cleanUp: boolean;

  constructor(hf: HfTokenizer, settings: SpecialTokenSettings) {
    const lookup = (token: string): number | undefined => hf.token_to_id(token);
    const probe = (add: boolean): number[] => hf.encode('a', { add_special_tokens: add }).ids;
    // Without add_bos_token/add_eos_token in the config, follow what the post-processor would add.
    const plain = probe(false);
    const withSpecials = probe(true);
    const bosId = settings.bos === undefined ? undefined : lookup(settings.bos);
    const eosId = settings.eos === undefined ? undefined : lookup(settings.eos);
    const addBos = withSpecials.length > plain.length && bosId !== undefined && withSpecials[0] === bosId;
    const addEos = withSpecials.length > plain.length && eosId !== undefined && withSpecials.at(-1) === eosId;
    const libSpecials = [...hf.get_added_tokens_decoder().values()].filter((t) => t.special).map((t) => t.id);
    super(settings, { addBos, addEos }, lookup, libSpecials);
    this.hf = hf;
    // transformers' (4.x) default for fast tokenizers.
    this.cleanUp = settings.cleanUpTokenizationSpaces ?? true;
    let maxId = -1;
    for (const id of hf.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
  }

  tokenToId(token: string): number | undefined {
    return typeof token === 'string' ? this.hf.token_to_id(token) : undefined;
  }

  idToToken(id: number): string | undefined {
    return Number.isSafeInteger(id) && id >= 0 ? this.hf.id_to_token(id) : undefined;
  }

  protected encodeText(text: string): number[] {
    return this.hf.encode(text, { add_special_tokens: false }).ids;
  }

  protected decodeKnown(ids: number[]): string {
    return this.hf.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: this.cleanUp });
  }
}

/**
 * Builds a Tokenizer from tokenizer.json contents. Added tokens of tokenizer_config.json's
 * added_tokens_decoder that tokenizer.json lacks are added; for ids in both, the config's entry wins.
 */
export function createJsonTokenizer(files: TokenizerFileContents): Tokenizer {
  const source = files.source ?? 'tokenizer';
  const json = files.tokenizerJson;
  if (!isRecord(json) || !isRecord(json.model)) {
    throw new InternVLError(
      'BAD_TOKENIZER',
      `${source}/tokenizer.json must be an object with a 'model' object`,
    );
  }
  const settings = readSpecialTokenSettings(files, source);
  const jsonAdded = json.added_tokens ?? [];
  if (!Array.isArray(jsonAdded)) {
    throw new InternVLError('BAD_TOKENIZER', `${source}/tokenizer.json added_tokens must be an array`);
  }
  const added = new Map<number, Record<string, unknown>>();
  jsonAdded.forEach((entry, i) => {
    if (!isRecord(entry) || !Number.isSafeInteger(entry.id) || typeof entry.content !== 'string') {
      throw new InternVLError(
        'BAD_TOKENIZER',
        `${source}/tokenizer.json added_tokens[${i}] needs an integer id and content`,
      );
    }
    added.set(entry.id as number, entry);
  });
  for (const t of settings.addedTokens.values()) {
    added.set(t.id, {
      ...(added.get(t.id) ?? { single_word: false, normalized: false }),
      id: t.id,
      content: t.content,
      special: t.special,
      lstrip: t.lstrip,
      rstrip: t.rstrip,
    });
  }
  const config = { ...asRecord(files.tokenizerConfig, `${source}/tokenizer_config.json`) };
  config.additional_special_tokens = settings.additional;
  let hf: HfTokenizer;
  try {
    hf = new HfTokenizer(
      { ...json, added_tokens: [...added.values()].sort((a, b) => Number(a.id) - Number(b.id)) },
      config,
    );
  } catch (error) {
    throw new InternVLError(
      'BAD_TOKENIZER',
      `${source}/tokenizer.json could not be loaded: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
  return new JsonTokenizer(hf, settings);
}

/** Splits `text` at occurrences of `tokens` (earliest, then longest match), honouring lstrip/rstrip. */
class AddedTokenSplitter {
  private readonly byFirst = new Map<string, string[]>();

  constructor(
    tokens: Iterable<string>,
    private readonly strip: ReadonlyMap<string, { lstrip: boolean; rstrip: boolean }>,
  ) {
    for (const token of tokens) {
      if (token.length === 0) continue;
      const list = this.byFirst.get(token[0]) ?? [];
      if (!list.includes(token)) list.push(token);
      this.byFirst.set(token[0], list);
    }
    for (const list of this.byFirst.values()) list.sort((a, b) => b.length - a.length);
  }

  split(text: string): Array<{ token: string } | { text: string }> {
    const parts: Array<{ token: string } | { text: string }> = [];
    let chunkStart = 0;
    let rstripNext = false;
    const pushText = (end: number): void => {
      let chunk = text.slice(chunkStart, end);
      if (rstripNext) chunk = chunk.trimStart();
      rstripNext = false;
      if (chunk.length > 0) parts.push({ text: chunk });
    };
    for (let i = 0; i < text.length; ) {
      const token = this.byFirst.get(text[i])?.find((t) => text.startsWith(t, i));
      if (token === undefined) {
        i++;
        continue;
      }
      const strip = this.strip.get(token);
      let end = i;
      if (strip?.lstrip) while (end > chunkStart && /\s/.test(text[end - 1])) end--;
      pushText(end);
      parts.push({ token });
      i += token.length;
      chunkStart = i;
      rstripNext = strip?.rstrip === true;
    }
    pushText(text.length);
    return parts;
  }
}

/**
 * A SentencePiece tokenizer as transformers' slow LlamaTokenizer-like classes (InternLM2Tokenizer) run
 * it: text is split at added/special tokens first, and each remaining chunk is encoded by SentencePiece
 * on its own (so each chunk gets the dummy prefix); decoding treats each run of ordinary pieces between
 * added tokens as one SentencePiece decode. Unlike transformers' slow decode, no spaces are inserted
 * around special tokens kept in the output (with skipSpecialTokens both agree).
 */
class SentencePieceTokenizer extends BaseTokenizer {
  readonly vocabSize: number;
  private readonly sp: SentencePieceBpe;
  private readonly addedByContent: Map<string, number>;
  private readonly addedById = new Map<number, string>();
  /** Ids written literally in text (added tokens, control and unknown pieces): they split runs. */
  private readonly literalIds = new Set<number>();
  private readonly splitter: AddedTokenSplitter;
  private readonly cleanUp: boolean;

  constructor(sp: SentencePieceBpe, settings: SpecialTokenSettings) {
    const addedByContent = new Map<string, number>();
    for (const t of settings.addedTokens.values()) addedByContent.set(t.content, t.id);
    const lookup = (token: string): number | undefined => addedByContent.get(token) ?? sp.pieceToId(token);
    const { trainerSpec } = sp.model;
    const pieceAt = (id: number): string | undefined => (id >= 0 ? sp.idToPiece(id) : undefined);
    const reservedIds: number[] = [];
    for (let id = 0; id < sp.size; id++) {
      const type = sp.pieceType(id);
      if (type === PieceType.CONTROL || type === PieceType.UNKNOWN) reservedIds.push(id);
    }
    super(
      settings,
      {
        bos: pieceAt(trainerSpec.bosId),
        eos: pieceAt(trainerSpec.eosId),
        pad: pieceAt(trainerSpec.padId),
        unk: pieceAt(trainerSpec.unkId),
        // InternLM2Tokenizer's defaults.
        addBos: true,
        addEos: false,
      },
      lookup,
      reservedIds,
    );
    this.sp = sp;
    // InternLM2Tokenizer's default.
    this.cleanUp = settings.cleanUpTokenizationSpaces ?? false;
    this.addedByContent = addedByContent;
    let maxId = sp.size - 1;
    for (const t of settings.addedTokens.values()) {
      this.addedById.set(t.id, t.content);
      if (t.id > maxId) maxId = t.id;
    }
    this.vocabSize = maxId + 1;
    for (const id of [...reservedIds, ...this.specialIds, ...this.addedById.keys()]) this.literalIds.add(id);
    const splitTokens: string[] = [];
    for (const id of this.literalIds) {
      const token = this.idToToken(id);
      if (token !== undefined) splitTokens.push(token);
    }
    const strip = new Map<string, { lstrip: boolean; rstrip: boolean }>();
    for (const t of settings.addedTokens.values())
      strip.set(t.content, { lstrip: t.lstrip, rstrip: t.rstrip });
    this.splitter = new AddedTokenSplitter(splitTokens, strip);
  }

  tokenToId(token: string): number | undefined {
    return typeof token === 'string'
      ? (this.addedByContent.get(token) ?? this.sp.pieceToId(token))
      : undefined;
  }

  idToToken(id: number): string | undefined {
    if (!Number.isSafeInteger(id) || id < 0) return undefined;
    return this.addedById.get(id) ?? this.sp.idToPiece(id);
  }

  protected encodeText(text: string): number[] {
    const ids: number[] = [];
    for (const part of this.splitter.split(text)) {
      if ('token' in part) ids.push(this.tokenToId(part.token) as number);
      else for (const id of this.sp.encode(part.text)) ids.push(id);
    }
    return ids;
  }

  protected decodeKnown(ids: number[]): string {
    let out = '';
    let runStart = 0;
    for (let i = 0; i <= ids.length; i++) {
      if (i < ids.length && !this.literalIds.has(ids[i])) continue;
      if (i > runStart) out += this.sp.decode(ids.slice(runStart, i));
      if (i < ids.length) out += this.idToToken(ids[i]);
      runStart = i + 1;
    }
    return this.cleanUp ? cleanUpTokenization(out) : out;
  }
}

/** Builds a Tokenizer from a SentencePiece tokenizer.model plus its HF config files. */
export function createSentencePieceTokenizer(files: TokenizerFileContents): Tokenizer {
  const source = files.source ?? 'tokenizer';
  if (!(files.sentencePieceModel instanceof Uint8Array)) {
    throw new InternVLError('BAD_TOKENIZER', `${source}/tokenizer.model contents are missing`);
  }
  const settings = readSpecialTokenSettings(files, source);
  const model = parseSentencePieceModel(files.sentencePieceModel, `${source}/tokenizer.model`);
  return new SentencePieceTokenizer(new SentencePieceBpe(model, `${source}/tokenizer.model`), settings);
}

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
