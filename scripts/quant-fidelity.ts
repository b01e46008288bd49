/**
 * How faithfully each 4-bit format stores weights: relative RMS error ‖Ŵ − W‖ / ‖W‖ of llama.cpp's Q4_0
 * (symmetric, block 32, fp16 scale; src/io/ggml-quant.ts) and of this engine's MatMulNBits int4
 * (asymmetric with a zero point, fp32 scale; src/onnx/quantize.ts) at blocks 32, 64 and 128. The int4
 * kernel runs faster with larger blocks (scripts/profile-int4-kernels.ts --block-size), so this is the
 * other side of that trade.
 *
 *   node --import tsx scripts/quant-fidelity.ts                      # synthetic [4864, 896] matrices
 *   node --import tsx scripts/quant-fidelity.ts --model DIR [--max-tensors 12]   # a checkpoint's LLM linears
 *
 * Synthetic: Gaussian, Laplace, Student-t with 3 degrees of freedom, and Gaussian with 1 % of the input
 * columns scaled ×8 (outlier channels, as activation-aware quantisation papers describe for real LLMs).
 * Random-weight checkpoints (create-random) are Gaussian, so --model says something new only on real weights.
 */
import { parseArgs } from 'node:util';
import { dequantizeQ4_0, quantizeQ4_0 } from '../src/io/ggml-quant.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { dequantizeInt4, quantizeInt4 } from '../src/onnx/quantize.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    'max-tensors': { type: 'string', default: '12' },
    seed: { type: 'string', default: '1' },
  },
});
const BLOCKS = [32, 64, 128];
// Bits per weight as stored: Q4_0 = 4 + 16-bit scale per 32; int4 = 4 + 32-bit scale + 4-bit zero point per block.
const bits = { Q4_0: 4 + 16 / 32, ...Object.fromEntries(BLOCKS.map((b) => [`int4_b${b}`, 4 + 36 / b])) };

function relativeRms(original: Float32Array, restored: Float32Array): number {
  let err = 0;
  let ref = 0;
  for (let i = 0; i < original.length; i++) {
    err += (restored[i] - original[i]) ** 2;
    ref += original[i] ** 2;
  }
  return Math.sqrt(err / ref);
}

function errors(weight: Float32Array, n: number, k: number): Record<string, number> {
  const out: Record<string, number> = {};
  if (k % 32 === 0) out.Q4_0 = relativeRms(weight, dequantizeQ4_0(quantizeQ4_0(weight), weight.length));
  for (const b of BLOCKS)
    out[`int4_b${b}`] = relativeRms(weight, dequantizeInt4(quantizeInt4(weight, n, k, b)));
  return Object.fromEntries(Object.entries(out).map(([key, v]) => [key, +v.toFixed(4)]));
}

let state = Number(values.seed) >>> 0 || 1;
/** Uniform in (0, 1), xorshift32. */
function uniform(): number {
  state ^= state << 13;
  state >>>= 0;
  state ^= state >>> 17;
  state ^= state << 5;
  state >>>= 0;
  return (state + 0.5) / 2 ** 32;
}
const gaussian = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
const laplace = () => (uniform() < 0.5 ? 1 : -1) * -Math.log(uniform());
function studentT3(): number {
  let chi2 = 0;
  for (let i = 0; i < 3; i++) chi2 += gaussian() ** 2;
  return gaussian() / Math.sqrt(chi2 / 3);
}

const rows: Record<string, unknown>[] = [];
if (values.model) {
  const ckpt = await Checkpoint.open(values.model);
  const maxTensors = Number(values['max-tensors']);
  const linear = /^language_model\..*(proj|wqkv|wo|w1|w2|w3|lm_head|output)\.weight$/;
  const names = ckpt.names().filter((name) => linear.test(name) && ckpt.info(name).shape.length === 2);
  // Spread over the depth: every ⌈count / max⌉-th linear.
  const stride = Math.max(1, Math.ceil(names.length / maxTensors));
  for (const name of names.filter((_, i) => i % stride === 0)) {
    const [n, k] = ckpt.info(name).shape;
    rows.push({ tensor: name, shape: [n, k], ...errors(await ckpt.readFloat32(name), n, k) });
  }
  await ckpt.close();
} else {
  const [n, k] = [4864, 896];
  const outlierColumns = new Set<number>();
  while (outlierColumns.size < Math.round(k / 100)) outlierColumns.add(Math.floor(uniform() * k));
  const kinds: Record<string, (i: number) => number> = {
    gaussian: () => gaussian(),
    laplace: () => laplace(),
    student_t3: () => studentT3(),
    gaussian_outlier_columns: (i) => gaussian() * (outlierColumns.has(i % k) ? 8 : 1),
  };
  for (const [distribution, draw] of Object.entries(kinds)) {
    const weight = Float32Array.from({ length: n * k }, (_, i) => draw(i));
    rows.push({ distribution, shape: [n, k], ...errors(weight, n, k) });
  }
}
console.log(
  JSON.stringify(
    { metric: 'relative RMS error of the restored weights', bits_per_weight: bits, rows },
    null,
    1,
  ),
);
