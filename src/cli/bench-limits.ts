/**
 * What the bench measures against: this machine's fp32 GEMM roofline and weight-streaming bandwidth
 * through ORT, and the cost model of the checkpoint (ViT FLOPs per tile, weight bytes per decode step).
 */
import * as ort from 'onnxruntime-node';
import type { ModelConfig } from '../config/model-config.js';
import type { ResolvedPrecision } from '../engine/graph-plan.js';
import type { WeightDtype } from '../engine/precision.js';
import { createSession } from '../engine/session.js';
import { visionDimsFromConfig } from '../engine/vision.js';
import type { DecoderDims } from '../models/decoder.js';
import { GraphBuilder } from '../onnx/graph.js';

export const seconds = (t0: number) => (performance.now() - t0) / 1000;
export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
export const round = (x: number, digits: number) => Number(x.toFixed(digits));

/** Pseudo-random weights, cheap to make. */
function fill(length: number, seed: number): Float32Array {
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) out[i] = Math.sin(i * 0.618 + seed) * 0.05;
  return out;
}

export async function timeRuns(reps: number, run: () => Promise<unknown>): Promise<number> {
  await run();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await run();
    times.push(seconds(t0));
  }
  return median(times);
}

/** fp32 GFLOP/s of one large MatMul (M 1024, K 1024, N 4096) with the weight as an initializer. */
export async function measureGemm(threads: number, reps: number): Promise<number> {
  const [m, k, n] = [1024, 1024, 4096];
  const g = new GraphBuilder('gemm');
  const x = g.input('x', 'float32', [m, k]);
  g.output(g.matMul(x, g.initializer('w', 'float32', [k, n], fill(k * n, 1))), 'y', 'float32', [m, n]);
  const session = await createSession(g.graph, { threads });
  const feeds = { x: new ort.Tensor('float32', fill(m * k, 2), [m, k]) };
  const t = await timeRuns(reps * 4, () => session.run(feeds));
  await session.release();
  return (2 * m * k * n) / t / 1e9;
}

/** GB/s of fp32 weights streamed from DRAM by M = 1 MatMuls (24 distinct [896, 4864] weights, 418 MB). */
export async function measureStream(threads: number, reps: number): Promise<number> {
  const [k, n, count] = [896, 4864, 24];
  const g = new GraphBuilder('stream');
  const x = g.input('x', 'float32', [1, k]);
  const outs = Array.from({ length: count }, (_, i) =>
    g.matMul(x, g.initializer(`w${i}`, 'float32', [k, n], fill(k * n, i))),
  );
  g.output(g.op('Sum', outs), 'y', 'float32', [1, n]);
  const session = await createSession(g.graph, { threads });
  const feeds = { x: new ort.Tensor('float32', fill(k, 3), [1, k]) };
  const t = await timeRuns(reps * 5, () => session.run(feeds));
  await session.release();
  return (count * k * n * 4) / t / 1e9;
}

/** Multiply-add FLOPs of one tile through InternViT (select_layer −1) and mlp1. */
export function vitFlopsPerTile(config: ModelConfig): number {
  const dims = visionDimsFromConfig(config);
  const v = dims.vit;
  const grid = dims.imageSize / v.patchSize;
  const t = grid * grid + 1;
  const c = v.hiddenSize;
  const perLayer = 2 * t * c * 3 * c + 4 * t * t * c + 2 * t * c * c + 4 * t * c * v.intermediateSize;
  const conv = 2 * grid * grid * v.numChannels * v.patchSize ** 2 * c;
  const k2 = Math.round(1 / dims.downsampleRatio) ** 2;
  const tokens = (grid * grid) / k2;
  const mlp1 = 2 * tokens * (k2 * c * dims.llmHiddenSize + dims.llmHiddenSize ** 2);
  return perLayer * v.numLayers + conv + mlp1;
}

/**
 * Bytes of one linear weight [n, k] for `dtype`: `stored` as the ONNX graph holds it, `streamed` as
 * the CPU kernel reads it on every call. They differ for int4 at accuracy level 4, which MLAS repacks
 * at load (SQ4BitGemmPackQuantBDataSize, CompInt8): per block of K the 4-bit data, an fp32 scale and
 * an fp32 block sum with the zero point folded in, rows padded to 16; the zero points are not read.
 */
export function linearWeightBytes(
  dtype: WeightDtype,
  n: number,
  k: number,
  quant: { blockSize: number; accuracyLevel: number },
): { stored: number; streamed: number } {
  if (dtype === 'fp32') return { stored: 4 * n * k, streamed: 4 * n * k };
  if (dtype === 'int8') return { stored: n * k + 4 * n, streamed: n * k + 4 * n };
  const blocks = Math.ceil(k / quant.blockSize);
  const data = n * blocks * (quant.blockSize / 2);
  const scales = 4 * n * blocks;
  const stored = data + scales + n * Math.ceil(blocks / 2);
  const blockSums = 4 * Math.ceil(n / 16) * 16 * blocks;
  return { stored, streamed: quant.accuracyLevel === 4 ? data + scales + blockSums : stored };
}

/**
 * Weight bytes of one decode step (every linear layer and lm_head; norms and biases are negligible), as
 * stored and as streamed. q/k/v and gate/up count as one weight each, as the int4 graph holds them
 * (fusedLinear); for fp32 and int8 the bytes are the same either way.
 */
export function decodeWeightBytes(
  dims: DecoderDims,
  precision: ResolvedPrecision,
): { stored: number; streamed: number } {
  const { hiddenSize: d, headDim, numHeads, numKvHeads, intermediateSize: ff, vocabSize } = dims;
  const lmHead =
    precision.lmHeadDtype === 'auto'
      ? precision.llmDtype === 'fp32'
        ? 'fp32'
        : 'int4'
      : precision.lmHeadDtype;
  const linears: [WeightDtype, number, number, number][] = [
    [precision.llmDtype, (numHeads + 2 * numKvHeads) * headDim, d, dims.numLayers],
    [precision.llmDtype, d, numHeads * headDim, dims.numLayers],
    [precision.llmDtype, 2 * ff, d, dims.numLayers],
    [precision.llmDtype, d, ff, dims.numLayers],
    [lmHead, vocabSize, d, 1],
  ];
  const total = { stored: 0, streamed: 0 };
  for (const [dtype, n, k, count] of linears) {
    const bytes = linearWeightBytes(dtype, n, k, precision);
    total.stored += count * bytes.stored;
    total.streamed += count * bytes.streamed;
  }
  return total;
}
