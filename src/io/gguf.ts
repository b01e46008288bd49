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

/** Metadata value types (gguf_type). */
const VALUE_TYPE = {
  uint8: 0,
  int8: 1,
  uint16: 2,
  int16: 3,
  uint32: 4,
  int32: 5,
  float32: 6,
  bool: 7,
  string: 8,
  array: 9,
  uint64: 10,
  int64: 11,
  float64: 12,
} as const;
type ScalarType = Exclude<keyof typeof VALUE_TYPE, 'array'>;
const SCALAR_BYTES: Record<Exclude<ScalarType, 'string'>, number> = {
  uint8: 1,
  int8: 1,
  uint16: 2,
  int16: 2,
  uint32: 4,
  int32: 4,
  float32: 4,
  bool: 1,
  uint64: 8,
  int64: 8,
  float64: 8,
};

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
  scalar(type: Exclude<ScalarType, 'string'>, value: number | bigint | boolean) {
    const view = new DataView(new ArrayBuffer(SCALAR_BYTES[type]));
    const n = typeof value === 'boolean' ? Number(value) : value;
    switch (type) {
      case 'uint8':
      case 'bool':
        view.setUint8(0, Number(n));
        break;
      case 'int8':
        view.setInt8(0, Number(n));
        break;
      case 'uint16':
        view.setUint16(0, Number(n), true);
        break;
      case 'int16':
        view.setInt16(0, Number(n), true);
        break;
      case 'uint32':
        view.setUint32(0, Number(n), true);
        break;
      case 'int32':
        view.setInt32(0, Number(n), true);
        break;
      case 'float32':
        view.setFloat32(0, Number(n), true);
        break;
      case 'float64':
        view.setFloat64(0, Number(n), true);
        break;
      case 'uint64':
        view.setBigUint64(0, BigInt(n), true);
        break;
      case 'int64':
        view.setBigInt64(0, BigInt(n), true);
        break;
    }
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
    else this.scalar(type, value as number | bigint | boolean);
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
    header.scalar('uint32', VALUE_TYPE[value.type]);
    if (value.type === 'array') {
      header.scalar('uint32', VALUE_TYPE[value.itemType]);
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
    switch (type) {
      case 0:
        return view.getUint8(take(1));
      case 1:
        return view.getInt8(take(1));
      case 2:
        return view.getUint16(take(2), true);
      case 3:
        return view.getInt16(take(2), true);
      case 4:
        return view.getUint32(take(4), true);
      case 5:
        return view.getInt32(take(4), true);
      case 6:
        return view.getFloat32(take(4), true);
      case 7:
        return view.getUint8(take(1)) !== 0;
      case 8:
        return str();
      case 10:
        return view.getBigUint64(take(8), true);
      case 11:
        return view.getBigInt64(take(8), true);
      case 12:
        return view.getFloat64(take(8), true);
      default:
        throw new InternVLError('BAD_CHECKPOINT', `${file}: unknown GGUF value type ${type}`);
    }
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
    if (type === 9) {
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
