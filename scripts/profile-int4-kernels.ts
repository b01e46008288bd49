/**
 * The int4 decode kernels alone: one graph holding the MatMulNBits of one InternVL2_5-1B decode token
 * (24 layers and lm_head, M = 1, random weights, accuracy level 4, block 32) and nothing else, timed per run.
 * node --import tsx scripts/profile-int4-kernels.ts [--separate] [--no-lm-head] [--block-size 32] [--accuracy-level 4]
 *   [--rows 1] [--dtype int4|int8]
 * --separate: q/k/v and gate/up as separate linears instead of fused. --rows M: M tokens per run (a
 * batched decode step of M sequences). --dtype int8: the int8 (DynamicQuantizeMatMul, U8S8) linears instead.
 */
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../src/onnx/graph.js';
import { quantizedMatMul } from '../src/onnx/quantize.js';
import { modelToBytes } from '../src/onnx/serialize.js';

const separate = process.argv.includes('--separate');
const option = (name: string, fallback: number) => {
  const i = process.argv.indexOf(name);
  return i < 0 ? fallback : Number(process.argv[i + 1]);
};
const blockSize = option('--block-size', 32);
const accuracyLevel = option('--accuracy-level', 4);
const lmHead = !process.argv.includes('--no-lm-head');
const rows = option('--rows', 1);
const dtypeAt = process.argv.indexOf('--dtype');
const dtype = dtypeAt < 0 ? 'int4' : process.argv[dtypeAt + 1];
if (dtype !== 'int4' && dtype !== 'int8') throw new Error(`--dtype must be int4 or int8, got ${dtype}`);
const [d, ff, q, kv, vocab, layers] = [896, 4864, 896, 128, 151674, 24];
let seed = 1;
const random = (n: number) =>
  Float32Array.from({ length: n }, () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return (seed / 2 ** 32 - 0.5) * 0.1;
  });
const g = new GraphBuilder('int4-kernels');
const x = g.input('x', 'float32', [rows, 1, d]);
const xff = g.input('x_ff', 'float32', [rows, 1, ff]);
const quant =
  dtype === 'int4'
    ? { dtype: 'int4' as const, blockSize, accuracyLevel }
    : { dtype: 'int8' as const, int8Kernel: 'u8s8' as const };
const linears: [number, number, string][] = separate
  ? [
      [q, d, x],
      [kv, d, x],
      [kv, d, x],
      [d, q, x],
      [ff, d, x],
      [ff, d, x],
      [d, ff, xff],
    ]
  : [
      [q + 2 * kv, d, x],
      [d, q, x],
      [2 * ff, d, x],
      [d, ff, xff],
    ];
const outputs: string[] = [];
for (let layer = 0; layer < layers; layer++) {
  for (const [n, k, input] of linears) {
    outputs.push(quantizedMatMul(g, input, `w${outputs.length}`, random(n * k), n, k, quant));
  }
}
if (lmHead) outputs.push(quantizedMatMul(g, x, 'lm_head', random(vocab * d), vocab, d, quant));
// Each output summed to one number, so the fetch is tiny.
const sums = outputs.map((o) => g.reshape(g.op('ReduceSum', [o], { keepdims: { int: 0 } }), [1]));
g.output(g.concat(sums, 0), 'y', 'float32', [outputs.length]);
const session = await ort.InferenceSession.create(modelToBytes(g.graph), {
  intraOpNumThreads: 2,
  interOpNumThreads: 1,
  graphOptimizationLevel: 'all',
});
const feeds = {
  x: new ort.Tensor('float32', random(rows * d), [rows, 1, d]),
  x_ff: new ort.Tensor('float32', random(rows * ff), [rows, 1, ff]),
};
for (let i = 0; i < 5; i++) await session.run(feeds);
const times: number[] = [];
for (let r = 0; r < 5; r++) {
  const t = performance.now();
  for (let i = 0; i < 20; i++) await session.run(feeds);
  times.push((performance.now() - t) / 20);
}
console.log(
  JSON.stringify({
    matmulnbits: outputs.length,
    separate,
    lm_head: lmHead,
    rows,
    dtype,
    block_size: blockSize,
    accuracy_level: accuracyLevel,
    ms_per_run: times.sort((a, b) => a - b).map((t) => +t.toFixed(2)),
  }),
);
