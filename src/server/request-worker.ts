/** The request-parsing worker thread: JSON.parse and validation of large request bodies. */
import { parentPort } from 'node:worker_threads';
import { serveCalls } from '../engine/worker-rpc.js';
import { decodeRequestBody, type RequestKinds } from './request-body.js';

if (!parentPort) throw new Error('request worker started outside a worker thread');
serveCalls(parentPort, () => ({
  decode: (bytes, kind) => decodeRequestBody(bytes as Uint8Array, kind as keyof RequestKinds),
}));
