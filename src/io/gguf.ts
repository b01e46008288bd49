/**
 * GGUF v3 (ggml's single-file model format, read by llama.cpp): a streaming writer, a reader of the
 * header (metadata and tensor infos, not the data) and Q4_0 blocks. Layout: magic "GGUF", version,
 * tensor count and metadata count (u64), the metadata key/values, the tensor infos (name, dims with
 * the contiguous dimension first, ggml type, offset into the data section), zero padding to
 * `general.alignment` (32 unless set), then the tensor data, each tensor starting on an aligned offset.
 * All little-endian; strings are a u64 byte length and UTF-8 without a terminator.
 */
import { open, rename, rm } from 'node:fs/promises';
import { InternVLError } from '../errors.js';

type Scalar = number | bigint | boolean;
interface ScalarCodec {
  /** The gguf_type id. */
  id: number;
  bytes: number;
  get: (view: DataView, at: number) => Scalar;
  set: (view: DataView, at: number, value: Scalar) => void;
}
type NumberName = 'Uint8' | 'Int8' | 'Uint16' | 'Int16' | 'Uint32' | 'Int32' | 'Float32' | 'Float64';
type BigName = 'BigUint64' | 'BigInt64';
/** A codec through DataView's get<name>/set<name> (little-endian). */
function codec(id: number, bytes: number, name: NumberName | BigName): ScalarCodec {
  const get = DataView.prototype[`get${name}`] as (
    this: DataView,
    at: number,
    le: boolean,
  ) => number | bigint;
  const set = DataView.prototype[`set${name}`] as (this: DataView, at: number, x: never, le: boolean) => void;
  const convert = name.startsWith('Big') ? BigInt : Number;
  return {
    id,
    bytes,
    get: (v, at) => get.call(v, at, true),
    set: (v, at, x) => set.call(v, at, convert(x) as never, true),
  };
}

/** Metadata scalar types (gguf_type ids; 8 is string, 9 array). */
const SCALARS = {
  uint8: codec(0, 1, 'Uint8'),
  int8: codec(1, 1, 'Int8'),
  uint16: codec(2, 2, 'Uint16'),
  int16: codec(3, 2, 'Int16'),
  uint32: codec(4, 4, 'Uint32'),
  int32: codec(5, 4, 'Int32'),
  float32: codec(6, 4, 'Float32'),
  bool: { ...codec(7, 1, 'Uint8'), get: (v: DataView, at: number) => v.getUint8(at) !== 0 },
  uint64: codec(10, 8, 'BigUint64'),
  int64: codec(11, 8, 'BigInt64'),
  float64: codec(12, 8, 'Float64'),
} satisfies Record<string, ScalarCodec>;
const STRING_ID = 8;
const ARRAY_ID = 9;
type ScalarType = keyof typeof SCALARS | 'string';
const SCALAR_BY_ID = new Map<number, ScalarCodec>(Object.values(SCALARS).map((c) => [c.id, c]));
const typeId = (type: ScalarType) => (type === 'string' ? STRING_ID : SCALARS[type].id);

export type GgufValue =
  | { type: ScalarType; value: number | bigint | boolean | string }
  | { type: 'array'; itemType: ScalarType; values: readonly (number | bigint | boolean | string)[] };

/** Shorthands for metadata values. */
export const gguf = {
  u32: (value: number): GgufValue => ({ type: 'uint32', value }),
  i32: (value: number): GgufValue => ({ type: 'int32', value }),
  f32: (value: number): GgufValue => ({ type: 'float32', value }),
  bool: (value: boolean): GgufValue => ({ type: 'bool', value }),
  str: (value: string): GgufValue => ({ type: 'string', value }),
  array: (itemType: ScalarType, values: readonly (number | bigint | boolean | string)[]): GgufValue => ({
    type: 'array',
    itemType,
    values,
  }),
};

/** The ggml tensor types this module writes: ids, elements per block and bytes per block. */
export const GGML_TYPES = {
  F32: { id: 0, block: 1, bytes: 4 },
  F16: { id: 1, block: 1, bytes: 2 },
  Q4_0: { id: 2, block: 32, bytes: 18 },
} as const;
export type GgmlType = keyof typeof GGML_TYPES;

export const GGUF_DEFAULT_ALIGNMENT = 32;

export interface GgufTensor {
  name: string;
  type: GgmlType;
  /** ggml order: dims[0] is the contiguous one (a PyTorch [out, in] weight is [in, out]). */
  dims: readonly number[];
  /** The tensor's bytes in order, in chunks, asked for only when the tensor is written. */
  data: () => Iterable<Uint8Array> | AsyncIterable<Uint8Array>;
}

/** Bytes of a tensor of `type` with `dims`; the contiguous dimension must be whole blocks. */
export function ggmlTensorBytes(type: GgmlType, dims: readonly number[], name = 'tensor'): number {
  const { block, bytes } = GGML_TYPES[type];
  if (dims.length === 0 || !dims.every((d) => Number.isSafeInteger(d) && d > 0)) {
    throw new InternVLError('BAD_INPUT', `GGUF ${name}: dims must be positive integers, got [${dims}]`);
  }
  if (dims[0] % block !== 0) {
    throw new InternVLError(
      'BAD_INPUT',
      `GGUF ${name}: ${type} needs the first dimension to be a multiple of ${block}, got ${dims[0]}`,
    );
  }
  return (dims.reduce((a, b) => a * b, 1) / block) * bytes;
}

const align = (n: number, alignment: number) => Math.ceil(n / alignment) * alignment;

/** Serialises the header (everything before the padding to the data section) into byte chunks. */
class HeaderWriter {
  readonly chunks: Uint8Array[] = [];
  length = 0;
  readonly #encoder = new TextEncoder();
  #push(bytes: Uint8Array) {
    this.chunks.push(bytes);
    this.length += bytes.byteLength;
  }
  scalar(type: keyof typeof SCALARS, value: Scalar) {
    const codec = SCALARS[type];
    const view = new DataView(new ArrayBuffer(codec.bytes));
    codec.set(view, 0, value);
    this.#push(new Uint8Array(view.buffer));
  }
  string(text: string) {
    const bytes = this.#encoder.encode(text);
    this.scalar('uint64', bytes.byteLength);
    this.#push(bytes);
  }
  item(type: ScalarType, value: number | bigint | boolean | string, key: string) {
    const ok =
      type === 'string'
        ? typeof value === 'string'
        : type === 'bool'
          ? typeof value === 'boolean'
          : typeof value === 'number' || typeof value === 'bigint';
    if (!ok) throw new InternVLError('BAD_INPUT', `GGUF metadata ${key}: ${String(value)} is not a ${type}`);
    if (type === 'string') this.string(value as string);
    else this.scalar(type, value as Scalar);
  }
}

/**
 * Writes a GGUF v3 file: the metadata (general.alignment is written when the alignment is not the
 * default), the tensor infos and the tensors' data, each checked against its size. Written to a
 * temporary file and renamed, so `file` is either whole or absent.
 */
export async function writeGguf(
  file: string,
  metadata: Record<string, GgufValue>,
  tensors: readonly GgufTensor[],
  alignment = GGUF_DEFAULT_ALIGNMENT,
): Promise<{ bytes: number; dataOffset: number }> {
  if (!Number.isInteger(alignment) || alignment < 1 || alignment % 8 !== 0) {
    throw new InternVLError('BAD_INPUT', `GGUF alignment must be a positive multiple of 8, got ${alignment}`);
  }
  const entries = Object.entries(metadata);
  if (alignment !== GGUF_DEFAULT_ALIGNMENT && !('general.alignment' in metadata)) {
    entries.push(['general.alignment', gguf.u32(alignment)]);
  }
  const header = new HeaderWriter();
  header.chunks.push(new TextEncoder().encode('GGUF'));
  header.length = 4;
  header.scalar('uint32', 3);
  header.scalar('uint64', tensors.length);
  header.scalar('uint64', entries.length);
  for (const [key, value] of entries) {
    header.string(key);
    header.scalar('uint32', value.type === 'array' ? ARRAY_ID : typeId(value.type));
    if (value.type === 'array') {
      header.scalar('uint32', typeId(value.itemType));
      header.scalar('uint64', value.values.length);
      for (const v of value.values) header.item(value.itemType, v, key);
    } else {
      header.item(value.type, value.value, key);
    }
  }
  const sizes: number[] = [];
  const names = new Set<string>();
  let offset = 0;
  for (const t of tensors) {
    if (names.has(t.name)) throw new InternVLError('BAD_INPUT', `GGUF tensor ${t.name} is given twice`);
    names.add(t.name);
    const size = ggmlTensorBytes(t.type, t.dims, t.name);
    header.string(t.name);
    header.scalar('uint32', t.dims.length);
    for (const d of t.dims) header.scalar('uint64', d);
    header.scalar('uint32', GGML_TYPES[t.type].id);
    header.scalar('uint64', offset);
    sizes.push(size);
    offset = align(offset + size, alignment);
  }
  const dataOffset = align(header.length, alignment);

  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const handle = await open(tmp, 'w');
  let position = 0;
  const write = async (bytes: Uint8Array) => {
    for (let done = 0; done < bytes.byteLength; ) {
      const { bytesWritten } = await handle.write(bytes, done, bytes.byteLength - done, position);
      done += bytesWritten;
      position += bytesWritten;
    }
  };
  const padTo = (target: number) => write(new Uint8Array(target - position));
  try {
    await write(Buffer.concat(header.chunks));
    await padTo(dataOffset);
    for (let i = 0; i < tensors.length; i++) {
      const start = position;
      const wrongSize = (got: string) =>
        new InternVLError(
          'BAD_INPUT',
          `GGUF tensor ${tensors[i].name}: ${tensors[i].type} [${tensors[i].dims}] needs ${sizes[i]} bytes, the data gave ${got}`,
        );
      for await (const chunk of tensors[i].data()) {
        if (position - start + chunk.byteLength > sizes[i]) throw wrongSize('more');
        await write(chunk);
      }
      if (position - start !== sizes[i]) throw wrongSize(String(position - start));
      if (i < tensors.length - 1) await padTo(align(position, alignment));
    }
    await handle.close();
  } catch (err) {
    await handle.close().catch(() => {});
    await rm(tmp, { force: true });
    throw err;
  }
  await rename(tmp, file);
  return { bytes: position, dataOffset };
}

export interface GgufTensorInfo {
  name: string;
  dims: number[];
  /** The ggml type id (GGML_TYPES[...].id). */
  typeId: number;
  /** Byte offset of the data from the start of the file. */
  offset: number;
}

export interface GgufInfo {
  version: number;
  alignment: number;
  /** Scalars as numbers (u64/i64 as bigint), strings, booleans; arrays as arrays. */
  metadata: Map<string, unknown>;
  tensors: GgufTensorInfo[];
  /** Byte offset of the data section. */
  dataOffset: number;
}

class OutOfData extends Error {}

/** A reader of the header of a GGUF file: metadata and tensor infos (the data is not read). */
export async function readGgufInfo(file: string): Promise<GgufInfo> {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    // The header holds the vocabulary and can be megabytes: read more until it parses.
    for (let want = Math.min(size, 1 << 20); ; want = Math.min(size, want * 4)) {
      const bytes = new Uint8Array(want);
      await handle.read(bytes, 0, want, 0);
      try {
        return parseGgufHeader(bytes, file);
      } catch (err) {
        if (!(err instanceof OutOfData)) throw err;
        if (want === size) throw new InternVLError('BAD_CHECKPOINT', `${file}: GGUF header is truncated`);
      }
    }
  } finally {
    await handle.close();
  }
}

function parseGgufHeader(bytes: Uint8Array, file: string): GgufInfo {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const decoder = new TextDecoder('utf-8', { fatal: true });
  let at = 0;
  const take = (n: number) => {
    if (at + n > bytes.byteLength) throw new OutOfData();
    const start = at;
    at += n;
    return start;
  };
  const u32 = () => view.getUint32(take(4), true);
  const u64 = () => {
    const v = view.getBigUint64(take(8), true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new InternVLError('BAD_CHECKPOINT', `${file}: GGUF count or size ${v} is too large`);
    }
    return Number(v);
  };
  const str = () => {
    const n = u64();
    const start = take(n);
    try {
      return decoder.decode(bytes.subarray(start, start + n));
    } catch {
      throw new InternVLError('BAD_CHECKPOINT', `${file}: GGUF string at byte ${start} is not UTF-8`);
    }
  };
  const scalar = (type: number): unknown => {
    if (type === STRING_ID) return str();
    const codec = SCALAR_BY_ID.get(type);
    if (!codec) throw new InternVLError('BAD_CHECKPOINT', `${file}: unknown GGUF value type ${type}`);
    return codec.get(view, take(codec.bytes));
  };
  const magic = take(4);
  if (decoder.decode(bytes.subarray(magic, magic + 4)) !== 'GGUF') {
    throw new InternVLError('BAD_CHECKPOINT', `${file}: not a GGUF file (no GGUF magic)`);
  }
  const version = u32();
  if (version !== 3) throw new InternVLError('UNSUPPORTED', `${file}: GGUF version ${version}, not 3`);
  const tensorCount = u64();
  const kvCount = u64();
  const metadata = new Map<string, unknown>();
  for (let i = 0; i < kvCount; i++) {
    const key = str();
    const type = u32();
    if (type === ARRAY_ID) {
      const itemType = u32();
      const n = u64();
      const values: unknown[] = [];
      for (let j = 0; j < n; j++) values.push(scalar(itemType));
      metadata.set(key, values);
    } else {
      metadata.set(key, scalar(type));
    }
  }
  const alignment = Number(metadata.get('general.alignment') ?? GGUF_DEFAULT_ALIGNMENT);
  const infos: Omit<GgufTensorInfo, 'offset'>[] = [];
  const relative: number[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const name = str();
    const rank = u32();
    const dims = Array.from({ length: rank }, u64);
    infos.push({ name, dims, typeId: u32() });
    relative.push(u64());
  }
  const dataOffset = align(at, alignment);
  const tensors = infos.map((t, i) => ({ ...t, offset: dataOffset + relative[i] }));
  return { version, alignment, metadata, tensors, dataOffset };
}
