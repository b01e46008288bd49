/**
 * The browser library: what a page bundles (see scripts/browser-demo.ts for the bundling, which maps
 * the engine's onnxruntime import to onnxruntime-web).
 */
export type { ResponseFormat } from '../engine/grammar-types.js';
export { type DecodeImageOptions, decodeImage } from '../io/image-browser.js';
export type { GenerationConfigInput } from '../pipeline/generation-config.js';
export type { RgbImage } from '../preprocess/image.js';
export { toPixelValues } from '../preprocess/pixels.js';
export { dynamicPreprocess } from '../preprocess/tiles.js';
export {
  defaultWasmThreads,
  type LoadProgress,
  type WebChatChunk,
  type WebChatInput,
  type WebChatResult,
  type WebExecutionProvider,
  WebInternVL,
  type WebLoadOptions,
  webGpuAvailable,
} from './engine.js';
export { WEB_MANIFEST_FILE, type WebManifest } from './manifest.js';
