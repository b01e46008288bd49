/**
 * The browser's stand-in for cpu.ts. The browser runs graphs that were built elsewhere (convert-web),
 * for a CPU nobody knew then, so the default is the int8 scheme that is exact on every kernel: U8U8.
 */
import type { Int8Kernel } from '../onnx/quantize.js';

export function defaultInt8Kernel(): Int8Kernel {
  return 'u8u8';
}
