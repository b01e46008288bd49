/** Writing safetensors files atomically, whole or one tensor at a time. */
import { open, rename, rm } from 'node:fs/promises';
import { InternVLError } from '../errors.js';
import {
  DTYPE_BYTES,
  IO_CHUNK_BYTES,
  isNonNegativeInteger,
  isSafetensorsDType,
  type SafetensorsDType,
} from './safetensors-format.js';

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
