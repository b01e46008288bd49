import { InternVLError } from '../errors.js';
import { encodeBpe } from './sentencepiece-bpe-encode.js';
import { PieceType, type SentencePieceModel, SentencePieceModelType } from './sentencepiece-model.js';
import { SentencePieceVocab } from './sentencepiece-vocab.js';

export {
  PieceType,
  parseSentencePieceModel,
  type SentencePieceEntry,
  type SentencePieceModel,
  SentencePieceModelType,
} from './sentencepiece-model.js';

const SPACE_SYMBOL = '\u2581';
const utf8Decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

/**
 * A SentencePiece BPE model (the tokenizer.model of InternLM2): normalisation, score-ordered
 * merges, byte fallback, and decoding, with the semantics of sentencepiece's `bpe::Model` and
 * `SentencePieceProcessor` for identity-normalised models.
 */
export class SentencePieceBpe {
  readonly model: SentencePieceModel;
  private readonly vocab: SentencePieceVocab;
  readonly unkId: number;

  constructor(model: SentencePieceModel, source = 'tokenizer.model') {
    this.model = model;
    const { trainerSpec, normalizerSpec } = model;
    if (trainerSpec.modelType !== SentencePieceModelType.BPE) {
      throw new InternVLError(
        'UNSUPPORTED',
        `SentencePiece model ${source} has model_type ${trainerSpec.modelType}; only BPE (2) is supported`,
      );
    }
    if (normalizerSpec.precompiledCharsmap.length > 0) {
      throw new InternVLError(
        'UNSUPPORTED',
        `SentencePiece model ${source} uses the precompiled normalizer '${normalizerSpec.name}'; only identity normalisation is supported`,
      );
    }
    this.vocab = new SentencePieceVocab(model, source);
    this.unkId = this.vocab.unkId;
  }

  get size(): number {
    return this.model.pieces.length;
  }

  pieceToId(piece: string): number | undefined {
    return this.vocab.pieceToId(piece);
  }

  idToPiece(id: number): string | undefined {
    return Number.isInteger(id) && id >= 0 && id < this.model.pieces.length
      ? this.model.pieces[id].piece
      : undefined;
  }

  pieceType(id: number): PieceType | undefined {
    return Number.isInteger(id) && id >= 0 && id < this.model.pieces.length
      ? this.model.pieces[id].type
      : undefined;
  }

  /** sentencepiece's identity normaliser: whitespace cleanup, dummy prefix, ' ' → '▁'. */
  normalize(text: string): string {
    const spec = this.model.normalizerSpec;
    let s = text;
    if (spec.removeExtraWhitespaces) s = s.replace(/^ +/, '').replace(/ +$/, '').replace(/ {2,}/g, ' ');
    if (s.length === 0) return '';
    if (spec.addDummyPrefix) s = this.model.trainerSpec.treatWhitespaceAsSuffix ? `${s} ` : ` ${s}`;
    return spec.escapeWhitespaces ? s.replaceAll(' ', SPACE_SYMBOL) : s;
  }

  /** Ids of `text` (no BOS/EOS). */
  encode(text: string): number[] {
    return encodeBpe(this.normalize(text), this.vocab, this.model.trainerSpec.byteFallback);
  }

  /**
   * Text of a run of SentencePiece ids: '▁' → ' ', byte pieces assembled as UTF-8, control
   * pieces dropped, and the dummy-prefix space removed while nothing has been output yet.
   */
  decode(ids: ArrayLike<number>): string {
    const { normalizerSpec, trainerSpec } = this.model;
    const stripLeading = normalizerSpec.addDummyPrefix || normalizerSpec.removeExtraWhitespaces;
    let out = '';
    let bytes: number[] = [];
    const flushBytes = (): void => {
      if (bytes.length > 0) {
        out += utf8Decoder.decode(Uint8Array.from(bytes));
        bytes = [];
      }
    };
    for (let k = 0; k < ids.length; k++) {
      const id = ids[k];
      const entry = Number.isInteger(id) && id >= 0 ? this.model.pieces[id] : undefined;
      if (entry === undefined) continue;
      if (entry.type === PieceType.BYTE) {
        bytes.push(Number.parseInt(entry.piece.slice(3, 5), 16));
        continue;
      }
      flushBytes();
      if (entry.type === PieceType.CONTROL) continue;
      if (entry.type === PieceType.UNKNOWN) {
        out += trainerSpec.unkSurface;
        continue;
      }
      let piece = entry.piece;
      if (stripLeading && out.length === 0 && piece.startsWith(SPACE_SYMBOL)) piece = piece.slice(1);
      out += normalizerSpec.escapeWhitespaces ? piece.replaceAll(SPACE_SYMBOL, ' ') : piece;
    }
    flushBytes();
    return out;
  }
}
