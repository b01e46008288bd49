/**
 * The decode graph of an engine with a separate prefill graph attends by matmuls over the KV buffers
 * (models/cache-attention.ts) instead of GroupQueryAttention: same results within float rounding, and a
 * sequence's logits bit-identical whatever the buffer's capacity, so whatever else is in its batch.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { checkpointWeights } from '../src/engine/core.js';
import { argmax, DecoderRunner, decoderDimsFromConfig } from '../src/engine/decoder.js';
import { decoderGraphOptions, llmCacheTag, resolveLlmPrecision } from '../src/engine/precision.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadModelConfig } from '../src/models/model-config.js';
import { GOLDEN_MODELS, goldenModelDir, maxAbsDiff } from './helpers.js';

const checkpoints: Checkpoint[] = [];
after(() => Promise.all(checkpoints.map((c) => c.close())));

async function open(model: string) {
  const dir = goldenModelDir(model);
  const ckpt = await Checkpoint.open(dir);
  checkpoints.push(ckpt);
  const config = await loadModelConfig(dir);
  return { dims: decoderDimsFromConfig(config), weights: checkpointWeights(ckpt, config) };
}

const promptIds = (n: number, vocab: number, seed: number) =>
  Array.from({ length: n }, (_, i) => (i * 37 + seed * 101 + 5) % Math.min(vocab, 1000));

test('only the decode graph of a two-graph engine attends by matmuls', () => {
  const two = resolveLlmPrecision({ llmDtype: 'int4', prefillDtype: 'int8' });
  assert.equal(decoderGraphOptions(two, 'int4').attention, 'matmul');
  assert.equal(decoderGraphOptions(two, 'int8').attention, 'gqa');
  const one = resolveLlmPrecision({ llmDtype: 'int4' });
  assert.equal(decoderGraphOptions(one, 'int4').attention, 'gqa');
  // A cached GroupQueryAttention graph is never taken for the decode graph; the prefill graph is an int8 engine's.
  assert.notDeepEqual(llmCacheTag(two, 'int4'), llmCacheTag(one, 'int4'));
  assert.deepEqual(llmCacheTag(two, 'int8'), llmCacheTag(resolveLlmPrecision({ llmDtype: 'int8' }), 'int8'));
});

for (const model of GOLDEN_MODELS) {
  test(`${model}: matmul attention over the KV buffers equals GroupQueryAttention (chunks of 10, then decode)`, async () => {
    const { dims, weights } = await open(model);
    // fp32 decode graph with matmul attention (the int8 prefill graph is never used: every chunk is < 16 tokens).
    const matmul = await DecoderRunner.create(dims, weights, {
      threads: 1,
      capacityStep: 16,
      llmDtype: 'fp32',
      prefillDtype: 'int8',
    });
    const gqa = await DecoderRunner.create(dims, weights, { threads: 1, capacityStep: 16, llmDtype: 'fp32' });
    const a = matmul.newSequence();
    const b = gqa.newSequence();
    const ids = promptIds(40, dims.vocabSize, 0);
    let worst = 0;
    let largest = 0;
    const compare = (x: Float32Array, y: Float32Array) => {
      worst = Math.max(worst, maxAbsDiff(x, y));
      largest = Math.max(largest, ...Array.from(y, Math.abs));
    };
    for (let s = 0; s < ids.length; s += 10) {
      const chunk = ids.slice(s, s + 10);
      compare(await matmul.forward(a, matmul.embed(chunk), 10), await gqa.forward(b, gqa.embed(chunk), 10));
    }
    let next = 3;
    for (let step = 0; step < 8; step++) {
      const reference = await gqa.forward(b, gqa.embed([next]), 1);
      compare(await matmul.forward(a, matmul.embed([next]), 1), reference);
      next = argmax(reference);
    }
    assert.ok(worst <= 1e-5 * largest, `max |Δlogit| ${worst} against logits up to ${largest}`);
    await matmul.release();
    await gqa.release();
  });
}

test('with matmul attention a sequence decodes bit-identically alone and beside a longer one', async () => {
  const { dims, weights } = await open('tiny-internvl2_5-qwen2');
  const runner = await DecoderRunner.create(dims, weights, {
    threads: 1,
    capacityStep: 16,
    llmDtype: 'fp32',
    prefillDtype: 'int8',
  });
  const prompt = promptIds(21, dims.vocabSize, 1);
  const decode = async (withLonger: boolean) => {
    const seq = runner.newSequence();
    let next = argmax(await runner.forward(seq, runner.embed(prompt), prompt.length));
    const longer = runner.newSequence();
    await runner.forward(longer, runner.embed(promptIds(90, dims.vocabSize, 2)), 90);
    runner.joinBatch(seq);
    if (withLonger) runner.joinBatch(longer);
    const rows: Float32Array[] = [];
    for (let step = 0; step < 6; step++) {
      const logits = await runner.decodeBatch(withLonger ? [next, 7] : [next]);
      const row = logits.slice(0, dims.vocabSize);
      rows.push(row);
      next = argmax(row);
    }
    runner.leaveBatch(seq, { keepCache: false });
    if (withLonger) runner.leaveBatch(longer, { keepCache: false });
    return rows;
  };
  const alone = await decode(false);
  const beside = await decode(true);
  for (let step = 0; step < alone.length; step++) {
    assert.deepEqual(
      beside[step],
      alone[step],
      `step ${step}: logits differ with a longer sequence in the batch`,
    );
  }
  await runner.release();
});
