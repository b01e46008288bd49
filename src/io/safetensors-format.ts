/** The safetensors format: element types, the header and its validation, opening a file. */
import { type FileHandle, open } from 'node:fs/promises';
import { InternVLError } from '../errors.js';

/** Element types of the safetensors format (names as they appear in the header). */
export type SafetensorsDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export const DTYPE_BYTES: Record<SafetensorsDType, number> = {
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
export const MAX_HEADER_BYTES = 100_000_000;
/** Node rejects single reads/writes above 2 GiB; stay well below. */
export const IO_CHUNK_BYTES = 1 << 30;
export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

export function badCheckpoint(message: string, cause?: unknown): InternVLError {
  return new InternVLError('BAD_CHECKPOINT', message, cause === undefined ? undefined : { cause });
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

export interface ParsedHeader {
  tensors: TensorInfo[];
  metadata: Record<string, string>;
}

/**
 * Validates a safetensors JSON header against the size of the file it came from.
 * `dataStart` is 8 + header length; `fileSize` the total file size.
 */
export function parseHeader(
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

export async function readExactly(
  handle: FileHandle,
  file: string,
  position: number,
  length: number,
  what: string,
) {
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

export interface OpenFile {
  path: string;
  handle: FileHandle;
  parsed: ParsedHeader;
}

export async function openSafetensorsFile(file: string): Promise<OpenFile> {
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
