/**
 * ONNX external data written while a graph is built (Node only): `ExternalDataFile` writes each weight at
 * the next 64 KiB-aligned offset (so ONNX Runtime can map it) and hashes the file as it goes, and
 * `withWeightSink` hands it to the GraphBuilder the build constructs, which writes every large
 * initializer there as it is added. Converting a checkpoint thus holds one layer's tensors at a time,
 * never the whole graph's weights.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { createHash, type Hash } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import path from 'node:path';
import { setAmbientWeightSink, type WeightSink } from '../onnx/graph.js';
import { EXTERNAL_ALIGN } from '../onnx/serialize.js';

const ZEROS = new Uint8Array(1 << 16);
/** writeSync takes at most 2 GiB per call. */
const WRITE_CHUNK = 1 << 30;

/** A file written forward, each piece at the next multiple of `align`, hashed (SHA-256) as written. */
export class ExternalDataFile implements WeightSink {
  readonly location: string;
  #fd: number | undefined;
  readonly #hash: Hash = createHash('sha256');
  #end = 0;

  constructor(
    readonly file: string,
    private readonly align = EXTERNAL_ALIGN,
  ) {
    this.location = path.basename(file);
    this.#fd = openSync(file, 'w');
  }

  write(bytes: Uint8Array): number {
    if (this.#fd === undefined) throw new Error(`${this.file} is closed`);
    const offset = Math.ceil(this.#end / this.align) * this.align;
    // The gap reads back as zeros (a hole in the file); hashed as such.
    for (let gap = offset - this.#end; gap > 0; gap -= ZEROS.length) {
      this.#hash.update(ZEROS.subarray(0, Math.min(gap, ZEROS.length)));
    }
    this.#hash.update(bytes);
    for (let start = 0; start < bytes.byteLength; ) {
      const n = Math.min(bytes.byteLength - start, WRITE_CHUNK);
      start += writeSync(this.#fd, bytes, start, n, offset + start);
    }
    this.#end = offset + bytes.byteLength;
    return offset;
  }

  /** Bytes written so far (the file's size). */
  get bytes(): number {
    return this.#end;
  }

  /** Closes the file; returns its name, size and SHA-256. */
  close(): { name: string; bytes: number; sha256: string } {
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
    return { name: this.location, bytes: this.#end, sha256: this.#hash.digest('hex') };
  }

  /** Closes the file without a result (on failure). */
  abandon(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
  }
}

interface Offer {
  sink: WeightSink;
  taken: boolean;
}

const offers = new AsyncLocalStorage<Offer>();

// The first builder constructed inside withWeightSink takes the sink; any later one (a helper graph
// built on the way) keeps its weights in memory.
setAmbientWeightSink(() => {
  const offer = offers.getStore();
  if (!offer || offer.taken) return undefined;
  offer.taken = true;
  return offer.sink;
});

/**
 * Runs `build` with `sink` offered to the first GraphBuilder it constructs (across awaits). The graph it
 * returns must be serialised with the same sink (serializeModel's `sink` option).
 */
export function withWeightSink<T>(sink: WeightSink, build: () => Promise<T>): Promise<T> {
  return offers.run({ sink, taken: false }, build);
}
