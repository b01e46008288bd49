import assert from 'node:assert/strict';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { checkpointWeights as engineWeights } from '../src/engine/core.js';
import { argmax, DecoderRunner, type DecoderRunnerOptions } from '../src/engine/decoder.js';
import { embedTokens, scatterImageEmbeddings } from '../src/engine/embeddings.js';
import { Generator } from '../src/engine/generate.js';
import { greedyTokens, teacherForcedLogits } from '../src/engine/greedy.js';
import { InternVLError } from '../src/errors.js';
import { Checkpoint } from '../src/io/safetensors.js';
import type { DecoderDims } from '../src/models/decoder.js';
import { loadModelConfig } from '../src/models/model-config.js';
import { splitPackedQkv } from '../src/models/packed-qkv.js';
import { decoderDimsFromConfig } from '../src/models/registry.js';
import { inverseFrequencies, type RopeParams, ropeBase, rotaryTables } from '../src/models/rope.js';
import { memoryWeights, type WeightSource } from '../src/models/weights.js';
import { GOLDEN_DIR, GOLDEN_MODELS, goldenModelDir, maxAbsDiff } from './helpers.js';

const LOGITS_ATOL = 2e-4;
const IMG_CONTEXT_ID = 261;
const VOCAB = 320;

const opened: Checkpoint[] = [];
const runners: DecoderRunner[] = [];
after(async () => {
  await Promise.all(runners.map((r) => r.release()));
  await Promise.all(opened.map((c) => c.close()));
});

async function open(file: string): Promise<Checkpoint> {
  const c = await Checkpoint.open(file);
  opened.push(c);
  return c;
}

function checkpointWeights(c: Checkpoint): WeightSource {
  return { has: (n) => c.has(n), shape: (n) => c.info(n).shape, float32: (n) => c.readFloat32(n) };
}

const models = new Map<string, Promise<{ dims: DecoderDims; weights: WeightSource }>>();
function goldenModel(model: string) {
  let m = models.get(model);
  if (!m) {
    m = (async () => {
      const dir = goldenModelDir(model);
      return {
        dims: decoderDimsFromConfig(await loadModelConfig(dir)),
        weights: checkpointWeights(await open(dir)),
      };
    })();
    models.set(model, m);
  }
  return m;
}

async function makeRunner(
  model: string,
  options: DecoderRunnerOptions = {},
  dimsPatch: Partial<DecoderDims> = {},
) {
  const { dims, weights } = await goldenModel(model);
  const runner = await DecoderRunner.create({ ...dims, ...dimsPatch }, weights, { threads: 1, ...options });
  runners.push(runner);
  return runner;
}

const defaultRunners = new Map<string, Promise<DecoderRunner>>();
function defaultRunner(model: string): Promise<DecoderRunner> {
  let r = defaultRunners.get(model);
  if (!r) {
    r = makeRunner(model);
    defaultRunners.set(model, r);
  }
  return r;
}

interface GoldenCase {
  ids: number[];
  file: Checkpoint;
  tensor(name: string): Promise<Float32Array>;
}

async function goldenCase(model: string, name: string): Promise<GoldenCase> {
  const file = await open(path.join(GOLDEN_DIR, 'cases', model, `${name}.safetensors`));
  const ids = Array.from(await file.readInt64('input_ids'), Number);
  return { ids, file, tensor: (t) => file.readFloat32(t) };
}

/** Prompt embeddings, with the case's projector output scattered into the image rows when it has one. */
async function promptEmbeds(runner: DecoderRunner, c: GoldenCase): Promise<Float32Array> {
  const embeds = runner.embed(c.ids);
  if (c.file.has('projector'))
    scatterImageEmbeddings(embeds, c.ids, IMG_CONTEXT_ID, await c.tensor('projector'));
  return embeds;
}

/** Greedy tokens through the engine's generation path, the golden projector output standing for the image. */
async function goldenGreedy(runner: DecoderRunner, c: GoldenCase): Promise<number[]> {
  if (!c.file.has('projector')) return greedyTokens(runner, c.ids, 8);
  const features = await c.tensor('projector');
  const generator = new Generator({
    decoder: runner,
    imgContextId: IMG_CONTEXT_ID,
    tokensPerTile: c.ids.filter((id) => id === IMG_CONTEXT_ID).length,
    tileValues: 1,
    encode: async () => features,
  });
  return greedyTokens(generator, c.ids, 8, [
    { key: 'golden', numTiles: 1, pixelValues: new Float32Array(1) },
  ]);
}

function assertClose(actual: Float32Array, expected: Float32Array, atol: number, what: string): void {
  const diff = maxAbsDiff(actual, expected);
  assert.ok(diff <= atol, `${what}: max abs diff ${diff} > ${atol}`);
}

async function checkGreedy(runner: DecoderRunner, c: GoldenCase, what: string): Promise<void> {
  const embeds = await promptEmbeds(runner, c);
  const tokens = await goldenGreedy(runner, c);
  const stepLogits = await teacherForcedLogits(runner, embeds, c.ids.length, tokens);
  assert.equal(stepLogits.length, 8);
  assert.deepEqual(
    tokens,
    Array.from(await c.file.readInt64('greedy_tokens'), Number),
    `${what}: greedy tokens`,
  );
  const expected = await c.tensor('greedy_step_logits');
  for (let i = 0; i < 8; i++) {
    const row = expected.subarray(i * VOCAB, (i + 1) * VOCAB);
    assertClose(stepLogits[i], row, LOGITS_ATOL, `${what}: greedy step ${i}`);
  }
}

for (const model of GOLDEN_MODELS) {
  describe(`decoder ${model}`, () => {
    test('text: logits of every position, last 4, last-only, greedy through the KV cache', async () => {
      const runner = await defaultRunner(model);
      const c = await goldenCase(model, 'text');
      const embeds = await promptEmbeds(runner, c);
      const all = await runner.forward(runner.newSequence(), embeds, c.ids.length, { allLogits: true });
      assertClose(all, await c.tensor('logits_all'), LOGITS_ATOL, 'logits_all');
      const last4 = await c.tensor('logits_last4');
      assertClose(all.subarray((c.ids.length - 4) * VOCAB), last4, LOGITS_ATOL, 'logits_last4');
      const last = await runner.forward(runner.newSequence(), embeds, c.ids.length);
      assert.equal(last.length, VOCAB);
      assertClose(last, last4.subarray(3 * VOCAB), LOGITS_ATOL, 'last-position logits');
      await checkGreedy(runner, c, 'text');
    });

    for (const name of ['img1', 'img3', 'img2x1']) {
      test(`${name}: projector features scattered in, last logits and greedy tokens`, async () => {
        const runner = await defaultRunner(model);
        const c = await goldenCase(model, name);
        const all = await runner.forward(runner.newSequence(), await promptEmbeds(runner, c), c.ids.length, {
          allLogits: true,
        });
        assertClose(
          all.subarray((c.ids.length - 4) * VOCAB),
          await c.tensor('logits_last4'),
          LOGITS_ATOL,
          'logits_last4',
        );
        if (c.file.has('logits_all'))
          assertClose(all, await c.tensor('logits_all'), LOGITS_ATOL, 'logits_all');
        await checkGreedy(runner, c, name);
      });
    }
  });
}

describe('decoder internals (tiny-internvl2_5-qwen2)', () => {
  const model = 'tiny-internvl2_5-qwen2';

  test('img1 debug stages: embeddings, each layer, final norm', async () => {
    const runner = await makeRunner(model, { hiddenStates: true });
    const c = await goldenCase(model, 'img1');
    const embeds = await promptEmbeds(runner, c);
    const r = await runner.inspect(runner.newSequence(), embeds, c.ids.length);
    const stages: [string, Float32Array, Float32Array][] = [
      ['inputs_embeds', embeds, await c.tensor('debug.llm_inputs_embeds')],
      ...r.layers.map((h, i): [string, Float32Array, Float32Array] => [`layer ${i}`, h, new Float32Array(0)]),
      ['final_norm', r.finalNorm, await c.tensor('debug.llm_final_norm')],
      ['logits', r.logits, await c.tensor('logits_all')],
    ];
    for (let i = 0; i < r.layers.length; i++) stages[1 + i][2] = await c.tensor(`debug.llm_layer_${i}`);
    for (const [stage, actual, expected] of stages) {
      const diff = maxAbsDiff(actual, expected);
      assert.ok(diff <= 1e-4, `first stage over tolerance: ${stage} (max abs diff ${diff})`);
    }
  });

  test('chunked prefill gives the same logits as one-shot prefill', async () => {
    const oneShot = await defaultRunner(model);
    const chunked = await makeRunner(model, { prefillChunk: 50, capacityStep: 64 });
    const c = await goldenCase(model, 'text');
    const embeds = await promptEmbeds(oneShot, c);
    const expected = await oneShot.forward(oneShot.newSequence(), embeds, c.ids.length, { allLogits: true });
    const seq = chunked.newSequence();
    const actual = await chunked.forward(seq, embeds, c.ids.length, { allLogits: true });
    assert.equal(seq.length, c.ids.length);
    assert.equal(seq.capacity, 256);
    assertClose(actual, expected, 1e-5, 'chunked allLogits');
    const last = await chunked.forward(chunked.newSequence(), embeds, c.ids.length);
    assertClose(last, expected.subarray((c.ids.length - 1) * VOCAB), 1e-5, 'chunked last logits');
  });

  test('KV buffers grown across a capacity boundary keep the cache intact', async () => {
    const runner = await makeRunner(model, { capacityStep: 240 });
    const c = await goldenCase(model, 'text');
    const tokens = Array.from(await c.file.readInt64('greedy_tokens'), Number);
    const expected = await c.tensor('greedy_step_logits');
    const seq = runner.newSequence();
    let logits = await runner.forward(seq, await promptEmbeds(runner, c), c.ids.length);
    assert.equal(seq.capacity, 240);
    for (let step = 0; step < 4; step++) {
      assertClose(logits, expected.subarray(step * VOCAB, (step + 1) * VOCAB), LOGITS_ATOL, `step ${step}`);
      assert.equal(argmax(logits), tokens[step]);
      logits = await runner.forward(seq, runner.embed([tokens[step]]), 1);
    }
    assert.equal(seq.length, c.ids.length + 4);
    assert.equal(seq.capacity, 480);
  });

  test('dynamic NTK past max_position_embeddings: scaled base for new positions only', async () => {
    const maxPos = 200;
    const scaling = { type: 'dynamic', factor: 2 } as const;
    const ntkDims = { ropeScaling: scaling, maxPositionEmbeddings: maxPos };
    const ntk = await makeRunner(model, {}, ntkDims);
    const { dims } = await goldenModel(model);
    const c = await goldenCase(model, 'text');
    const L = c.ids.length;
    const baseAt = (seqLen: number) =>
      ropeBase({ headDim: 16, theta: dims.ropeTheta, scaling, maxPositionEmbeddings: maxPos }, seqLen);
    assert.ok(Math.abs(baseAt(L) / (dims.ropeTheta * ((2 * L) / maxPos - 1) ** (16 / 14)) - 1) < 1e-12);

    // Prefill: every prompt position uses the base for the prompt length, chunked or not.
    const plain = await makeRunner(model, {}, { ropeTheta: baseAt(L) });
    const embeds = await promptEmbeds(ntk, c);
    const ntkSeq = ntk.newSequence();
    const actual = await ntk.forward(ntkSeq, embeds, L, { allLogits: true });
    const expected = await plain.forward(plain.newSequence(), embeds, L, { allLogits: true });
    assertClose(actual, expected, 1e-5, 'NTK prefill vs plain RoPE at the scaled base');
    assert.ok(maxAbsDiff(actual, await c.tensor('logits_all')) > 1e-3, 'NTK scaling had no effect');
    const chunked = await makeRunner(model, { prefillChunk: 64 }, ntkDims);
    const chunkedLogits = await chunked.forward(chunked.newSequence(), embeds, L, { allLogits: true });
    assertClose(chunkedLogits, expected, 1e-5, 'chunked NTK prefill');

    // Decode: the new position uses the base for L + 1 while cached keys keep their rotation.
    const next = plain.embed([65]);
    const decodeRef = await makeRunner(model, {}, { ropeTheta: baseAt(L + 1) });
    const refSeq = decodeRef.newSequence();
    // Shares ntkSeq's buffers: each run reads only the first `length` slots and writes after them.
    const { length, capacity, keys, values, pastTensors } = ntkSeq;
    Object.assign(refSeq, {
      length,
      capacity,
      keys: [...keys],
      values: [...values],
      pastTensors: [...pastTensors],
    });
    const decoded = await ntk.forward(ntkSeq, next, 1);
    assertClose(decoded, await decodeRef.forward(refSeq, next, 1), 1e-5, 'NTK decode step');
  });
});

describe('rotary tables', () => {
  const params: RopeParams = {
    headDim: 16,
    theta: 1e6,
    scaling: { type: 'dynamic', factor: 2 },
    maxPositionEmbeddings: 64,
  };

  /** The official formula evaluated directly in float64. */
  function direct(base: number, pos: number, j: number, dim: number) {
    const angle = pos / base ** ((2 * j) / dim);
    return { cos: Math.cos(angle), sin: Math.sin(angle) };
  }

  test('plain RoPE up to max_position_embeddings, NTK base beyond it', () => {
    assert.equal(ropeBase(params, 64), 1e6);
    assert.equal(ropeBase({ ...params, scaling: null }, 1000), 1e6);
    for (const seqLen of [64, 65, 100, 1000]) {
      const base = seqLen > 64 ? 1e6 * ((2 * seqLen) / 64 - 1) ** (16 / 14) : 1e6;
      const start = seqLen - 5;
      const { cos, sin } = rotaryTables(params, start, 5, seqLen);
      assert.equal(cos.length, 5 * 8);
      for (let r = 0; r < 5; r++) {
        for (let j = 0; j < 8; j++) {
          const want = direct(base, start + r, j, 16);
          const tol = 2e-7 * (start + r) + 1e-6;
          assert.ok(
            Math.abs(cos[r * 8 + j] - want.cos) <= tol,
            `cos seqLen ${seqLen} pos ${start + r} j ${j}`,
          );
          assert.ok(
            Math.abs(sin[r * 8 + j] - want.sin) <= tol,
            `sin seqLen ${seqLen} pos ${start + r} j ${j}`,
          );
        }
      }
    }
    // Decoding past max_pos: each step's new position gets the base for the grown length.
    const step = rotaryTables(params, 99, 1, 100);
    const stepBefore = rotaryTables(params, 99, 1, 99);
    assert.notEqual(step.cos[1], stepBefore.cos[1]);
  });

  test('linear scaling divides positions; inverse frequencies in float32', () => {
    const linear = rotaryTables({ ...params, scaling: { type: 'linear', factor: 4 } }, 8, 1, 9);
    const plain = rotaryTables({ ...params, scaling: null }, 2, 1, 3);
    assert.deepEqual(linear, plain);
    const inv = inverseFrequencies(1e6, 16);
    assert.equal(inv[0], 1);
    assert.ok(Math.abs(inv[1] - 1e6 ** -(2 / 16)) < 1e-7);
  });
});

describe('embeddings, scatter and argmax', () => {
  const table = Float32Array.from({ length: 4 * 3 }, (_, i) => i);

  test('embedTokens looks up rows and rejects ids outside the vocabulary', () => {
    assert.deepEqual(Array.from(embedTokens(table, 3, [2, 0])), [6, 7, 8, 0, 1, 2]);
    assert.throws(
      () => embedTokens(table, 3, [1, 4]),
      (e: unknown) =>
        e instanceof InternVLError && e.code === 'BAD_INPUT' && /token id 4 at position 1/.test(e.message),
    );
    assert.throws(() => embedTokens(table, 3, [-1]), /token id -1/);
    assert.throws(() => embedTokens(table, 3, [1.5]), /token id 1.5/);
  });

  test('embedTokens over rows read on demand: same values, each distinct id read once', () => {
    const reads: number[] = [];
    const rows = {
      rowCount: 4,
      rowLength: 3,
      readRow: (row: number, out: Float32Array) => {
        reads.push(row);
        out.set(table.subarray(row * 3, row * 3 + 3));
      },
    };
    const ids = [3, 1, 3, 3, 0];
    assert.deepEqual(Array.from(embedTokens(rows, 3, ids)), Array.from(embedTokens(table, 3, ids)));
    assert.deepEqual(reads, [3, 1, 0]);
    assert.throws(
      () => embedTokens(rows, 3, [4]),
      /token id 4 at position 0 is outside the vocabulary \[0, 4\)/,
    );
  });

  test('a runner over a safetensors checkpoint reads embedding rows from the file, not a table in memory', async () => {
    const dir = goldenModelDir('tiny-internvl2_5-qwen2');
    const { dims } = await goldenModel('tiny-internvl2_5-qwen2');
    const config = await loadModelConfig(dir);
    const runner = await DecoderRunner.create(dims, engineWeights(await open(dir), config), { threads: 1 });
    runners.push(runner);
    assert.ok(!(runner.embeddings instanceof Float32Array) && !(runner.embeddings instanceof Uint16Array));
    const ids = [0, 5, 261, 5, 319];
    assert.deepEqual(runner.embed(ids), (await defaultRunner('tiny-internvl2_5-qwen2')).embed(ids));
  });

  test('scatterImageEmbeddings writes image rows in order and checks the count', () => {
    const ids = [5, 9, 7, 9];
    const embeds = new Float32Array(8);
    scatterImageEmbeddings(embeds, ids, 9, Float32Array.of(1, 2, 3, 4));
    assert.deepEqual(Array.from(embeds), [0, 0, 1, 2, 0, 0, 3, 4]);
    assert.throws(
      () => scatterImageEmbeddings(new Float32Array(8), ids, 9, Float32Array.of(1, 2)),
      (e: unknown) =>
        e instanceof InternVLError && e.code === 'BAD_INPUT' && /2 image context tokens/.test(e.message),
    );
  });

  test('argmax ties go to the lowest index', () => {
    assert.equal(argmax(Float32Array.of(1, 3, 3, 2)), 1);
  });

  test('splitPackedQkv de-interleaves InternLM2 wqkv rows per KV head', () => {
    // 4 query heads, 2 KV heads, head_dim 1: packed rows [q0 q1 k0 v0 | q2 q3 k1 v1].
    const dims = { numHeads: 4, numKvHeads: 2, headDim: 1 } as DecoderDims;
    const { q, k, v } = splitPackedQkv(Float32Array.of(0, 1, 10, 20, 2, 3, 11, 21), dims, 1);
    assert.deepEqual(
      [Array.from(q), Array.from(k), Array.from(v)],
      [
        [0, 1, 2, 3],
        [10, 11],
        [20, 21],
      ],
    );
  });
});

describe('decoder loading and input errors', () => {
  const model = 'tiny-internvl2_5-qwen2';

  async function goldenTensors() {
    const { dims, weights } = await goldenModel(model);
    const file = await open(goldenModelDir(model));
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const name of file.names()) {
      if (name.startsWith('language_model.'))
        tensors.set(name, { shape: weights.shape(name), data: await weights.float32(name) });
    }
    return { dims, tensors };
  }

  const badCheckpoint = (pattern: RegExp) => (e: unknown) =>
    e instanceof InternVLError && e.code === 'BAD_CHECKPOINT' && pattern.test(e.message);

  test('a missing tensor is named', async () => {
    const { dims, tensors } = await goldenTensors();
    tensors.delete('language_model.model.layers.1.mlp.up_proj.weight');
    await assert.rejects(
      DecoderRunner.create(dims, memoryWeights(tensors)),
      badCheckpoint(/^language_model\.model\.layers\.1\.mlp\.up_proj\.weight: missing/),
    );
  });

  test('a wrong-shaped tensor is named with both shapes', async () => {
    const { dims, tensors } = await goldenTensors();
    const name = 'language_model.model.layers.0.self_attn.q_proj.weight';
    tensors.set(name, { shape: [64, 32], data: new Float32Array(64 * 32) });
    await assert.rejects(
      DecoderRunner.create(dims, memoryWeights(tensors)),
      badCheckpoint(
        /^language_model\.model\.layers\.0\.self_attn\.q_proj\.weight: expected \[64,64\], got \[64,32\]$/,
      ),
    );
    const internlm2 = await goldenModel('tiny-internvl2_5-internlm2');
    await assert.rejects(
      DecoderRunner.create(internlm2.dims, memoryWeights(tensors)),
      badCheckpoint(/tok_embeddings\.weight: missing/),
    );
  });

  test('bad forward inputs are rejected', async () => {
    const runner = await defaultRunner(model);
    const seq = runner.newSequence();
    await assert.rejects(runner.forward(seq, new Float32Array(10), 1), /expected 1 tokens × 64 = 64/);
    await assert.rejects(runner.forward(seq, new Float32Array(0), 0), /numTokens must be a positive integer/);
    const other = await makeRunner(model);
    await assert.rejects(other.forward(seq, new Float32Array(64), 1), /not created by this decoder runner/);
    await assert.rejects(runner.inspect(seq, new Float32Array(64), 1), /hiddenStates: true/);
    assert.equal(seq.length, 0);
  });
});
