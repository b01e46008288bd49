import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { convertCommand, convertModel } from '../src/cli/convert.js';
import { createRandomCommand } from '../src/cli/create-random.js';
import { evalQuant } from '../src/cli/eval-quant.js';
import { EngineCore } from '../src/engine/core.js';
import {
  type CpuInfo,
  cpuInfo,
  INT8_FLAGS,
  INT8_KERNEL_ENV,
  int8KernelFor,
  parseCpuinfo,
} from '../src/engine/cpu.js';
import { resolvePrecision } from '../src/engine/graph-plan.js';
import { chooseInt8Kernel, probeInt8Kernels } from '../src/engine/int8-probe.js';
import { decoderGraphOptions, llmCacheTag, vitCacheTag } from '../src/engine/precision.js';
import { InternVLError } from '../src/errors.js';
import { GraphBuilder } from '../src/onnx/graph.js';
import {
  dequantizeInt4,
  dequantizeInt8,
  type Int8Columns,
  quantizedMatMul,
  quantizeInt4,
  quantizeInt8,
} from '../src/onnx/quantize.js';
import { goldenModelDir, maxAbsDiff } from './helpers.js';
import { randomMatrix, runQuantized } from './quantized-matmul.js';

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

/**
 * The CPU the kernels run on. Under qemu-user (test/cpu-kinds.test.ts) /proc/cpuinfo still shows the
 * host, so the runner names the emulated CPU's flags in INTERNVL_TEST_EMULATED_CPU.
 */
function testedCpu(): CpuInfo {
  const emulated = process.env.INTERNVL_TEST_EMULATED_CPU;
  if (!emulated) return cpuInfo();
  const [model, ...flagList] = emulated.split(/\s+/);
  const flags = new Set(flagList);
  const byFlags = int8KernelFor('x64', flags, true);
  return {
    arch: 'x64',
    model: `${model} (emulated)`,
    features: INT8_FLAGS.filter((f) => flags.has(f)),
    int8KernelByFlags: byFlags.kernel,
    int8KernelReason: byFlags.reason,
  };
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

  /** DynamicQuantizeLinear of the whole activation tensor, as ORT does it before the integer GEMM. */
  function quantizeActivations(x: Float32Array) {
    let lo = 0;
    let hi = 0;
    for (const v of x) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    const scale = Math.fround((hi - lo) / 255);
    const zero = Math.min(255, Math.max(0, roundEven(-lo / scale)));
    const q = x.map((v) => Math.min(255, Math.max(0, roundEven(v / scale) + zero)));
    return { q, scale, zero };
  }

  /** The integer product Σ (qa − za) · qw, scaled: what an exact int8 kernel returns. */
  function integerReference(x: Float32Array, w: Int8Columns, m: number): Float64Array {
    const a = quantizeActivations(x);
    const { k, n } = w;
    const y = new Float64Array(m * n);
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < n; c++) {
        let acc = 0;
        for (let i = 0; i < k; i++) acc += (a.q[r * k + i] - a.zero) * w.weight[i * n + c];
        y[r * n + c] = acc * a.scale * w.scales[c];
      }
    }
    return y;
  }

  const m = 4;
  const k = 96;
  const n = 16;
  // Activations up to 2 and weights up to ±127 steps: many adjacent uint8 × int8 pairs sum past 32767.
  const x = randomMatrix(m * k, 9, 2);
  const w = randomMatrix(n * k, 13, 0.1);
  const q = quantizeInt8(w, n, k);
  const exact = integerReference(x, q, m);
  const relativeError = (out: Float32Array) =>
    Math.max(...Array.from(out, (v, i) => Math.abs(v - exact[i]) / Math.max(1, Math.abs(exact[i]))));

  test('U8U8 (uint8 weights, zero point 128) equals the integer product on every CPU', async () => {
    const out = await runQuantized(x, w, m, k, n, { dtype: 'int8', int8Kernel: 'u8u8' });
    assert.ok(relativeError(out) <= 1e-5, `relative error ${relativeError(out)}`);
  });

  test('U8S8 equals the integer product exactly where the CPU flags promise it (VNNI, AMX, ARM)', async (t) => {
    // This test checks a CPU dependency on purpose: which branch runs depends on this machine.
    const { arch, model, features, int8KernelByFlags } = testedCpu();
    t.diagnostic(`${model} (${arch}): ${features.join(' ')}; flags choose ${int8KernelByFlags}`);
    const out = await runQuantized(x, w, m, k, n, { dtype: 'int8', int8Kernel: 'u8s8' });
    if (int8KernelByFlags === 'u8s8') {
      assert.ok(relativeError(out) <= 1e-5, `relative error ${relativeError(out)}`);
    } else {
      assert.ok(relativeError(out) > 1e-3, 'without VNNI the U8S8 kernel saturates int16 pair sums');
    }
  });

  test('the probe finds U8U8 exact everywhere and U8S8 exact where the flags say; auto picks U8S8 only then', async () => {
    const probe = await probeInt8Kernels();
    assert.equal(probe.u8u8, true);
    assert.equal(probe.u8s8, testedCpu().int8KernelByFlags === 'u8s8');
    const saved = process.env[INT8_KERNEL_ENV];
    delete process.env[INT8_KERNEL_ENV];
    try {
      assert.deepEqual(await chooseInt8Kernel(), {
        kernel: probe.u8s8 ? 'u8s8' : 'u8u8',
        source: 'probe',
      });
      assert.deepEqual(await chooseInt8Kernel('u8u8'), { kernel: 'u8u8', source: 'option' });
      process.env[INT8_KERNEL_ENV] = 'u8u8';
      assert.deepEqual(await chooseInt8Kernel('auto'), { kernel: 'u8u8', source: 'env' });
      process.env[INT8_KERNEL_ENV] = 'u8x8';
      await assert.rejects(chooseInt8Kernel(), /INTERNVL_INT8_KERNEL must be u8s8 or u8u8/);
    } finally {
      if (saved === undefined) delete process.env[INT8_KERNEL_ENV];
      else process.env[INT8_KERNEL_ENV] = saved;
    }
  });

  test('the chosen kernel stays within the quantisation error bound of the float product', async () => {
    // |Σ x·w − Σ x̂·ŵ| ≤ Σ (|x| · |w − ŵ| + |ŵ| · |x − x̂|), with |w − ŵ| ≤ s_w / 2 and |x − x̂| ≤ s_x / 2.
    const { kernel } = await chooseInt8Kernel();
    const out = await runQuantized(x, w, m, k, n, { dtype: 'int8', int8Kernel: kernel });
    const reference = matMulT(x, w, m, k, n);
    const aScale = quantizeActivations(x).scale;
    const back = dequantizeInt8(q);
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < n; c++) {
        let bound = 0;
        for (let i = 0; i < k; i++) {
          bound += Math.abs(x[r * k + i]) * (q.scales[c] / 2) + Math.abs(back[c * k + i]) * (aScale / 2);
        }
        const error = Math.abs(out[r * n + c] - reference[r * n + c]);
        assert.ok(error <= bound * (1 + 1e-5), `[${r},${c}] error ${error} > bound ${bound}`);
      }
    }
  });

  test('parses /proc/cpuinfo flags and maps them to the exact scheme', () => {
    const text =
      'processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\nprocessor\t: 1\n';
    const parsed = parseCpuinfo(text);
    assert.equal(parsed.model, 'AMD EPYC');
    assert.ok(parsed.flags.has('avx512_vnni'));
    assert.equal(int8KernelFor('x64', parsed.flags, true).kernel, 'u8s8');
    assert.equal(int8KernelFor('x64', new Set(['avx2', 'avx512f', 'avx512bw']), true).kernel, 'u8u8');
    assert.equal(int8KernelFor('x64', new Set(['avx2', 'avx_vnni']), true).kernel, 'u8s8');
    assert.equal(int8KernelFor('x64', new Set(['avx2', 'amx_int8']), true).kernel, 'u8s8');
    assert.equal(int8KernelFor('x64', new Set(['sse4_2', 'avx']), true).kernel, 'u8s8');
    assert.match(int8KernelFor('x64', new Set(), false).reason, /unknown/);
    assert.equal(int8KernelFor('arm64', new Set(['asimd']), true).kernel, 'u8s8');
  });

  test('an int8 weight without a kernel is an internal error, not a silent default', () => {
    const g = new GraphBuilder('q');
    const input = g.input('x', 'float32', [1, 4]);
    assert.throws(
      () => quantizedMatMul(g, input, 'w', new Float32Array(8), 2, 4, { dtype: 'int8' }),
      /no int8Kernel/,
    );
  });
});

describe('precision options', () => {
  test('defaults: fp32 everywhere, and the fp32 cache key is the historical one', async () => {
    const p = await resolvePrecision({});
    assert.equal(p.llmDtype, 'fp32');
    assert.equal(p.prefillDtype, 'fp32');
    assert.equal(p.vitDtype, 'fp32');
    assert.deepEqual(llmCacheTag(p, 'fp32'), { dtype: 'fp32' });
    assert.deepEqual(decoderGraphOptions(p, 'fp32'), {
      linearQuant: undefined,
      lmHeadQuant: { dtype: 'fp32' },
      attention: 'gqa',
    });
  });

  test('dtype is a shorthand for llmDtype; quantised graphs get an int4 lm_head unless told', async () => {
    const p = await resolvePrecision({ dtype: 'int8' });
    assert.equal(p.llmDtype, 'int8');
    assert.equal(decoderGraphOptions(p, 'int8').lmHeadQuant?.dtype, 'int4');
    const q = await resolvePrecision({ llmDtype: 'int4', lmHeadDtype: 'int8', blockSize: 128 });
    assert.equal(decoderGraphOptions(q, 'int4').lmHeadQuant?.dtype, 'int8');
    assert.notDeepEqual(
      llmCacheTag(q, 'int4'),
      llmCacheTag(await resolvePrecision({ llmDtype: 'int4' }), 'int4'),
    );
  });

  test('int8 cache keys name the int8 kernel; fp32 and int4 keys do not depend on it', async () => {
    const u8s8 = await resolvePrecision({ llmDtype: 'int8', vitDtype: 'int8', int8Kernel: 'u8s8' });
    const u8u8 = await resolvePrecision({ llmDtype: 'int8', vitDtype: 'int8', int8Kernel: 'u8u8' });
    assert.equal(u8u8.int8Kernel, 'u8u8');
    assert.notDeepEqual(llmCacheTag(u8s8, 'int8'), llmCacheTag(u8u8, 'int8'));
    assert.notDeepEqual(vitCacheTag('int8', 'u8s8'), vitCacheTag('int8', 'u8u8'));
    assert.deepEqual(vitCacheTag('fp32', 'u8s8'), vitCacheTag('fp32', 'u8u8'));
    assert.deepEqual(llmCacheTag(u8s8, 'int4'), llmCacheTag(u8u8, 'int4'));
    assert.deepEqual(llmCacheTag(u8s8, 'fp32'), { dtype: 'fp32' });
  });

  test('bad values are InternVLErrors naming the option', async () => {
    await assert.rejects(resolvePrecision({ llmDtype: 'int3' as 'int4' }), /llmDtype/);
    await assert.rejects(resolvePrecision({ vitDtype: 'int4' as 'int8' }), /vitDtype/);
    await assert.rejects(resolvePrecision({ blockSize: 48 }), /blockSize/);
    await assert.rejects(resolvePrecision({ accuracyLevel: 7 }), /accuracyLevel/);
    await assert.rejects(
      resolvePrecision({ int8Kernel: 'u8x8' as 'u8u8' }),
      /int8Kernel must be u8s8 or u8u8/,
    );
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
    assert.equal(r.checkpointQuantization, null);
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
  test('usage errors exit 2; an unknown shape and a bad dtype exit 1 naming them', async () => {
    const stderr: string[] = [];
    const quiet = process.stderr.write;
    process.stderr.write = ((text: string) => {
      stderr.push(text);
      return true;
    }) as typeof process.stderr.write;
    const out = mkdtempSync(path.join(os.tmpdir(), 'internvl-random-'));
    try {
      assert.equal(await convertCommand([]), 2);
      assert.equal(await convertCommand(['a', '--bogus']), 2);
      assert.equal(await createRandomCommand(['--shape', 'InternVL2_5-1B']), 2);
      stderr.length = 0;
      assert.equal(await createRandomCommand(['--shape', 'InternVL2_5-3B', '--out', out]), 1);
      assert.match(stderr.join(''), /unknown shape "InternVL2_5-3B"/);
      stderr.length = 0;
      assert.equal(
        await convertCommand([goldenModelDir('tiny-internvl2_5-qwen2'), '--llm-dtype', 'int2']),
        1,
      );
      assert.match(stderr.join(''), /--llm-dtype must be one of/);
    } finally {
      process.stderr.write = quiet;
      rmSync(out, { recursive: true, force: true });
    }
  });
});
