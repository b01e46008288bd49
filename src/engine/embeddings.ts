/** Token-embedding lookup (the table stays out of the graphs) and the image features written into it. */
import { InternVLError } from '../errors.js';
import type { TensorRows } from '../models/weights.js';

/**
 * A [vocab, D] token-embedding table: float32, bf16 bit patterns (a bf16 checkpoint's table at half the
 * memory; widening is exact), or rows read from the checkpoint on demand (no table in memory).
 */
export type EmbeddingTable = Float32Array | Uint16Array | TensorRows;

/** Token embeddings [ids.length, D] looked up in `table`; ids outside [0, vocab) are rejected. */
export function embedTokens(table: EmbeddingTable, hiddenSize: number, ids: ArrayLike<number>): Float32Array {
  const vocab = 'readRow' in table ? table.rowCount : table.length / hiddenSize;
  const out = new Float32Array(ids.length * hiddenSize);
  const outBits = new Uint32Array(out.buffer);
  /** Row already written for an id (an image's many context tokens are read once). */
  const written = new Map<number, number>();
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= vocab) {
      throw new InternVLError(
        'BAD_INPUT',
        `token id ${id} at position ${i} is outside the vocabulary [0, ${vocab})`,
      );
    }
    const dst = i * hiddenSize;
    if (table instanceof Float32Array) {
      out.set(table.subarray(id * hiddenSize, (id + 1) * hiddenSize), dst);
    } else if (table instanceof Uint16Array) {
      const src = id * hiddenSize;
      for (let j = 0; j < hiddenSize; j++) outBits[dst + j] = table[src + j] << 16;
    } else {
      const previous = written.get(id);
      if (previous === undefined) {
        table.readRow(id, out.subarray(dst, dst + hiddenSize));
        written.set(id, dst);
      } else {
        out.copyWithin(dst, previous, previous + hiddenSize);
      }
    }
  }
  return out;
}

/**
 * Writes image feature rows, in order, into the rows of `embeds` [ids.length, D] whose id is
 * `imgContextId` (tile 0 tokens first, then tile 1, …). The features may come in pieces (one per image,
 * or what is left of them after a cached prefix), read in order. Modifies and returns `embeds`.
 */
export function scatterImageEmbeddings(
  embeds: Float32Array,
  ids: ArrayLike<number>,
  imgContextId: number,
  imageFeatures: Float32Array | readonly Float32Array[],
): Float32Array {
  const hiddenSize = embeds.length / ids.length;
  if (ids.length === 0 || !Number.isInteger(hiddenSize)) {
    throw new InternVLError(
      'BAD_INPUT',
      `embeddings have ${embeds.length} values, not a whole number of rows for ${ids.length} token ids`,
    );
  }
  const pieces = imageFeatures instanceof Float32Array ? [imageFeatures] : imageFeatures;
  let count = 0;
  for (let i = 0; i < ids.length; i++) if (ids[i] === imgContextId) count++;
  const rows = pieces.reduce((n, piece) => n + piece.length, 0) / hiddenSize;
  if (rows !== count) {
    throw new InternVLError(
      'BAD_INPUT',
      `the prompt has ${count} image context tokens (id ${imgContextId}) but the image features hold ${rows} rows of ${hiddenSize}`,
    );
  }
  let piece = 0;
  let offset = 0;
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] !== imgContextId) continue;
    while (offset === pieces[piece].length) {
      piece++;
      offset = 0;
    }
    embeds.set(pieces[piece].subarray(offset, offset + hiddenSize), i * hiddenSize);
    offset += hiddenSize;
  }
  return embeds;
}
