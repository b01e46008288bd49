/** The engine worker thread: loads an EngineCore and answers InternVLModel's calls. */
import { parentPort, workerData } from 'node:worker_threads';
import { InternVLError } from '../errors.js';
import { EngineCore, type EngineOptions, type ImageInput } from './core.js';
import type { GenerateRequest } from './generate.js';
import type { ResponseFormat } from './grammar-types.js';
import { serveCalls } from './worker-rpc.js';

const { dir, options } = workerData as { dir: string; options: EngineOptions };
let core: EngineCore | undefined;
const engine = () => {
  if (!core) throw new InternVLError('INTERNAL', 'the engine is not loaded');
  return core;
};

if (!parentPort) throw new Error('engine worker started outside a worker thread');
serveCalls(
  parentPort,
  (emit) => ({
    load: async (callId) => {
      core = await EngineCore.load(dir, options, (done, total) => emit(callId as number, { done, total }));
      return { config: core.config };
    },
    encodeImages: (pixelValues, numTiles) =>
      engine().encodeImages(pixelValues as Float32Array, numTiles as number),
    visionHiddenState: (pixelValues, numTiles) =>
      engine().visionHiddenState(pixelValues as Float32Array, numTiles as number),
    forwardLogits: (inputIds, image) =>
      engine().forwardLogits(inputIds as number[], image as ImageInput | undefined),
    generateGreedy: (inputIds, maxNewTokens, image) =>
      engine().generateGreedy(inputIds as number[], maxNewTokens as number, image as ImageInput | undefined),
    generate: (request, callId) =>
      engine().generate(request as GenerateRequest, callId as number, (token) =>
        emit(callId as number, token),
      ),
    compileGrammar: (format) => engine().compileGrammar(format as ResponseFormat),
    abort: (callId) => engine().abort(callId as number),
    releaseSession: (sessionId) => engine().releaseSession(sessionId as string),
    close: async () => {
      await core?.close();
      core = undefined;
    },
  }),
  { immediate: ['abort', 'generate'] },
);
