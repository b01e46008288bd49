import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { convertCommand, convertModel } from '../src/cli/convert.js';
import { createRandomCommand } from '../src/cli/create-random.js';
import { evalQuant } from '../src/cli/eval-quant.js';
import { EngineCore } from '../src/engine/core.js';
import { resolvePrecision } from '../src/engine/graph-plan.js';
import { decoderGraphQuant, llmCacheTag } from '../src/engine/precision.js';
import { InternVLError } from '../src/errors.js';
import { GraphBuilder, modelToBytes } from '../src/onnx/graph.js';
import {
  dequantizeInt4,
  dequantizeInt8,
  type LinearQuant,
  quantizedMatMul,
  quantizeInt4,
  quantizeInt8,
} from '../src/onnx/quantize.js';
import { goldenModelDir, maxAbsDiff } from './helpers.js';

function randomMatrix(length: number, seed: number, scale = 1): Float32Array {
  let s = seed;
  return Float32Array.from({ length }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return ((s / 2 ** 32) * 2 - 1) * scale;
  });
}

/** x [M, K] · Wᵀ for W [N, K], in float64. */
function matMulT(x: Float32Array, w: Float32Array, m: number, k: number, n: number): Float64Array {
  const y = new Float64Array(m * n);
  for (let r = 0; r < m; r++) {
    for (let c = 0; c < n; c++) {
      let acc = 0;
      for (let i = 0; i < k; i++) acc += x[r * k + i] * w[c * k + i];
      y[r * n + c] = acc;
    }
  }
  return y;
}

async function runQuantized(
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

/** Round half to even, as ORT's DynamicQuantizeLinear. */
function roundEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v - Math.trunc(v)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

describe('int4 blockwise quantisation (MatMulNBits layout)', () => {
  test('every weight is within half a step of its dequantised value; zero stays exact', () => {
    const n = 6;
    const k = 80; // not a multiple of the block: the last block is padded
    const w = randomMatrix(n * k, 7);
    w[5] = 0;
    for (const blockSize of [32, 128]) {
      const q = quantizeInt4(w, n, k, blockSize);
      assert.equal(q.kBlocks, Math.ceil(k / blockSize));
      assert.equal(q.packed.length, n * q.kBlocks * (blockSize / 2));
      const back = dequantizeInt4(q);
      for (let col = 0; col < n; col++) {
        for (let i = 0; i < k; i++) {
          const scale = q.scales[col * q.kBlocks + Math.floor(i / blockSize)];
          assert.ok(Math.abs(back[col * k + i] - w[col * k + i]) <= scale / 2 + 1e-7, `col ${col} k ${i}`);
        }
      }
      assert.equal(back[5], 0);
    }
  });

  test('an all-zero block quantises to zeros without NaN', () => {
    const q = quantizeInt4(new Float32Array(64), 2, 32, 32);
    assert.deepEqual([...dequantizeInt4(q)], new Array(64).fill(0));
  });

  test('rejects a wrong size or block size', () => {
    assert.throws(() => quantizeInt4(new Float32Array(10), 2, 6), InternVLError);
    assert.throws(() => quantizeInt4(new Float32Array(64), 2, 32, 24), /blockSize/);
  });

  for (const blockSize of [32, 128]) {
    test(`MatMulNBits in ORT equals x · dequant(W)ᵀ (block ${blockSize}, accuracy 0 and 4)`, async () => {
      const m = 3;
      const k = 160;
      const n = 24;
      const x = randomMatrix(m * k, 3);
      const w = randomMatrix(n * k, 11, 0.2);
      const reference = matMulT(x, dequantizeInt4(quantizeInt4(w, n, k, blockSize)), m, k, n);
      const exact = await runQuantized(x, w, m, k, n, { dtype: 'int4', blockSize, accuracyLevel: 0 });
      assert.ok(maxAbsDiff(exact, reference) < 1e-4, `accuracy 0: ${maxAbsDiff(exact, reference)}`);
      // accuracy_level 4 quantises the activations to int8 per block: about 1 % of the output range.
      const fast = await runQuantized(x, w, m, k, n, { dtype: 'int4', blockSize, accuracyLevel: 4 });
      const range = Math.max(...reference.map(Math.abs));
      assert.ok(maxAbsDiff(fast, reference) < 0.02 * range, `accuracy 4: ${maxAbsDiff(fast, reference)}`);
      assert.ok(maxAbsDiff(fast, reference) > 0, 'accuracy 4 takes the int8 path');
    });
  }
});

describe('int8 per-column quantisation (DynamicQuantizeMatMul)', () => {
  test('symmetric per output column: |w − dequant| ≤ scale / 2 and the column max maps to ±127', () => {
    const n = 5;
    const k = 33;
    const w = randomMatrix(n * k, 5);
    const q = quantizeInt8(w, n, k);
    const back = dequantizeInt8(q);
    for (let col = 0; col < n; col++) {
      let top = 0;
      for (let i = 0; i < k; i++) {
        assert.ok(Math.abs(back[col * k + i] - w[col * k + i]) <= q.scales[col] / 2 + 1e-7);
        top = Math.max(top, Math.abs(q.weight[i * n + col]));
      }
      assert.equal(top, 127);
    }
  });

  test('ORT output equals the integer product of uint8 activations and the int8 weights', async () => {
    const m = 4;
    const k = 96;
    const n = 16;
    const x = randomMatrix(m * k, 9, 2);
    const w = randomMatrix(n * k, 13, 0.1);
    const q = quantizeInt8(w, n, k);
    const out = await runQuantized(x, w, m, k, n, { dtype: 'int8' });
    // DynamicQuantizeLinear over the whole activation tensor, then an exact integer GEMM.
    let lo = 0;
    let hi = 0;
    for (const v of x) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    const aScale = Math.fround((hi - lo) / 255);
    const aZero = Math.min(255, Math.max(0, roundEven(-lo / aScale)));
    const qa = x.map((v) => Math.min(255, Math.max(0, roundEven(v / aScale) + aZero)));
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < n; c++) {
        let acc = 0;
        for (let i = 0; i < k; i++) acc += (qa[r * k + i] - aZero) * q.weight[i * n + c];
        const expected = acc * aScale * q.scales[c];
        assert.ok(
          Math.abs(out[r * n + c] - expected) <= 1e-5 * Math.max(1, Math.abs(expected)),
          `[${r},${c}]`,
        );
      }
    }
    // And close to the float product.
    const reference = matMulT(x, w, m, k, n);
    assert.ok(maxAbsDiff(out, reference) < 0.02 * Math.max(...reference.map(Math.abs)));
  });
});

describe('precision options', () => {
  test('defaults: fp32 everywhere, and the fp32 cache key is the historical one', () => {
    const p = resolvePrecision({});
    assert.equal(p.llmDtype, 'fp32');
    assert.equal(p.prefillDtype, 'fp32');
    assert.equal(p.vitDtype, 'fp32');
    assert.deepEqual(llmCacheTag(p, 'fp32'), { dtype: 'fp32' });
    assert.deepEqual(decoderGraphQuant(p, 'fp32'), {
      linearQuant: undefined,
      lmHeadQuant: { dtype: 'fp32' },
    });
  });

  test('dtype is a shorthand for llmDtype; quantised graphs get an int4 lm_head unless told', () => {
    const p = resolvePrecision({ dtype: 'int8' });
    assert.equal(p.llmDtype, 'int8');
    assert.equal(decoderGraphQuant(p, 'int8').lmHeadQuant?.dtype, 'int4');
    const q = resolvePrecision({ llmDtype: 'int4', lmHeadDtype: 'int8', blockSize: 128 });
    assert.equal(decoderGraphQuant(q, 'int4').lmHeadQuant?.dtype, 'int8');
    assert.notDeepEqual(llmCacheTag(q, 'int4'), llmCacheTag(resolvePrecision({ llmDtype: 'int4' }), 'int4'));
  });

  test('bad values are InternVLErrors naming the option', () => {
    assert.throws(() => resolvePrecision({ llmDtype: 'int3' as 'int4' }), /llmDtype/);
    assert.throws(() => resolvePrecision({ vitDtype: 'int4' as 'int8' }), /vitDtype/);
    assert.throws(() => resolvePrecision({ blockSize: 48 }), /blockSize/);
    assert.throws(() => resolvePrecision({ accuracyLevel: 7 }), /accuracyLevel/);
  });
});

describe('eval-quant on a golden model', () => {
  const dir = goldenModelDir('tiny-internvl2_5-qwen2');
  const options = { cacheDir: false as const, promptTokens: 40, newTokens: 6, threads: 1 };

  test('fp32 against fp32 is exact', async () => {
    const r = await evalQuant(dir, options);
    assert.equal(r.promptLogits.maxAbsDiff, 0);
    assert.equal(r.decodeLogits.maxAbsDiff, 0);
    assert.equal(r.greedyAgreement, 1);
    assert.equal(r.greedyIdenticalPrefix, 6);
    assert.equal(r.vision, null);
  });

  test('int4 decode + int8 prefill LLM and int8 ViT stay close to fp32', async () => {
    const r = await evalQuant(dir, { ...options, llmDtype: 'int4', prefillDtype: 'int8', vitDtype: 'int8' });
    for (const stats of [r.promptLogits, r.decodeLogits]) {
      assert.ok(stats.maxAbsDiff > 0, 'the quantised graphs were used');
      assert.ok(stats.maxAbsDiff < 0.3 * stats.maxAbsReference, JSON.stringify(stats));
      assert.ok(stats.meanAbsDiff < 0.05 * stats.maxAbsReference, JSON.stringify(stats));
    }
    assert.ok(r.greedyAgreement >= 0.5, `agreement ${r.greedyAgreement}`);
    assert.ok(r.vision);
    assert.ok(r.vision.maxAbsDiff > 0 && r.vision.maxAbsDiff < 0.05 * r.vision.maxAbsReference);
  });
});

describe('convert', () => {
  test('writes the graphs load looks for: a second convert and EngineCore.load find them cached', async () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'internvl-convert-'));
    try {
      const dir = goldenModelDir('tiny-internvl2_5-internlm2');
      const precision = { llmDtype: 'int4', prefillDtype: 'int8', vitDtype: 'int8', blockSize: 128 } as const;
      const cacheDir = path.join(tmp, 'cache');
      const first = await convertModel(dir, { ...precision, cacheDir });
      assert.deepEqual(
        first.map((g) => [g.role, g.dtype, g.cached]),
        [
          ['vision', 'int8', false],
          ['decoder', 'int4', false],
          ['decoder-prefill', 'int8', false],
        ],
      );
      const second = await convertModel(dir, { ...precision, cacheDir });
      assert.ok(second.every((g) => g.cached));
      const engine = await EngineCore.load(dir, { ...precision, cacheDir, threads: 1 });
      try {
        assert.equal(readdirSync(cacheDir).length, 3, 'load built nothing new');
        const logits = await engine.forwardLogits([257, 72, 105, 258]);
        assert.equal(logits.length, 4 * 320);
        assert.ok(logits.every(Number.isFinite));
      } finally {
        await engine.close();
      }

      const out = path.join(tmp, 'out');
      await convertModel(dir, { llmDtype: 'int8', out });
      assert.ok(existsSync(path.join(out, 'vision', 'model.onnx')));
      assert.ok(existsSync(path.join(out, 'decoder', 'weights.bin')));
      assert.ok(!existsSync(path.join(out, 'decoder-prefill')));
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('CLI commands', () => {
  test('usage errors exit 2; an unknown shape is a BAD_INPUT error', async () => {
    const quiet = process.stderr.write;
    process.stderr.write = () => true;
    try {
      assert.equal(await convertCommand([]), 2);
      assert.equal(await convertCommand(['a', '--bogus']), 2);
      assert.equal(await createRandomCommand(['--shape', 'InternVL2_5-1B']), 2);
    } finally {
      process.stderr.write = quiet;
    }
    const out = mkdtempSync(path.join(os.tmpdir(), 'internvl-random-'));
    try {
      await assert.rejects(createRandomCommand(['--shape', 'InternVL2_5-3B', '--out', out]), /unknown shape/);
      await assert.rejects(
        convertCommand([goldenModelDir('tiny-internvl2_5-qwen2'), '--llm-dtype', 'int2']),
        /--llm-dtype must be one of/,
      );
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
