import { InternVLError } from '../errors.js';
import type { TensorRows } from '../io/tensor-rows.js';
import type { Int4Blocks } from '../onnx/quantize.js';

export type { TensorRows };

/** Where model builders get checkpoint tensors from (a safetensors checkpoint, or arrays in tests). */
export interface WeightSource {
  has(name: string): boolean;
  /** Shape of a tensor as stored in the checkpoint. */
  shape(name: string): number[];
  /** The tensor as float32 (bf16 / f16 checkpoints are widened exactly). */
  float32(name: string): Promise<Float32Array>;
  /** The tensor's bf16 bit patterns when it is stored as bf16, else undefined (lets large tables stay half size). */
  bfloat16?(name: string): Promise<Uint16Array | undefined>;
  /** Rows of a 2-D tensor read from storage on demand, where the source can (keeps big tables out of memory). */
  rows?(name: string): TensorRows | undefined;
  /**
   * A torch Linear weight `name` [out, in] that the checkpoint stores 4-bit packed (AWQ, GPTQ), as MatMulNBits
   * blocks taken over without requantising; undefined when it is stored in floating point.
   */
  int4Blocks?(name: string): Promise<Int4Blocks | undefined>;
  /** The name(s) the checkpoint stores `name` under, where it renames tensors (for messages). */
  checkpointName?(name: string): string;
}

/** A WeightSource over in-memory arrays (tests, random models, trained parameters). */
export function memoryWeights(tensors: Map<string, { shape: number[]; data: Float32Array }>): WeightSource {
  const get = (name: string) => {
    const t = tensors.get(name);
    if (!t) throw new Error(`weight ${name} is missing`);
    return t;
  };
  return {
    has: (name) => tensors.has(name),
    shape: (name) => get(name).shape,
    float32: async (name) => get(name).data,
  };
}

/** A checkpoint tensor a model needs, with the shape it must have. */
export interface TensorSpec {
  name: string;
  shape: number[];
}

/** Throws BAD_CHECKPOINT naming the first tensor that is missing or has another shape, before anything is built. */
export function checkTensorShapes(weights: WeightSource, specs: TensorSpec[]): void {
  for (const { name, shape } of specs) {
    const stored = weights.checkpointName?.(name) ?? name;
    if (!weights.has(name))
      throw new InternVLError('BAD_CHECKPOINT', `${stored}: missing from the checkpoint`);
    const actual = weights.shape(name);
    if (actual.length !== shape.length || actual.some((d, i) => d !== shape[i])) {
      throw new InternVLError(
        'BAD_CHECKPOINT',
        `${stored}: expected [${shape.join(',')}], got [${actual.join(',')}]`,
      );
    }
  }
}

/** A [rows, cols] row-major matrix transposed to [cols, rows] (torch Linear weights → MatMul operands). */
export function transposeMatrix(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const src = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[src + c];
  }
  return out;
}
