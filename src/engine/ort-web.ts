/** The browser entry of ort.ts: onnxruntime-web (WASM and WebGPU execution providers). */
export * from 'onnxruntime-web';

/** The provider that runs every operator on the CPU: WebAssembly (see ort.ts). */
export const CPU_EXECUTION_PROVIDER = 'wasm';
