import { InternVLError } from '../errors.js';
import { PieceType, type SentencePieceEntry, type SentencePieceModel } from './sentencepiece-model.js';

/**
 * The lookup tables of a SentencePiece model's pieces: piece → id (reserved pieces first, as
 * sentencepiece does), the byte pieces, and the user-defined pieces that are never split or merged.
 */
export class SentencePieceVocab {
  readonly pieces: readonly SentencePieceEntry[];
  /** NORMAL, USER_DEFINED and UNUSED pieces: the ones merges may produce. */
  readonly mergeable: ReadonlyMap<string, number>;
  /** CONTROL, UNKNOWN and BYTE pieces (looked up first, as sentencepiece does). */
  private readonly reserved: ReadonlyMap<string, number>;
  /** Id of the <0xXX> piece of each byte value; -1 where the model has none. */
  readonly byteIds: Int32Array;
  /** User-defined pieces by first UTF-16 unit, longest first: they are never split or merged. */
  readonly userDefinedByFirst: ReadonlyMap<string, readonly string[]>;
  readonly unkId: number;

  constructor(model: SentencePieceModel, source: string) {
    this.pieces = model.pieces;
    const mergeable = new Map<string, number>();
    const reserved = new Map<string, number>();
    const userDefinedByFirst = new Map<string, string[]>();
    this.byteIds = new Int32Array(256).fill(-1);
    let unkId = -1;
    model.pieces.forEach((p, id) => {
      const isMergeable =
        p.type === PieceType.NORMAL || p.type === PieceType.USER_DEFINED || p.type === PieceType.UNUSED;
      const map = isMergeable ? mergeable : reserved;
      if (!map.has(p.piece)) map.set(p.piece, id);
      if (p.type === PieceType.UNKNOWN && unkId < 0) unkId = id;
      if (p.type === PieceType.BYTE) {
        const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(p.piece);
        if (!m)
          throw new InternVLError('BAD_TOKENIZER', `${source}: byte piece ${id} is '${p.piece}', not <0xXX>`);
        this.byteIds[Number.parseInt(m[1], 16)] = id;
      }
      if (p.type === PieceType.USER_DEFINED && p.piece.length > 0) {
        const list = userDefinedByFirst.get(p.piece[0]) ?? [];
        list.push(p.piece);
        userDefinedByFirst.set(p.piece[0], list);
      }
    });
    for (const list of userDefinedByFirst.values()) list.sort((a, b) => b.length - a.length);
    if (unkId < 0)
      throw new InternVLError('BAD_TOKENIZER', `SentencePiece model ${source} has no UNKNOWN piece`);
    this.unkId = unkId;
    if (model.trainerSpec.byteFallback && this.byteIds.includes(-1)) {
      throw new InternVLError(
        'BAD_TOKENIZER',
        `SentencePiece model ${source} has byte_fallback but lacks byte pieces`,
      );
    }
    this.mergeable = mergeable;
    this.reserved = reserved;
    this.userDefinedByFirst = userDefinedByFirst;
  }

  pieceToId(piece: string): number | undefined {
    return this.reserved.get(piece) ?? this.mergeable.get(piece);
  }
}
