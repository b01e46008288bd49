import { readSync } from 'node:fs';
import { type FileHandle, open, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import type { TensorRows } from '../models/weights.js';

/** Element types of the safetensors format (names as they appear in the header). */
export type SafetensorsDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const DTYPE_BYTES: Record<SafetensorsDType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

export const SAFETENSORS_DTYPES = Object.keys(DTYPE_BYTES) as SafetensorsDType[];

export function isSafetensorsDType(value: unknown): value is SafetensorsDType {
  return typeof value === 'string' && Object.hasOwn(DTYPE_BYTES, value);
}

/** Bytes per element of a dtype. */
export function dtypeByteSize(dtype: SafetensorsDType): number {
  return DTYPE_BYTES[dtype];
}

/** Where one tensor lives on disk. */
export interface TensorInfo {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Absolute path of the .safetensors file holding the tensor. */
  file: string;
  /** Absolute byte position of the tensor's data in `file`. */
  byteOffset: number;
  byteLength: number;
}

/** The safetensors reference implementation refuses headers above 100 MB. */
const MAX_HEADER_BYTES = 100_000_000;
/** Node rejects single reads/writes above 2 GiB; stay well below. */
const IO_CHUNK_BYTES = 1 << 30;
const INDEX_FILE = 'model.safetensors.index.json';
const SINGLE_FILE = 'model.safetensors';

function badCheckpoint(message: string, cause?: unknown): InternVLError {
  return new InternVLError('BAD_CHECKPOINT', message, cause === undefined ? undefined : { cause });
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

interface ParsedHeader {
  tensors: TensorInfo[];
  metadata: Record<string, string>;
}

/**
 * Validates a safetensors JSON header against the size of the file it came from.
 * `dataStart` is 8 + header length; `fileSize` the total file size.
 */
function parseHeader(
  headerBytes: Uint8Array,
  file: string,
  dataStart: number,
  fileSize: number,
): ParsedHeader {
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (err) {
    throw badCheckpoint(`${file}: safetensors header is not valid UTF-8 JSON`, err);
  }
  if (!isPlainObject(json)) throw badCheckpoint(`${file}: safetensors header is not a JSON object`);

  const dataLength = fileSize - dataStart;
  const tensors: TensorInfo[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isPlainObject(entry) || !Object.values(entry).every((v) => typeof v === 'string')) {
        throw badCheckpoint(`${file}: __metadata__ must be an object of strings`);
      }
      metadata = entry as Record<string, string>;
      continue;
    }
    const where = `${file}: tensor "${name}"`;
    if (!isPlainObject(entry)) throw badCheckpoint(`${where}: header entry is not an object`);
    const { dtype, shape, data_offsets: offsets } = entry;
    if (!isSafetensorsDType(dtype)) {
      throw badCheckpoint(
        `${where}: unknown dtype ${JSON.stringify(dtype)} (supported: ${SAFETENSORS_DTYPES.join(', ')})`,
      );
    }
    if (!Array.isArray(shape) || !shape.every(isNonNegativeInteger)) {
      throw badCheckpoint(
        `${where}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`,
      );
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInteger)) {
      throw badCheckpoint(
        `${where}: data_offsets must be two non-negative integers, got ${JSON.stringify(offsets)}`,
      );
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) throw badCheckpoint(`${where}: data_offsets [${begin}, ${end}] end before begin`);
    const elements = (shape as number[]).reduce((a, b) => a * b, 1);
    const expected = elements * DTYPE_BYTES[dtype];
    if (expected !== end - begin) {
      throw badCheckpoint(
        `${where}: ${dtype} [${shape.join(', ')}] needs ${expected} bytes but data_offsets span ${end - begin}`,
      );
    }
    if (end > dataLength) {
      throw badCheckpoint(
        `${where}: data ends at byte ${end} of the data section but the file holds only ${dataLength} data bytes (truncated file?)`,
      );
    }
    tensors.push({
      name,
      dtype,
      shape: [...(shape as number[])],
      file,
      byteOffset: dataStart + begin,
      byteLength: end - begin,
    });
  }

  const byStart = [...tensors].sort((a, b) => a.byteOffset - b.byteOffset || a.byteLength - b.byteLength);
  for (let i = 1; i < byStart.length; i++) {
    const prev = byStart[i - 1];
    const cur = byStart[i];
    if (cur.byteOffset < prev.byteOffset + prev.byteLength) {
      throw badCheckpoint(`${file}: tensor "${cur.name}" overlaps tensor "${prev.name}" in the data section`);
    }
  }
  return { tensors, metadata };
}

async function readExactly(handle: FileHandle, file: string, position: number, length: number, what: string) {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const want = Math.min(IO_CHUNK_BYTES, length - done);
    const { bytesRead } = await handle.read(out, done, want, position + done);
    if (bytesRead === 0) {
      throw badCheckpoint(
        `${file}: unexpected end of file while reading ${what} (file shrank or is truncated)`,
      );
    }
    done += bytesRead;
  }
  return out;
}

interface OpenFile {
  path: string;
  handle: FileHandle;
  parsed: ParsedHeader;
}

async function openSafetensorsFile(file: string): Promise<OpenFile> {
  let handle: FileHandle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    throw new InternVLError('NOT_FOUND', `cannot open safetensors file ${file}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  try {
    const { size } = await handle.stat();
    if (size < 8) throw badCheckpoint(`${file}: ${size} bytes is too short for a safetensors file`);
    const lenBytes = await readExactly(handle, file, 0, 8, 'the header length');
    const headerLength = new DataView(lenBytes.buffer).getBigUint64(0, true);
    if (headerLength < 2n || headerLength > BigInt(MAX_HEADER_BYTES)) {
      throw badCheckpoint(
        `${file}: header length ${headerLength} is not plausible (expected 2..${MAX_HEADER_BYTES})`,
      );
    }
    const n = Number(headerLength);
    if (8 + n > size) {
      throw badCheckpoint(
        `${file}: header length ${n} runs past the end of the ${size}-byte file (truncated file?)`,
      );
    }
    const headerBytes = await readExactly(handle, file, 8, n, 'the header');
    return { path: file, handle, parsed: parseHeader(headerBytes, file, 8 + n, size) };
  } catch (err) {
    await handle.close();
    throw err;
  }
}

/**
 * A safetensors checkpoint: one file or a sharded set described by model.safetensors.index.json.
 * Tensors are read on demand with positional reads; the files are never loaded whole.
 */
export class Checkpoint {
  readonly source: string;
  readonly #tensors: Map<string, TensorInfo>;
  readonly #handles: Map<string, FileHandle>;
  readonly #metadata: Record<string, string>;
  #closed = false;

  private constructor(
    source: string,
    tensors: Map<string, TensorInfo>,
    handles: Map<string, FileHandle>,
    metadata: Record<string, string>,
  ) {
    this.source = source;
    this.#tensors = tensors;
    this.#handles = handles;
    this.#metadata = metadata;
  }

  /** The safetensors files of this checkpoint (one, or every shard). */
  files(): string[] {
    return [...this.#handles.keys()];
  }

  /** Opens a .safetensors file, an index json, or a folder holding model.safetensors or its index. */
  static async open(pathOrDir: string): Promise<Checkpoint> {
    const target = path.resolve(pathOrDir);
    let info: Awaited<ReturnType<typeof stat>>;
    try {
      info = await stat(target);
    } catch {
      throw new InternVLError('NOT_FOUND', `checkpoint not found: ${target}`);
    }
    if (info.isDirectory()) {
      const single = path.join(target, SINGLE_FILE);
      if (await isFile(single)) return Checkpoint.#openSingle(single);
      const index = path.join(target, INDEX_FILE);
      if (await isFile(index)) return Checkpoint.#openSharded(index);
      throw new InternVLError('NOT_FOUND', `${target}: no ${SINGLE_FILE} or ${INDEX_FILE} in this folder`);
    }
    if (target.endsWith('.index.json')) return Checkpoint.#openSharded(target);
    return Checkpoint.#openSingle(target);
  }

  static async #openSingle(file: string): Promise<Checkpoint> {
    const opened = await openSafetensorsFile(file);
    const tensors = new Map(opened.parsed.tensors.map((t) => [t.name, t]));
    return new Checkpoint(file, tensors, new Map([[file, opened.handle]]), opened.parsed.metadata);
  }

  static async #openSharded(indexFile: string): Promise<Checkpoint> {
    let index: unknown;
    try {
      index = JSON.parse(await readFile(indexFile, 'utf8'));
    } catch (err) {
      throw badCheckpoint(`${indexFile}: cannot read index json: ${(err as Error).message}`, err);
    }
    if (!isPlainObject(index) || !isPlainObject(index.weight_map)) {
      throw badCheckpoint(`${indexFile}: missing "weight_map" object`);
    }
    const weightMap = index.weight_map;
    const dir = path.dirname(indexFile);
    const shardNames = new Set<string>();
    for (const [tensor, shard] of Object.entries(weightMap)) {
      if (
        typeof shard !== 'string' ||
        shard === '' ||
        path.isAbsolute(shard) ||
        shard.split(/[\\/]/).includes('..')
      ) {
        throw badCheckpoint(
          `${indexFile}: weight_map["${tensor}"] is not a shard file name inside the folder`,
        );
      }
      shardNames.add(shard);
    }
    const handles = new Map<string, FileHandle>();
    const tensors = new Map<string, TensorInfo>();
    try {
      for (const shard of shardNames) {
        const opened = await openSafetensorsFile(path.join(dir, shard));
        handles.set(opened.path, opened.handle);
        for (const t of opened.parsed.tensors) {
          const previous = tensors.get(t.name);
          if (previous) {
            throw badCheckpoint(`${indexFile}: tensor "${t.name}" is in both ${previous.file} and ${t.file}`);
          }
          tensors.set(t.name, t);
        }
      }
      for (const [tensor, shard] of Object.entries(weightMap)) {
        const found = tensors.get(tensor);
        const shardPath = path.join(dir, shard as string);
        if (!found)
          throw badCheckpoint(`${indexFile}: tensor "${tensor}" is listed for ${shard} but not in it`);
        if (found.file !== shardPath) {
          throw badCheckpoint(
            `${indexFile}: tensor "${tensor}" is listed for ${shard} but found in ${found.file}`,
          );
        }
      }
    } catch (err) {
      await Promise.all([...handles.values()].map((h) => h.close()));
      throw err;
    }
    const metadata: Record<string, string> = {};
    if (isPlainObject(index.metadata)) {
      for (const [k, v] of Object.entries(index.metadata))
        metadata[k] = typeof v === 'string' ? v : JSON.stringify(v);
    }
    return new Checkpoint(indexFile, tensors, handles, metadata);
  }

  /** Tensor names, in header order (shard by shard). */
  names(): string[] {
    return [...this.#tensors.keys()];
  }

  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  info(name: string): TensorInfo {
    const found = this.#tensors.get(name);
    if (!found) throw new InternVLError('NOT_FOUND', `tensor "${name}" is not in checkpoint ${this.source}`);
    return found;
  }

  /** `__metadata__` of a single file; the index's `metadata` (values as strings) of a sharded set. */
  metadata(): Record<string, string> {
    return { ...this.#metadata };
  }

  /** The tensor's raw little-endian bytes, in a fresh buffer starting at offset 0 (aligned for any view). */
  async readBytes(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    if (this.#closed) throw new InternVLError('BAD_INPUT', `checkpoint ${this.source} is closed`);
    const handle = this.#handles.get(t.file)!;
    return readExactly(handle, t.file, t.byteOffset, t.byteLength, `tensor "${name}"`);
  }

  /** F32, F16, BF16 or F64 data as float32. */
  async readFloat32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    const bytes = await this.readBytes(name);
    switch (t.dtype) {
      case 'F32':
        return new Float32Array(bytes.buffer, 0, bytes.byteLength / 4);
      case 'BF16':
        return bf16ToFloat32(new Uint16Array(bytes.buffer, 0, bytes.byteLength / 2));
      case 'F16':
        return float16ToFloat32(new Uint16Array(bytes.buffer, 0, bytes.byteLength / 2));
      case 'F64':
        return new Float32Array(new Float64Array(bytes.buffer, 0, bytes.byteLength / 8));
      default:
        throw this.#wrongDtype(t, 'a float type (F32, F16, BF16, F64)');
    }
  }

  async readInt64(name: string): Promise<BigInt64Array> {
    const t = this.info(name);
    if (t.dtype !== 'I64') throw this.#wrongDtype(t, 'I64');
    const bytes = await this.readBytes(name);
    return new BigInt64Array(bytes.buffer, 0, bytes.byteLength / 8);
  }

  async readInt32(name: string): Promise<Int32Array> {
    const t = this.info(name);
    if (t.dtype !== 'I32') throw this.#wrongDtype(t, 'I32');
    const bytes = await this.readBytes(name);
    return new Int32Array(bytes.buffer, 0, bytes.byteLength / 4);
  }

  /**
   * Rows of a 2-D F32 / BF16 / F16 tensor read with one positional read each (synchronous: a row is a
   * few KB), so a large table such as the token embeddings never has to be held in memory. Valid until
   * the checkpoint is closed.
   */
  rows(name: string): TensorRows {
    const t = this.info(name);
    if (t.shape.length !== 2) {
      throw badCheckpoint(
        `${t.file}: tensor "${name}" has shape [${t.shape.join(',')}], expected 2 dimensions`,
      );
    }
    if (t.dtype !== 'F32' && t.dtype !== 'BF16' && t.dtype !== 'F16') {
      throw this.#wrongDtype(t, 'F32, BF16 or F16');
    }
    const [rowCount, rowLength] = t.shape;
    const { dtype, file } = t;
    const rowBytes = rowLength * DTYPE_BYTES[dtype];
    const bytes = new Uint8Array(rowBytes);
    const halves = new Uint16Array(bytes.buffer);
    const fd = this.#handles.get(file)!.fd;
    const readRow = (row: number, out: Float32Array) => {
      if (this.#closed) throw new InternVLError('BAD_INPUT', `checkpoint ${this.source} is closed`);
      if (!Number.isInteger(row) || row < 0 || row >= rowCount) {
        throw new InternVLError('BAD_INPUT', `row ${row} of tensor "${name}" is outside [0, ${rowCount})`);
      }
      const target = dtype === 'F32' ? new Uint8Array(out.buffer, out.byteOffset, rowBytes) : bytes;
      let done = 0;
      while (done < rowBytes) {
        const n = readSync(fd, target, done, rowBytes - done, t.byteOffset + row * rowBytes + done);
        if (n === 0) throw badCheckpoint(`${file}: unexpected end of file while reading a row of "${name}"`);
        done += n;
      }
      if (dtype === 'BF16') bf16ToFloat32(halves, out);
      else if (dtype === 'F16') float16ToFloat32(halves, out);
    };
    return { rowCount, rowLength, readRow };
  }

  #wrongDtype(t: TensorInfo, wanted: string): InternVLError {
    return badCheckpoint(`${t.file}: tensor "${t.name}" is ${t.dtype}, expected ${wanted}`);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all([...this.#handles.values()].map((h) => h.close()));
  }
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
}

/** bfloat16 bits to float32: the bf16 bits are the top half of the float32 bits. */
export function bf16ToFloat32(
  src: Uint16Array,
  dst: Float32Array = new Float32Array(src.length),
): Float32Array {
  if (dst.length < src.length)
    throw new InternVLError('BAD_INPUT', 'bf16ToFloat32: destination is too short');
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return dst;
}

let halfTable: Float32Array | undefined;

function halfToFloatScalar(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Number.POSITIVE_INFINITY : Number.NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** IEEE half bits to float32 (exact: subnormals, infinities and NaN included). */
export function float16ToFloat32(
  src: Uint16Array,
  dst: Float32Array = new Float32Array(src.length),
): Float32Array {
  if (dst.length < src.length)
    throw new InternVLError('BAD_INPUT', 'float16ToFloat32: destination is too short');
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = halfToFloatScalar(h);
  }
  const table = halfTable;
  for (let i = 0; i < src.length; i++) dst[i] = table[src[i]];
  return dst;
}

/** float32 to bfloat16 bits, round-to-nearest-even (as torch does); NaN stays NaN. */
export function float32ToBf16(
  src: Float32Array,
  dst: Uint16Array = new Uint16Array(src.length),
): Uint16Array {
  if (dst.length < src.length)
    throw new InternVLError('BAD_INPUT', 'float32ToBf16: destination is too short');
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const b = bits[i];
    if ((b & 0x7fffffff) > 0x7f800000) {
      dst[i] = (b >>> 16) | 0x0040;
    } else {
      dst[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    }
  }
  return dst;
}

/** float32 to IEEE half bits, round-to-nearest-even, overflow to infinity, subnormals kept; NaN stays NaN. */
export function float32ToFloat16(
  src: Float32Array,
  dst: Uint16Array = new Uint16Array(src.length),
): Uint16Array {
  if (dst.length < src.length)
    throw new InternVLError('BAD_INPUT', 'float32ToFloat16: destination is too short');
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) {
    const b = bits[i];
    const sign = (b >>> 16) & 0x8000;
    const abs = b & 0x7fffffff;
    if (abs > 0x7f800000) {
      dst[i] = sign | 0x7e00 | ((abs >>> 13) & 0x3ff);
    } else if (abs >= 0x477ff000) {
      // At or above 65520 (halfway between the largest half, 65504, and 2^16) rounds to infinity.
      dst[i] = sign | 0x7c00;
    } else if (abs < 0x38800000) {
      // Result is a half subnormal (or zero): scale to units of 2^-24 and round half to even.
      const units = Math.abs(src[i]) * 2 ** 24;
      let r = Math.round(units);
      if (r - units === 0.5 && r % 2 === 1) r -= 1;
      dst[i] = sign | r;
    } else {
      const rounded = abs + 0x0fff + ((abs >>> 13) & 1);
      dst[i] = sign | (((rounded >>> 13) - (112 << 10)) & 0x7fff);
    }
  }
  return dst;
}

/** Data for one tensor to write: raw little-endian bytes or a typed array of the matching element size. */
export interface TensorToWrite {
  dtype: SafetensorsDType;
  shape: readonly number[];
  data: ArrayBufferView;
}

/** A tensor's bytes for writeSafetensorsStreaming: one typed array, or chunks in order. */
export type TensorData = ArrayBufferView | Iterable<ArrayBufferView>;

/** Name, dtype and shape of a tensor whose data is produced while writing. */
export interface TensorSpec {
  name: string;
  dtype: SafetensorsDType;
  shape: readonly number[];
}

/**
 * Writes a safetensors file (tensors in the given order, header padded to 8 bytes) atomically:
 * to a temporary file beside `file`, then renamed over it.
 */
export async function writeSafetensors(
  file: string,
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Promise<void> {
  const entries = Object.entries(tensors);
  await writeSafetensorsStreaming(
    file,
    entries.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })),
    (index) => entries[index][1].data,
    metadata,
  );
}

/**
 * Like writeSafetensors, but asks `produce(i)` for the data of `specs[i]` only when it is written,
 * so a checkpoint larger than memory can be written one tensor at a time; the data may come as a
 * sequence of chunks, so no tensor need be whole in memory either.
 */
export async function writeSafetensorsStreaming(
  file: string,
  specs: readonly TensorSpec[],
  produce: (index: number) => TensorData | Promise<TensorData>,
  metadata?: Record<string, string>,
): Promise<void> {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string')
        throw new InternVLError('BAD_INPUT', `${file}: metadata "${k}" must be a string`);
    }
    header.__metadata__ = metadata;
  }
  const sizes: number[] = [];
  let offset = 0;
  for (const { name, dtype, shape } of specs) {
    if (name === '__metadata__' || Object.hasOwn(header, name)) {
      throw new InternVLError('BAD_INPUT', `${file}: tensor name "${name}" is reserved or used twice`);
    }
    if (!isSafetensorsDType(dtype)) {
      throw new InternVLError(
        'BAD_INPUT',
        `${file}: tensor "${name}" has unknown dtype ${JSON.stringify(dtype)}`,
      );
    }
    if (!Array.isArray(shape) || !shape.every(isNonNegativeInteger)) {
      throw new InternVLError('BAD_INPUT', `${file}: tensor "${name}" shape must be non-negative integers`);
    }
    const size = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    header[name] = { dtype, shape: [...shape], data_offsets: [offset, offset + size] };
    sizes.push(size);
    offset += size;
  }
  let headerText = JSON.stringify(header);
  const encoder = new TextEncoder();
  headerText += ' '.repeat((8 - (encoder.encode(headerText).byteLength % 8)) % 8);
  const headerBytes = encoder.encode(headerText);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);

  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const handle = await open(tmp, 'w');
  let position = 0;
  const writeAll = async (chunk: Uint8Array) => {
    for (let done = 0; done < chunk.byteLength; ) {
      const length = Math.min(IO_CHUNK_BYTES, chunk.byteLength - done);
      const { bytesWritten } = await handle.write(chunk, done, length, position);
      done += bytesWritten;
      position += bytesWritten;
    }
  };
  try {
    await writeAll(prefix);
    await writeAll(headerBytes);
    for (let i = 0; i < specs.length; i++) {
      const data = await produce(i);
      const { name, dtype, shape } = specs[i];
      const wrongSize = (got: string) =>
        new InternVLError(
          'BAD_INPUT',
          `${file}: tensor "${name}" ${dtype} [${shape.join(', ')}] needs ${sizes[i]} bytes, data has ${got}`,
        );
      const chunks = ArrayBuffer.isView(data) ? [data] : data;
      let written = 0;
      for (const chunk of chunks ?? []) {
        if (!ArrayBuffer.isView(chunk)) throw wrongSize('a chunk that is not a typed array');
        if (written + chunk.byteLength > sizes[i]) throw wrongSize(`more (${written + chunk.byteLength})`);
        await writeAll(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        written += chunk.byteLength;
      }
      if (written !== sizes[i]) throw wrongSize(String(written));
    }
    await handle.close();
    await rename(tmp, file);
  } catch (err) {
    await handle.close().catch(() => {});
    await rm(tmp, { force: true });
    throw err;
  }
}
