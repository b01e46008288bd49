/** Writes small SentencePiece ModelProto files for the tests (a minimal protobuf encoder). */

function varint(value: number): number[] {
  // Negative int32 values are sign-extended to 64 bits (10 bytes), as protobuf does.
  let v = BigInt.asUintN(64, BigInt(value));
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return out;
}

const tag = (field: number, wireType: number): number[] => varint((field << 3) | wireType);
const lengthDelimited = (field: number, body: number[]): number[] => [
  ...tag(field, 2),
  ...varint(body.length),
  ...body,
];
const stringField = (field: number, s: string): number[] =>
  lengthDelimited(field, [...new TextEncoder().encode(s)]);
const varintField = (field: number, v: number): number[] => [...tag(field, 0), ...varint(v)];
function floatField(field: number, v: number): number[] {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setFloat32(0, v, true);
  return [...tag(field, 5), ...bytes];
}

export const TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export interface FixturePiece {
  piece: string;
  score?: number;
  type?: number;
}

export interface FixtureOptions {
  modelType?: number;
  byteFallback?: boolean;
  addDummyPrefix?: boolean;
  removeExtraWhitespaces?: boolean;
  /** Appended unknown field, to check that parsers skip what they do not know. */
  withUnknownField?: boolean;
}

export function encodeSentencePieceModel(pieces: FixturePiece[], options: FixtureOptions = {}): Uint8Array {
  const out: number[] = [];
  for (const p of pieces) {
    const body = [...stringField(1, p.piece), ...floatField(2, p.score ?? 0)];
    if (p.type !== undefined && p.type !== TYPE.NORMAL) body.push(...varintField(3, p.type));
    out.push(...lengthDelimited(1, body));
  }
  const trainer = [
    ...varintField(3, options.modelType ?? 2),
    ...varintField(4, pieces.length),
    ...varintField(35, options.byteFallback === false ? 0 : 1),
    ...varintField(40, 0),
    ...varintField(41, 1),
    ...varintField(42, 2),
    ...varintField(43, -1),
  ];
  out.push(...lengthDelimited(2, trainer));
  const normalizer = [
    ...stringField(1, 'identity'),
    ...varintField(3, options.addDummyPrefix === false ? 0 : 1),
    ...varintField(4, options.removeExtraWhitespaces === true ? 1 : 0),
    ...varintField(5, 1),
  ];
  out.push(...lengthDelimited(3, normalizer));
  if (options.withUnknownField)
    out.push(...stringField(99, 'ignored'), ...varintField(98, 7), ...floatField(97, 1));
  return Uint8Array.from(out);
}

/**
 * The test vocabulary: <unk>, <s>, </s>, 256 byte pieces (ids 3..258), then characters and merged
 * pieces whose scores make score order differ from left-to-right order, user-defined chat tokens and
 * one UNUSED piece.
 */
export function fixturePieces(): FixturePiece[] {
  const pieces: FixturePiece[] = [
    { piece: '<unk>', type: TYPE.UNKNOWN },
    { piece: '<s>', type: TYPE.CONTROL },
    { piece: '</s>', type: TYPE.CONTROL },
  ];
  for (let b = 0; b < 256; b++) {
    pieces.push({ piece: `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, type: TYPE.BYTE });
  }
  for (const ch of ['▁', 'a', 'b', 'c', 'h', 'e', 'l', 'o', 'x', '好', '\n'])
    pieces.push({ piece: ch, score: -20 });
  pieces.push(
    { piece: 'ab', score: -5 },
    { piece: 'bc', score: -1 },
    { piece: '▁a', score: -3 },
    { piece: 'aa', score: -2 },
    { piece: 'he', score: -4 },
    { piece: 'll', score: -4.5 },
    { piece: 'hell', score: -3 },
    { piece: 'hello', score: -2 },
    { piece: '▁hello', score: -1.5 },
    { piece: 'xx', score: -0.5, type: TYPE.UNUSED },
    { piece: '<|im_start|>', type: TYPE.USER_DEFINED },
    { piece: '<|im_end|>', type: TYPE.USER_DEFINED },
  );
  return pieces;
}

/** Id of a piece in `fixturePieces()`. */
export function fixtureId(piece: string): number {
  const id = fixturePieces().findIndex((p) => p.piece === piece);
  if (id < 0) throw new Error(`no fixture piece ${piece}`);
  return id;
}

/** Id of byte piece <0xXX> in `fixturePieces()`. */
export const fixtureByteId = (b: number): number => 3 + b;
