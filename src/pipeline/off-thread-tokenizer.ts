/**
 * Encodes prompt text without blocking the event loop: short texts on the calling thread (a worker
 * round trip would cost more), long ones in a tokenizer worker built from the same model folder.
 */
import { WorkerClient } from '../engine/worker-rpc.js';
import type { Tokenizer } from '../text/types.js';

/** Texts up to this many characters are encoded inline (a few milliseconds at most). */
export const INLINE_ENCODE_CHARS = 4096;

// Under tsx (tests, development) this module is a .ts file and so is the worker beside it.
const workerUrl = new URL(
  import.meta.url.endsWith('.ts') ? './tokenizer-worker.ts' : './tokenizer-worker.js',
  import.meta.url,
);

export class OffThreadTokenizer {
  #worker: WorkerClient | undefined;

  constructor(
    readonly tokenizer: Tokenizer,
    /** The model folder the worker loads the same tokenizer files from. */
    readonly dir: string,
  ) {}

  async encode(text: string): Promise<number[]> {
    if (text.length <= INLINE_ENCODE_CHARS) return this.tokenizer.encode(text);
    // A worker that died (out of memory, say) is replaced for the next call.
    if (!this.#worker || this.#worker.exited) {
      this.#worker = new WorkerClient(workerUrl, { dir: this.dir }, 'tokenizer');
    }
    return Array.from(await this.#worker.call<Int32Array>('encode', [text]));
  }

  async close(): Promise<void> {
    await this.#worker?.terminate();
    this.#worker = undefined;
  }
}
