import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { evalQuant } from '../src/cli/eval-quant.js';
import { parseLlmQuantization } from '../src/config/quantization-config.js';
import { checkpointWeights, EngineCore } from '../src/engine/core.js';
import { resolvePrecision } from '../src/engine/graph-plan.js';
import { decoderGraphOptions, resolveLlmPrecision } from '../src/engine/precision.js';
import { InternVLError } from '../src/errors.js';
import { float16ToFloat32 } from '../src/io/float-formats.js';
import { Checkpoint } from '../src/io/safetensors.js';
import type { SafetensorsDType } from '../src/io/safetensors-format.js';
import { writeSafetensors } from '../src/io/safetensors-write.js';
import { AWQ_LAYOUT, unpackAwqRows } from '../src/models/awq.js';
import { gptqLayout, unpackGptqWeights } from '../src/models/gptq.js';
import { loadModelConfig } from '../src/models/model-config.js';
import { int4BlocksFromIntegers } from '../src/models/packed-weights.js';
import { buildDecoderGraph, decoderDimsFromConfig } from '../src/models/registry.js';
import { dequantizeInt4, stackInt4Columns } from '../src/onnx/quantize.js';
import { Trainer } from '../src/train/trainer.js';
import { goldenModelDir, maxAbsDiff, readGoldenCase } from './helpers.js';
import {
  type PackedFormat,
  packIntegers,
  referenceBlocks,
  writePackedCheckpoint,
} from './packed-checkpoint-fixture.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'ivl-packed-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** Deterministic integers in [0, bound). */
function integers(length: number, bound: number, seed: number): Uint8Array {
  let s = seed;
  return Uint8Array.from({ length }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % bound;
  });
}

describe('AWQ gemm and GPTQ packing', () => {
  const [out, inF, group] = [24, 96, 32];
  const q = integers(out * inF, 16, 1);
  const zeros = integers((out * inF) / group, 16, 2);
  // fp16 values: k / 1024 for k in 1..255.
  const scales = Float32Array.from(integers((out * inF) / group, 255, 3), (k) => (k + 1) / 1024);
  const p = packIntegers(q, zeros, scales, out, inF, group);

  test('unpacking restores every integer weight and zero point in column order', () => {
    const unpacked = unpackAwqRows(p.qweight, inF, out);
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inF; i++) assert.equal(unpacked[i * out + o], q[o * inF + i]);
    }
    const unpackedZeros = unpackAwqRows(p.qzeros, inF / group, out);
    for (let o = 0; o < out; o++) {
      for (let g = 0; g < inF / group; g++)
        assert.equal(unpackedZeros[g * out + o], zeros[o * (inF / group) + g]);
    }
  });

  test('the MatMulNBits blocks hold the same integers, zero points and scales; they dequantise exactly', () => {
    const blocks = int4BlocksFromIntegers(
      AWQ_LAYOUT.unpackWeights(p.qweight, inF, out),
      AWQ_LAYOUT.unpackZeros(p.qzeros, inF / group, out, 'x.qzeros'),
      float16ToFloat32(p.scalesF16),
      inF,
      out,
      group,
    );
    const reference = referenceBlocks(p, out, inF, group);
    assert.deepEqual(blocks.packed, reference.packed);
    assert.deepEqual(blocks.zeroPoints, reference.zeroPoints);
    assert.deepEqual(blocks.scales, reference.scales);
    assert.deepEqual(dequantizeInt4(blocks), p.dequantized);
  });

  test('GPTQ: weights packed along the input rows, zero points stored minus 1 (or as they are in gptq_v2)', () => {
    const unpacked = unpackGptqWeights(
      packIntegers(q, zeros, scales, out, inF, group, 'gptq_v2').qweight,
      inF,
      out,
    );
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inF; i++) assert.equal(unpacked[i * out + o], q[o * inF + i]);
    }
    const nonZero = zeros.map((z) => Math.max(z, 1));
    for (const [format, offset] of [
      ['gptq', 1],
      ['gptq_v2', 0],
    ] as const) {
      const packed = packIntegers(q, nonZero, scales, out, inF, group, format);
      const unpackedZeros = gptqLayout(offset).unpackZeros(packed.qzeros, inF / group, out, 'x.qzeros');
      for (let o = 0; o < out; o++) {
        for (let g = 0; g < inF / group; g++)
          assert.equal(unpackedZeros[g * out + o], nonZero[o * (inF / group) + g], format);
      }
    }
    // A stored 15 in the original format stands for 16, which 4 bits cannot hold.
    const overflow = packIntegers(
      q,
      zeros.map(() => 15),
      scales,
      out,
      inF,
      group,
      'gptq_v2',
    ).qzeros;
    assert.throws(
      () => gptqLayout(1).unpackZeros(overflow, inF / group, out, 'x.qzeros'),
      /x\.qzeros: stored zero point 15 \+ 1 does not fit 4 bits/,
    );
  });
});

describe('quantization_config', () => {
  const awq = { quant_method: 'awq', version: 'gemm', bits: 4, group_size: 128, zero_point: true };
  test('AWQ gemm is read from llm_config or the top level (AutoAWQ spellings too)', () => {
    assert.deepEqual(parseLlmQuantization({ llm_config: { quantization_config: awq } }), {
      method: 'awq',
      groupSize: 128,
    });
    assert.deepEqual(
      parseLlmQuantization({
        quantization_config: { quant_method: 'awq', version: 'GEMM', w_bit: 4, q_group_size: 64 },
      }),
      { method: 'awq', groupSize: 64 },
    );
    assert.equal(parseLlmQuantization({ llm_config: {} }), null);
  });

  test('GPTQ: the original format (zero points minus 1) unless checkpoint_format says gptq_v2', () => {
    const gptq = { quant_method: 'gptq', bits: 4, group_size: 128, desc_act: false, sym: true };
    assert.deepEqual(parseLlmQuantization({ quantization_config: gptq }), {
      method: 'gptq',
      groupSize: 128,
      zeroPointOffset: 1,
    });
    assert.deepEqual(
      parseLlmQuantization({ quantization_config: { ...gptq, checkpoint_format: 'gptq_v2' } }),
      {
        method: 'gptq',
        groupSize: 128,
        zeroPointOffset: 0,
      },
    );
  });

  test('other methods, versions, bit widths, symmetric AWQ, act-order GPTQ and odd group sizes are refused by name', () => {
    const refused = (q: Record<string, unknown>, pattern: RegExp) =>
      assert.throws(
        () => parseLlmQuantization({ quantization_config: { ...awq, ...q } }),
        (e: unknown) => e instanceof InternVLError && e.code === 'UNSUPPORTED' && pattern.test(e.message),
      );
    refused(
      { quant_method: 'bitsandbytes' },
      /quant_method: "bitsandbytes" is not supported \(supported: awq .*gptq/,
    );
    refused(
      { quant_method: 'gptq', desc_act: true },
      /desc_act: act-order GPTQ \(desc_act true\) is not supported/,
    );
    refused({ quant_method: 'gptq', checkpoint_format: 'marlin' }, /GPTQ format "marlin" is not supported/);
    refused({ quant_method: 'gptq', bits: 8 }, /bits: 8-bit GPTQ/);
    refused({ version: 'gemv' }, /version: AWQ version "gemv" is not supported/);
    refused({ bits: 8 }, /bits: 8-bit AWQ/);
    refused({ zero_point: false }, /zero_point: AWQ without zero points/);
    refused({ group_size: 100 }, /group_size: group size 100/);
    assert.throws(
      () =>
        parseLlmQuantization({
          quantization_config: awq,
          llm_config: { quantization_config: { ...awq, group_size: 64 } },
        }),
      /quantization_config \(awq, group size 128\) differs from llm_config.quantization_config \(awq, group size 64\)/,
    );
  });
});

// The tiny golden LLMs have 64 and 128 input features, so the group size is 64 (128 would not divide 64).
const GROUP = 64;

const PACKED_MODELS: [string, PackedFormat][] = [
  ['tiny-internvl2_5-qwen2', 'awq'],
  ['tiny-internvl2_5-internlm2', 'awq'],
  ['tiny-internvl2_5-qwen2', 'gptq'],
  ['tiny-internvl2_5-internlm2', 'gptq_v2'],
];

for (const [model, format] of PACKED_MODELS) {
  describe(`a ${format} checkpoint of ${model} (group size ${GROUP})`, () => {
    const awqDir = path.join(root, `${model}-${format}`);
    const twinDir = path.join(root, `${model}-${format}-twin`);
    before(async () => {
      mkdirSync(awqDir);
      mkdirSync(twinDir);
      await writePackedCheckpoint(goldenModelDir(model), awqDir, twinDir, GROUP, format);
    });
    const load = (dir: string, options = {}) =>
      EngineCore.load(dir, { cacheDir: false, threads: 1, ...options });
    const readCase = (name: string) => readGoldenCase(model, name);
    const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

    test('fp32 on the packed checkpoint is its dequantised twin: same logits and greedy tokens (img1, text)', async () => {
      const awq = await load(awqDir, { llmDtype: 'fp32' });
      const twin = await load(twinDir);
      try {
        for (const name of ['img1', 'text']) {
          const { ids, image } = await readCase(name);
          const a = await awq.forwardLogits(ids, image);
          const b = await twin.forwardLogits(ids, image);
          const diff = maxAbsDiff(a, b);
          assert.ok(diff <= 1e-3 * maxAbs(b), `${name}: ${diff} vs largest logit ${maxAbs(b)}`);
          assert.deepEqual(await awq.generateGreedy(ids, 8, image), await twin.generateGreedy(ids, 8, image));
        }
      } finally {
        await awq.close();
        await twin.close();
      }
    });

    test('by default the int4 graph runs the packed weights as they are: no requantisation error', async () => {
      // accuracy_level 0 computes MatMulNBits in fp32, so only the summation order differs from the twin;
      // lm_head (16-bit in the checkpoint, int8 by default in the int4 graphs of a packed checkpoint) stays fp32 here.
      const awq = await load(awqDir, { accuracyLevel: 0, lmHeadDtype: 'fp32' });
      const twin = await load(twinDir);
      const requantised = await load(twinDir, {
        llmDtype: 'int4',
        blockSize: GROUP,
        accuracyLevel: 0,
        lmHeadDtype: 'fp32',
      });
      try {
        const { ids, image } = await readCase('img1');
        const reference = await twin.forwardLogits(ids, image);
        const packedDiff = maxAbsDiff(await awq.forwardLogits(ids, image), reference);
        const requantisedDiff = maxAbsDiff(await requantised.forwardLogits(ids, image), reference);
        assert.ok(packedDiff < 1e-4 * maxAbs(reference), `packed weights: ${packedDiff}`);
        assert.ok(
          requantisedDiff > 10 * packedDiff,
          `requantised ${requantisedDiff} vs packed ${packedDiff}`,
        );
        assert.deepEqual(await awq.generateGreedy(ids, 8, image), await twin.generateGreedy(ids, 8, image));
      } finally {
        await awq.close();
        await twin.close();
        await requantised.close();
      }
    });

    test('eval-quant compares the packed int4 graph with the exact fp32 weights', async () => {
      const r = await evalQuant(awqDir, {
        cacheDir: false,
        threads: 1,
        promptTokens: 24,
        newTokens: 4,
        accuracyLevel: 0,
        lmHeadDtype: 'fp32',
      });
      assert.equal(r.checkpointQuantization?.method, format.startsWith('gptq') ? 'gptq' : 'awq');
      assert.equal(r.precision.llmDtype, 'int4');
      assert.equal(r.precision.blockSize, GROUP);
      // fp32 is the exact dequantised weights; the int4 graph (a different kernel: decode steps differ in
      // the last bits) computes with the same weights.
      for (const stats of [r.promptLogits, r.decodeLogits]) {
        assert.ok(stats.maxAbsDiff < 1e-4 * stats.maxAbsReference, JSON.stringify(stats));
      }
      assert.ok(r.decodeLogits.maxAbsDiff > 0, 'the int4 graph was used');
      assert.equal(r.greedyAgreement, 1);
    });
  });
}

describe('the lm_head of a packed checkpoint', () => {
  test('defaults to int8 in its int4 graphs (fp32 in fp32 graphs), and eval-quant reports it', async () => {
    const dir = path.join(root, 'lm-head-awq');
    const twin = path.join(root, 'lm-head-awq-twin');
    mkdirSync(dir);
    mkdirSync(twin);
    await writePackedCheckpoint(goldenModelDir('tiny-internvl2_5-qwen2'), dir, twin, GROUP, 'awq');
    const config = await loadModelConfig(dir);
    const resolved = await resolvePrecision({}, config);
    assert.equal(decoderGraphOptions(resolved, 'int4').lmHeadQuant?.dtype, 'int8');
    assert.equal(decoderGraphOptions(resolved, 'fp32').lmHeadQuant?.dtype, 'fp32');
    const plain = await resolvePrecision({ llmDtype: 'int4' }, await loadModelConfig(twin));
    assert.equal(decoderGraphOptions(plain, 'int4').lmHeadQuant?.dtype, 'int4');
    const run = (lmHeadDtype?: 'int4') =>
      evalQuant(dir, { cacheDir: false, threads: 1, promptTokens: 64, newTokens: 8, lmHeadDtype });
    const byDefault = await run();
    const int4 = await run('int4');
    assert.equal(byDefault.lmHeadDtype, 'int8');
    assert.equal(int4.lmHeadDtype, 'int4');
    // Measured: 0.091 (int8 head) vs 0.411 (int4 head) of a largest logit of 4.08.
    const { maxAbsDiff: error, maxAbsReference } = byDefault.promptLogits;
    assert.ok(error < 0.05 * maxAbsReference, `int8 head: ${error} of ${maxAbsReference}`);
    assert.ok(
      int4.promptLogits.maxAbsDiff > 2 * error,
      `int4 head ${int4.promptLogits.maxAbsDiff} vs ${error}`,
    );
  });
});

describe('the int4 graph of an AWQ checkpoint', () => {
  test('its MatMulNBits weights are the checkpoint integers, zero points and scales (q/k/v stacked)', async () => {
    const model = 'tiny-internvl2_5-qwen2';
    const awqDir = path.join(root, 'graph-awq');
    const twinDir = path.join(root, 'graph-twin');
    mkdirSync(awqDir);
    mkdirSync(twinDir);
    const packed = await writePackedCheckpoint(goldenModelDir(model), awqDir, twinDir, GROUP, 'awq', 'top');
    const config = await loadModelConfig(awqDir);
    const checkpoint = await Checkpoint.open(awqDir);
    try {
      const dims = decoderDimsFromConfig(config);
      const precision = resolveLlmPrecision({ llmDtype: 'int4', blockSize: GROUP });
      const graph = await buildDecoderGraph(
        dims,
        checkpointWeights(checkpoint, config),
        decoderGraphOptions(precision, 'int4'),
      );
      const init = (name: string) => graph.initializers.find((i) => i.name === name)?.data;
      const ref = (name: string) => {
        const [out, inF] = [packed.get(name)!.dequantized.length / dims.hiddenSize, dims.hiddenSize];
        return referenceBlocks(packed.get(name)!, out, inF, GROUP);
      };
      const p = 'language_model.model.layers.1.';
      const qkv = stackInt4Columns(['q', 'k', 'v'].map((x) => ref(`${p}self_attn.${x}_proj.weight`)));
      assert.deepEqual(init(`${p}self_attn.qkv_proj.weight:int4`), qkv.packed);
      assert.deepEqual(init(`${p}self_attn.qkv_proj.weight:int4_scales`), qkv.scales);
      assert.deepEqual(init(`${p}self_attn.qkv_proj.weight:int4_zero_points`), qkv.zeroPoints);
      const o = ref(`${p}self_attn.o_proj.weight`);
      assert.deepEqual(init(`${p}self_attn.o_proj.weight:int4`), o.packed);
      assert.deepEqual(init(`${p}self_attn.o_proj.weight:int4_scales`), o.scales);
    } finally {
      await checkpoint.close();
    }
  });
});

/** Rewrites a checkpoint folder's model.safetensors after `edit` changed its raw tensors. */
async function rewriteTensors(
  dir: string,
  edit: (tensors: Record<string, { dtype: SafetensorsDType; shape: number[]; data: Uint8Array }>) => void,
) {
  const src = await Checkpoint.open(dir);
  const tensors: Record<string, { dtype: SafetensorsDType; shape: number[]; data: Uint8Array }> = {};
  for (const n of src.names()) tensors[n] = { ...src.info(n), data: await src.readBytes(n) };
  await src.close();
  edit(tensors);
  await writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
}

describe('bad packed checkpoints', () => {
  const folders = (name: string) => {
    const dirs = [path.join(root, `${name}`), path.join(root, `${name}-twin`)];
    for (const d of dirs) mkdirSync(d);
    return dirs;
  };

  test('a packed weight without quantization_config, and a missing qzeros, are named; training is refused', async () => {
    const [awqDir, twinDir] = folders('bad-awq');
    await writePackedCheckpoint(goldenModelDir('tiny-internvl2_5-qwen2'), awqDir, twinDir, GROUP);
    const config = JSON.parse(readFileSync(path.join(awqDir, 'config.json'), 'utf8'));
    const noQuant = structuredClone(config);
    delete noQuant.llm_config.quantization_config;
    writeFileSync(path.join(awqDir, 'config.json'), JSON.stringify(noQuant));
    await assert.rejects(
      EngineCore.load(awqDir, { cacheDir: false }),
      /qweight is a packed quantised weight, but config.json has no quantization_config/,
    );
    writeFileSync(path.join(awqDir, 'config.json'), JSON.stringify(config));
    await assert.rejects(
      Trainer.create({ model: awqDir, stage: 1, optimizer: { lr: 0 } }),
      /a 4-bit \(awq\) checkpoint cannot be trained/,
    );
    await rewriteTensors(awqDir, (t) => {
      delete t['language_model.model.layers.0.mlp.up_proj.qzeros'];
    });
    await assert.rejects(
      EngineCore.load(awqDir, { cacheDir: false }),
      /layers\.0\.mlp\.up_proj\.qzeros is missing/,
    );
  });

  test('a GPTQ g_idx that reorders input rows (act-order) is refused, naming the tensor', async () => {
    const [gptqDir, twinDir] = folders('bad-gptq');
    await writePackedCheckpoint(goldenModelDir('tiny-internvl2_5-qwen2'), gptqDir, twinDir, GROUP, 'gptq');
    await rewriteTensors(gptqDir, (t) => {
      const name = 'language_model.model.layers.1.mlp.down_proj.g_idx';
      const gIdx = new Int32Array(t[name].data.buffer.slice(0));
      [gIdx[3], gIdx[100]] = [gIdx[100], gIdx[3]];
      t[name].data = new Uint8Array(gIdx.buffer);
    });
    await assert.rejects(
      EngineCore.load(gptqDir, { cacheDir: false }),
      /layers\.1\.mlp\.down_proj\.g_idx: input row 3 is in group 1, not 0: act-order \(desc_act\) GPTQ is not supported/,
    );
  });
});
