/** Reading safetensors checkpoints (one file or sharded) tensor by tensor, without loading the files whole. */
import { readSync } from 'node:fs';
import { type FileHandle, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { bf16ToFloat32, float16ToFloat32 } from './float-formats.js';
import {
  badCheckpoint,
  DTYPE_BYTES,
  INDEX_FILE,
  isPlainObject,
  openSafetensorsFile,
  readExactly,
  SINGLE_FILE,
  type TensorInfo,
} from './safetensors-format.js';
import type { TensorRows } from './tensor-rows.js';

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
