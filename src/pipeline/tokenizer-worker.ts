/** The tokenizer worker thread: encodes long prompts so that the caller's event loop stays free. */
import { parentPort, workerData } from 'node:worker_threads';
import { serveCalls } from '../engine/worker-rpc.js';
import { loadTokenizer } from '../io/tokenizer-files.js';

if (!parentPort) throw new Error('tokenizer worker started outside a worker thread');
const tokenizer = await loadTokenizer((workerData as { dir: string }).dir);
serveCalls(parentPort, () => ({
  // An Int32Array is transferred back, where a number[] would be copied element by element.
  encode: (text) => Int32Array.from(tokenizer.encode(text as string)),
}));
