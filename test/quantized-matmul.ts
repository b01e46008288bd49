/** One quantised linear layer run alone in ORT, and the inputs the quantisation tests feed it. */
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../src/onnx/graph.js';
import { type LinearQuant, quantizedMatMul } from '../src/onnx/quantize.js';
import { modelToBytes } from '../src/onnx/serialize.js';

/** Deterministic values uniform in [−scale, scale). */
export function randomMatrix(length: number, seed: number, scale = 1): Float32Array {
  let s = seed;
  return Float32Array.from({ length }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return ((s / 2 ** 32) * 2 - 1) * scale;
  });
}

/** x [M, K] · Wᵀ for a torch Linear weight W [N, K] stored as `quant`, on one thread. */
export async function runQuantized(
  x: Float32Array,
  w: Float32Array,
  m: number,
  k: number,
  n: number,
  quant: LinearQuant,
): Promise<Float32Array> {
  const g = new GraphBuilder('q');
  const input = g.input('x', 'float32', [m, k]);
  g.output(quantizedMatMul(g, input, 'w', w, n, k, quant), 'y', 'float32', [m, n]);
  const session = await ort.InferenceSession.create(modelToBytes(g.graph), { intraOpNumThreads: 1 });
  try {
    const result = await session.run({ x: new ort.Tensor('float32', x, [m, k]) });
    return result.y.data as Float32Array;
  } finally {
    await session.release();
  }
}
