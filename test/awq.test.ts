import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { evalQuant } from '../src/cli/eval-quant.js';
import { loadModelConfig } from '../src/config/model-config.js';
import { parseLlmQuantization } from '../src/config/quantization-config.js';
import { checkpointWeights, EngineCore } from '../src/engine/core.js';
import { decoderGraphQuant, resolveLlmPrecision } from '../src/engine/precision.js';
import { InternVLError } from '../src/errors.js';
import { Checkpoint, float16ToFloat32, writeSafetensors } from '../src/io/safetensors.js';
import { awqToInt4Blocks, unpackAwqRows } from '../src/models/awq.js';
import { buildDecoderGraph, decoderDimsFromConfig } from '../src/models/registry.js';
import { dequantizeInt4, stackInt4Columns } from '../src/onnx/quantize.js';
import { Trainer } from '../src/train/trainer.js';
import { awqFromIntegers, referenceBlocks, writeAwqCheckpoint } from './awq-fixture.js';
import { GOLDEN_DIR, goldenModelDir, maxAbsDiff } from './helpers.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'ivl-awq-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** Deterministic integers in [0, bound). */
function integers(length: number, bound: number, seed: number): Uint8Array {
  let s = seed;
  return Uint8Array.from({ length }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s >>> 8) % bound;
  });
}

describe('AWQ gemm packing', () => {
  const [out, inF, group] = [24, 96, 32];
  const q = integers(out * inF, 16, 1);
  const zeros = integers((out * inF) / group, 16, 2);
  // fp16 values: k / 1024 for k in 1..255.
  const scales = Float32Array.from(integers((out * inF) / group, 255, 3), (k) => (k + 1) / 1024);
  const p = awqFromIntegers(q, zeros, scales, out, inF, group);

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
    const blocks = awqToInt4Blocks({
      inFeatures: inF,
      outFeatures: out,
      groupSize: group,
      qweight: p.qweight,
      qzeros: p.qzeros,
      scales: float16ToFloat32(p.scalesF16),
    });
    const reference = referenceBlocks(p, out, inF, group);
    assert.deepEqual(blocks.packed, reference.packed);
    assert.deepEqual(blocks.zeroPoints, reference.zeroPoints);
    assert.deepEqual(blocks.scales, reference.scales);
    assert.deepEqual(dequantizeInt4(blocks), p.dequantized);
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

  test('other methods, versions, bit widths, symmetric AWQ and odd group sizes are refused by name', () => {
    const refused = (q: Record<string, unknown>, pattern: RegExp) =>
      assert.throws(
        () => parseLlmQuantization({ quantization_config: { ...awq, ...q } }),
        (e: unknown) => e instanceof InternVLError && e.code === 'UNSUPPORTED' && pattern.test(e.message),
      );
    refused({ quant_method: 'gptq' }, /quant_method: "gptq" is not supported \(supported: awq/);
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
      /group_size 128 differs from llm_config.quantization_config.group_size 64/,
    );
  });
});

// The tiny golden LLMs have 64 and 128 input features, so the group size is 64 (128 would not divide 64).
const GROUP = 64;

for (const model of ['tiny-internvl2_5-qwen2', 'tiny-internvl2_5-internlm2']) {
  describe(`an AWQ checkpoint of ${model} (group size ${GROUP})`, () => {
    const awqDir = path.join(root, `${model}-awq`);
    const twinDir = path.join(root, `${model}-twin`);
    before(async () => {
      mkdirSync(awqDir);
      mkdirSync(twinDir);
      await writeAwqCheckpoint(goldenModelDir(model), awqDir, twinDir, GROUP);
    });
    const load = (dir: string, options = {}) =>
      EngineCore.load(dir, { cacheDir: false, threads: 1, ...options });
    const readCase = async (name: string) => {
      const c = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases', model, `${name}.safetensors`));
      const ids = Array.from(await c.readInt64('input_ids'), Number);
      await c.close();
      const meta = JSON.parse(readFileSync(path.join(GOLDEN_DIR, 'cases', model, `${name}.json`), 'utf8'));
      if (!meta.pixel_values_file) return { ids };
      const px = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases', model, meta.pixel_values_file));
      const image = {
        pixelValues: await px.readFloat32('pixel_values'),
        numTiles: meta.pixel_values_shape[0],
      };
      await px.close();
      return { ids, image };
    };
    const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

    test('fp32 on the AWQ checkpoint is its dequantised twin: same logits and greedy tokens (img1, text)', async () => {
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
      // lm_head (16-bit in the checkpoint, int4 by default in quantised graphs) stays fp32 here.
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

describe('the int4 graph of an AWQ checkpoint', () => {
  test('its MatMulNBits weights are the checkpoint integers, zero points and scales (q/k/v stacked)', async () => {
    const model = 'tiny-internvl2_5-qwen2';
    const awqDir = path.join(root, 'graph-awq');
    const twinDir = path.join(root, 'graph-twin');
    mkdirSync(awqDir);
    mkdirSync(twinDir);
    const packed = await writeAwqCheckpoint(goldenModelDir(model), awqDir, twinDir, GROUP, 'top');
    const config = await loadModelConfig(awqDir);
    const checkpoint = await Checkpoint.open(awqDir);
    try {
      const dims = decoderDimsFromConfig(config);
      const precision = resolveLlmPrecision({ llmDtype: 'int4', blockSize: GROUP });
      const graph = await buildDecoderGraph(
        dims,
        checkpointWeights(checkpoint, config),
        decoderGraphQuant(precision, 'int4'),
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

describe('bad AWQ checkpoints', () => {
  test('a packed weight without quantization_config, and a missing qzeros, are named', async () => {
    const awqDir = path.join(root, 'bad-awq');
    const twinDir = path.join(root, 'bad-twin');
    mkdirSync(awqDir);
    mkdirSync(twinDir);
    await writeAwqCheckpoint(goldenModelDir('tiny-internvl2_5-qwen2'), awqDir, twinDir, GROUP);
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
      /an AWQ \(4-bit\) checkpoint cannot be trained/,
    );
    const src = await Checkpoint.open(awqDir);
    const tensors: Record<string, { dtype: 'I32' | 'F16' | 'BF16'; shape: number[]; data: Uint8Array }> = {};
    for (const n of src.names()) {
      if (n !== 'language_model.model.layers.0.mlp.up_proj.qzeros') {
        tensors[n] = {
          dtype: src.info(n).dtype as 'I32',
          shape: src.info(n).shape,
          data: await src.readBytes(n),
        };
      }
    }
    await src.close();
    await writeSafetensors(path.join(awqDir, 'model.safetensors'), tensors);
    await assert.rejects(
      EngineCore.load(awqDir, { cacheDir: false }),
      /layers\.0\.mlp\.up_proj\.qzeros is missing/,
    );
  });
});
