import { InternVLError } from '../errors.js';
import { ProtoReader } from './protobuf-reader.js';

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
