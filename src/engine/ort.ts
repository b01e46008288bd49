/**
 * The ONNX Runtime used by the engine. This is the Node entry (onnxruntime-node); the browser bundle
 * swaps this module for ort-web.ts (onnxruntime-web). Both re-export onnxruntime-common's API, so
 * engine code written against this module runs on either.
 */
export * from 'onnxruntime-node';

/** The provider that runs every operator on the CPU: 'cpu' here, 'wasm' in the browser entry. */
export const CPU_EXECUTION_PROVIDER = 'cpu';
