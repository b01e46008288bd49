import { InternVLError } from '../errors.js';

/** `ModelProto.SentencePiece.Type` of sentencepiece_model.proto. */
export const PieceType = {
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;
export type PieceType = (typeof PieceType)[keyof typeof PieceType];

/** `TrainerSpec.ModelType`. */
export const SentencePieceModelType = { UNIGRAM: 1, BPE: 2, WORD: 3, CHAR: 4 } as const;

export interface SentencePieceEntry {
  piece: string;
  score: number;
  type: PieceType;
}

export interface SentencePieceModel {
  pieces: SentencePieceEntry[];
  trainerSpec: {
    modelType: number;
    byteFallback: boolean;
    treatWhitespaceAsSuffix: boolean;
    unkId: number;
    bosId: number;
    eosId: number;
    padId: number;
    unkSurface: string;
  };
  normalizerSpec: {
    name: string;
    precompiledCharsmap: Uint8Array;
    addDummyPrefix: boolean;
    removeExtraWhitespaces: boolean;
    escapeWhitespaces: boolean;
  };
}

const SPACE_SYMBOL = '\u2581';
const utf8Decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
const utf8Encoder = new TextEncoder();

/** Minimal protobuf wire-format reader (proto2 scalars, strings, nested messages). */
class ProtoReader {
  pos: number;
  constructor(
    private readonly bytes: Uint8Array,
    private readonly what: string,
    start = 0,
    readonly end = bytes.length,
  ) {
    this.pos = start;
  }

  private fail(problem: string): never {
    throw new InternVLError('BAD_TOKENIZER', `${this.what}: ${problem} at byte ${this.pos}`);
  }

  /** Reads a varint; returns its low 32 bits (as uint32) — enough for tags, lengths, enums, int32, bool. */
  varint(): number {
    let low = 0;
    let shift = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail('truncated varint');
      const b = this.bytes[this.pos++];
      if (shift < 32) low |= (b & 0x7f) << shift;
      shift += 7;
      if ((b & 0x80) === 0) return low >>> 0;
    }
    this.fail('varint longer than 10 bytes');
  }

  length(): number {
    const n = this.varint();
    if (n > this.end - this.pos) this.fail(`length ${n} runs past the end`);
    return n;
  }

  bytesField(): Uint8Array {
    const n = this.length();
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  string(): string {
    return utf8Decoder.decode(this.bytesField());
  }

  float(): number {
    if (this.end - this.pos < 4) this.fail('truncated float');
    const view = new DataView(this.bytes.buffer, this.bytes.byteOffset + this.pos, 4);
    this.pos += 4;
    return view.getFloat32(0, true);
  }

  /** A nested message: a reader over its bytes. */
  message(): ProtoReader {
    const n = this.length();
    const sub = new ProtoReader(this.bytes, this.what, this.pos, this.pos + n);
    this.pos += n;
    return sub;
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        if (this.end - this.pos < 8) this.fail('truncated fixed64');
        this.pos += 8;
        return;
      case 2: {
        const n = this.length();
        this.pos += n;
        return;
      }
      case 5:
        if (this.end - this.pos < 4) this.fail('truncated fixed32');
        this.pos += 4;
        return;
      default:
        this.fail(`unsupported wire type ${wireType}`);
    }
  }

  /** Iterates fields: calls `onField(fieldNumber, wireType)`, which must consume the value or return false to skip it. */
  forEachField(onField: (field: number, wireType: number) => boolean): void {
    while (this.pos < this.end) {
      const tag = this.varint();
      const field = tag >>> 3;
      const wireType = tag & 7;
      if (field === 0) this.fail('field number 0');
      if (!onField(field, wireType)) this.skip(wireType);
    }
  }

  expectWireType(actual: number, expected: number, field: string): void {
    if (actual !== expected) this.fail(`field ${field} has wire type ${actual}, expected ${expected}`);
  }
}

/** Parses a SentencePiece `tokenizer.model` (serialized `ModelProto`). */
export function parseSentencePieceModel(bytes: Uint8Array, source = 'tokenizer.model'): SentencePieceModel {
  const model: SentencePieceModel = {
    pieces: [],
    trainerSpec: {
      modelType: SentencePieceModelType.UNIGRAM,
      byteFallback: false,
      treatWhitespaceAsSuffix: false,
      unkId: 0,
      bosId: 1,
      eosId: 2,
      padId: -1,
      unkSurface: ' \u2047 ',
    },
    normalizerSpec: {
      name: '',
      precompiledCharsmap: new Uint8Array(0),
      addDummyPrefix: true,
      removeExtraWhitespaces: true,
      escapeWhitespaces: true,
    },
  };
  const reader = new ProtoReader(bytes, `SentencePiece model ${source}`);
  reader.forEachField((field, wireType) => {
    if (field === 1) {
      reader.expectWireType(wireType, 2, 'pieces');
      model.pieces.push(parsePiece(reader.message(), model.pieces.length));
      return true;
    }
    if (field === 2) {
      reader.expectWireType(wireType, 2, 'trainer_spec');
      parseTrainerSpec(reader.message(), model.trainerSpec);
      return true;
    }
    if (field === 3) {
      reader.expectWireType(wireType, 2, 'normalizer_spec');
      parseNormalizerSpec(reader.message(), model.normalizerSpec);
      return true;
    }
    return false;
  });
  if (model.pieces.length === 0) {
    throw new InternVLError('BAD_TOKENIZER', `SentencePiece model ${source} has no pieces`);
  }
  return model;
}

function parsePiece(r: ProtoReader, index: number): SentencePieceEntry {
  const entry: SentencePieceEntry = { piece: '', score: 0, type: PieceType.NORMAL };
  r.forEachField((field, wireType) => {
    if (field === 1 && wireType === 2) entry.piece = r.string();
    else if (field === 2 && wireType === 5) entry.score = r.float();
    else if (field === 3 && wireType === 0) {
      const type = r.varint();
      if (type < 1 || type > 6) {
        throw new InternVLError('BAD_TOKENIZER', `SentencePiece piece ${index} has unknown type ${type}`);
      }
      entry.type = type as PieceType;
    } else return false;
    return true;
  });
  return entry;
}

function parseTrainerSpec(r: ProtoReader, spec: SentencePieceModel['trainerSpec']): void {
  r.forEachField((field, wireType) => {
    if (wireType === 0) {
      const v = r.varint();
      if (field === 3) spec.modelType = v;
      else if (field === 24) spec.treatWhitespaceAsSuffix = v !== 0;
      else if (field === 35) spec.byteFallback = v !== 0;
      else if (field === 40) spec.unkId = v | 0;
      else if (field === 41) spec.bosId = v | 0;
      else if (field === 42) spec.eosId = v | 0;
      else if (field === 43) spec.padId = v | 0;
      return true;
    }
    if (field === 44 && wireType === 2) {
      spec.unkSurface = r.string();
      return true;
    }
    return false;
  });
}

function parseNormalizerSpec(r: ProtoReader, spec: SentencePieceModel['normalizerSpec']): void {
  r.forEachField((field, wireType) => {
    if (field === 1 && wireType === 2) spec.name = r.string();
    else if (field === 2 && wireType === 2) spec.precompiledCharsmap = r.bytesField().slice();
    else if (wireType === 0 && field >= 3 && field <= 5) {
      const on = r.varint() !== 0;
      if (field === 3) spec.addDummyPrefix = on;
      else if (field === 4) spec.removeExtraWhitespaces = on;
      else spec.escapeWhitespaces = on;
    } else return false;
    return true;
  });
}

interface MergeCandidate {
  left: number;
  right: number;
  score: number;
  /** UTF-16 length of the merged piece: stale candidates no longer match it. */
  size: number;
}

/** Max-heap on score; equal scores pop the leftmost pair first. */
class MergeQueue {
  private readonly items: MergeCandidate[] = [];
  get size(): number {
    return this.items.length;
  }
  private before(a: MergeCandidate, b: MergeCandidate): boolean {
    return a.score > b.score || (a.score === b.score && a.left < b.left);
  }
  push(c: MergeCandidate): void {
    const items = this.items;
    items.push(c);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(items[i], items[parent])) break;
      [items[i], items[parent]] = [items[parent], items[i]];
      i = parent;
    }
  }
  pop(): MergeCandidate {
    const items = this.items;
    const top = items[0];
    const last = items.pop() as MergeCandidate;
    if (items.length > 0) {
      items[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < items.length && this.before(items[l], items[best])) best = l;
        if (r < items.length && this.before(items[r], items[best])) best = r;
        if (best === i) break;
        [items[i], items[best]] = [items[best], items[i]];
        i = best;
      }
    }
    return top;
  }
}

/**
 * A SentencePiece BPE model (the tokenizer.model of InternLM2): normalisation, score-ordered
 * merges, byte fallback, and decoding, with the semantics of sentencepiece's `bpe::Model` and
 * `SentencePieceProcessor` for identity-normalised models.
 */
export class SentencePieceBpe {
  readonly model: SentencePieceModel;
  /** NORMAL, USER_DEFINED and UNUSED pieces: the ones merges may produce. */
  private readonly mergeable = new Map<string, number>();
  /** CONTROL, UNKNOWN and BYTE pieces (looked up first, as sentencepiece does). */
  private readonly reserved = new Map<string, number>();
  private readonly byteIds: Int32Array;
  /** User-defined pieces by first UTF-16 unit, longest first: they are never split or merged. */
  private readonly userDefinedByFirst = new Map<string, string[]>();
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
    this.byteIds = new Int32Array(256).fill(-1);
    let unkId = -1;
    model.pieces.forEach((p, id) => {
      const isMergeable =
        p.type === PieceType.NORMAL || p.type === PieceType.USER_DEFINED || p.type === PieceType.UNUSED;
      const map = isMergeable ? this.mergeable : this.reserved;
      if (!map.has(p.piece)) map.set(p.piece, id);
      if (p.type === PieceType.UNKNOWN && unkId < 0) unkId = id;
      if (p.type === PieceType.BYTE) {
        const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(p.piece);
        if (!m)
          throw new InternVLError('BAD_TOKENIZER', `${source}: byte piece ${id} is '${p.piece}', not <0xXX>`);
        this.byteIds[Number.parseInt(m[1], 16)] = id;
      }
      if (p.type === PieceType.USER_DEFINED && p.piece.length > 0) {
        const list = this.userDefinedByFirst.get(p.piece[0]) ?? [];
        list.push(p.piece);
        this.userDefinedByFirst.set(p.piece[0], list);
      }
    });
    for (const list of this.userDefinedByFirst.values()) list.sort((a, b) => b.length - a.length);
    if (unkId < 0)
      throw new InternVLError('BAD_TOKENIZER', `SentencePiece model ${source} has no UNKNOWN piece`);
    this.unkId = unkId;
    if (trainerSpec.byteFallback && this.byteIds.includes(-1)) {
      throw new InternVLError(
        'BAD_TOKENIZER',
        `SentencePiece model ${source} has byte_fallback but lacks byte pieces`,
      );
    }
  }

  get size(): number {
    return this.model.pieces.length;
  }

  pieceToId(piece: string): number | undefined {
    return this.reserved.get(piece) ?? this.mergeable.get(piece);
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
    return this.encodeNormalized(this.normalize(text));
  }

  private encodeNormalized(normalized: string): number[] {
    if (normalized.length === 0) return [];
    // Initial symbols: user-defined pieces (frozen) or single code points.
    const pieces: string[] = [];
    const frozen: boolean[] = [];
    for (let i = 0; i < normalized.length; ) {
      const match = this.userDefinedByFirst.get(normalized[i])?.find((p) => normalized.startsWith(p, i));
      if (match !== undefined) {
        pieces.push(match);
        frozen.push(true);
        i += match.length;
      } else {
        const cp = normalized.codePointAt(i) as number;
        const len = cp > 0xffff ? 2 : 1;
        pieces.push(normalized.slice(i, i + len));
        frozen.push(false);
        i += len;
      }
    }
    const n = pieces.length;
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    // Merges that produced UNUSED pieces, to split them back afterwards.
    const unusedParts = new Map<string, [string, string]>();
    const queue = new MergeQueue();
    const consider = (left: number, right: number): void => {
      if (left < 0 || right < 0 || frozen[left] || frozen[right]) return;
      const merged = pieces[left] + pieces[right];
      const id = this.mergeable.get(merged);
      if (id === undefined) return;
      const entry = this.model.pieces[id];
      queue.push({ left, right, score: entry.score, size: merged.length });
      if (entry.type === PieceType.UNUSED) unusedParts.set(merged, [pieces[left], pieces[right]]);
    };
    for (let i = 1; i < n; i++) consider(i - 1, i);
    while (queue.size > 0) {
      const top = queue.pop();
      const l = pieces[top.left];
      const r = pieces[top.right];
      if (l.length === 0 || r.length === 0 || l.length + r.length !== top.size) continue;
      pieces[top.left] = l + r;
      pieces[top.right] = '';
      next[top.left] = next[top.right];
      if (next[top.right] >= 0) prev[next[top.right]] = top.left;
      consider(prev[top.left], top.left);
      consider(top.left, next[top.left]);
    }

    const ids: number[] = [];
    const byteFallback = this.model.trainerSpec.byteFallback;
    const emit = (piece: string): void => {
      const id = this.pieceToId(piece);
      if (id !== undefined && this.model.pieces[id].type === PieceType.UNUSED) {
        const parts = unusedParts.get(piece);
        if (parts) {
          emit(parts[0]);
          emit(parts[1]);
          return;
        }
      }
      if (id !== undefined && id !== this.unkId) {
        ids.push(id);
      } else if (byteFallback) {
        for (const b of utf8Encoder.encode(piece)) ids.push(this.byteIds[b]);
      } else if (ids.length === 0 || ids[ids.length - 1] !== this.unkId) {
        // Consecutive unknown pieces collapse into one <unk>, as sentencepiece does.
        ids.push(this.unkId);
      }
    };
    for (let i = 0; i !== -1; i = next[i]) emit(pieces[i]);
    return ids;
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
