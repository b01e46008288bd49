import { InternVLError } from '../errors.js';
import { AddedTokenSplitter } from './added-token-splitter.js';
import { BaseTokenizer } from './base-tokenizer.js';
import { SentencePieceBpe } from './sentencepiece.js';
import { PieceType, parseSentencePieceModel } from './sentencepiece-model.js';
import {
  readSpecialTokenSettings,
  type SpecialTokenSettings,
  type TokenizerFileContents,
} from './special-token-settings.js';
import type { Tokenizer } from './types.js';

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
