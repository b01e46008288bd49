import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { decoderDimsFromConfig } from '../src/engine/decoder.js';
import { visionDimsFromConfig } from '../src/engine/vision.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadTokenizer } from '../src/io/tokenizer-files.js';
import { internVitTensorSpecs } from '../src/models/internvit.js';
import { loadModelConfig } from '../src/models/model-config.js';
import { projectorTensorSpecs } from '../src/models/projector.js';
import { decoderTensorSpecs } from '../src/models/registry.js';
import { checkTensorShapes } from '../src/models/weights.js';
import { StreamDecoder } from '../src/text/stream-decoder.js';
import { createRandomCheckpoint, hasWeights, RANDOM_SHAPES } from '../src/tools/random-checkpoint.js';
import { madeUpWord } from '../src/tools/random-tokenizer.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'ivl-random-'));
after(() => rmSync(root, { recursive: true, force: true }));

const layers = { vit: 1, llm: 1 };

for (const shape of ['InternVL2_5-1B', 'InternVL2_5-2B', 'InternVL3_5-1B']) {
  test(`${shape}: real config, real tensor shapes, real special-token ids`, async () => {
    const a = await createRandomCheckpoint({ shape, out: path.join(root, `${shape}-a`), seed: 7, layers });

    const config = await loadModelConfig(a);
    const weights = await Checkpoint.open(a);
    const source = {
      has: (n: string) => weights.has(n),
      shape: (n: string) => weights.info(n).shape,
      float32: (n: string) => weights.readFloat32(n),
    };
    const vision = visionDimsFromConfig(config);
    const decoder = decoderDimsFromConfig(config);
    checkTensorShapes(source, [...internVitTensorSpecs(vision.vit, 1), ...decoderTensorSpecs(decoder)]);
    assert.equal(config.template, 'internvl2_5');

    const tokenizer = await loadTokenizer(a);
    const expected = {
      'InternVL2_5-1B': {
        '<|im_start|>': 151644,
        '<|im_end|>': 151645,
        '<img>': 151665,
        '<IMG_CONTEXT>': 151667,
      },
      'InternVL2_5-2B': {
        '<|im_start|>': 92543,
        '<|im_end|>': 92542,
        '<img>': 92544,
        '<IMG_CONTEXT>': 92546,
      },
      // Qwen3's <tool_response>, </tool_response>, <think>, </think> come first (151665–151668).
      'InternVL3_5-1B': { '<|im_end|>': 151645, '<think>': 151667, '<img>': 151669, '<IMG_CONTEXT>': 151671 },
    }[shape] as Record<string, number>;
    for (const [token, id] of Object.entries(expected)) assert.equal(tokenizer.tokenToId(token), id, token);
    assert.equal(
      tokenizer.decode(tokenizer.encode('héllo, 世界', { addSpecialTokens: false })),
      'héllo, 世界',
    );
    assert.equal(tokenizer.vocabSize, config.llm_config.vocab_size, 'the tokenizer covers every id');

    checkTensorShapes(
      source,
      projectorTensorSpecs({ inputSize: 4 * vision.vit.hiddenSize, llmHiddenSize: decoder.hiddenSize }),
    );
    const ln = await weights.readFloat32('mlp1.0.weight');
    assert.ok(
      ln.every((v) => v > 0.85 && v < 1.15),
      'norm weights are drawn around 1',
    );
    await weights.close();
    rmSync(a, { recursive: true, force: true });
  });
}

test('the same seed gives the same weights, another seed other weights', async () => {
  const shape = 'InternVL2_5-1B';
  const [a, b, c] = await Promise.all(
    [7, 7, 8].map((seed, i) =>
      createRandomCheckpoint({ shape, out: path.join(root, `seed-${i}`), seed, layers }),
    ),
  );
  const [ca, cb, cc] = await Promise.all([a, b, c].map((dir) => Checkpoint.open(dir)));
  for (const name of [ca.names()[0], 'mlp1.1.weight', ca.names().at(-1)!]) {
    assert.deepEqual(await ca.readBytes(name), await cb.readBytes(name), `${name} with the same seed`);
    assert.notDeepEqual(await ca.readBytes(name), await cc.readBytes(name), `${name} with another seed`);
  }
  await Promise.all([ca.close(), cb.close(), cc.close()]);
});

test('an unknown shape lists the known ones', async () => {
  await assert.rejects(
    createRandomCheckpoint({ shape: 'InternVL2_5-3B', out: path.join(root, 'x') }),
    /unknown shape "InternVL2_5-3B"; known shapes: InternVL2_5-1B, InternVL2_5-2B, InternVL2_5-4B, InternVL2_5-8B, InternVL2_5-26B, InternVL2_5-38B, InternVL2_5-78B/,
  );
});

/** Visible: at least one character that is neither white space nor a control/format/unassigned one. */
const VISIBLE = /[^\s\p{C}]/u;

for (const shape of ['InternVL2_5-1B', 'InternVL2_5-8B']) {
  test(`${shape}: whatever ids a random model generates decode to visible text`, async () => {
    const dir = await createRandomCheckpoint({
      shape,
      out: path.join(root, `vocab-${shape}`),
      weights: false,
    });
    const tokenizer = await loadTokenizer(dir);
    const config = await loadModelConfig(dir);
    const invisible: number[] = [];
    for (let id = 0; id < config.llm_config.vocab_size; id++) {
      if (tokenizer.isSpecial(id)) continue;
      if (!VISIBLE.test(tokenizer.decode([id], { skipSpecialTokens: true }))) invisible.push(id);
    }
    // Only the single-byte tokens of the 33 control characters, the space and DEL show nothing.
    const byte0 = tokenizer.tokenToId('\u0100')!;
    const controls = [...Array.from({ length: 33 }, (_, b) => byte0 + b), tokenizer.tokenToId('\u0121')!];
    assert.deepEqual(
      invisible.sort((a, b) => a - b),
      controls.sort((a, b) => a - b),
    );
    // A run of random ids (as a random model samples them) reads as text, skipped specials or not.
    let state = 12345;
    const ids = Array.from({ length: 64 }, () => {
      state = (Math.imul(state, 1103515245) + 12345) >>> 0;
      return state % config.llm_config.vocab_size;
    });
    const text = tokenizer.decode(ids, { skipSpecialTokens: true });
    assert.ok(text.trim().split(/\s+/).length >= 50, text);
    // Streamed as the server and the chat command stream it: each word id sends its word at once.
    const stream = new StreamDecoder(tokenizer, { skipSpecialTokens: true });
    const pieces = ids.map((id) => stream.push(id));
    assert.equal(pieces.join('') + stream.flush(), text);
    const words = ids.filter((id) => /^ [a-z]+$/.test(tokenizer.decode([id])));
    assert.ok(words.length >= 50);
    ids.forEach((id, i) => {
      if (words.includes(id)) assert.match(pieces[i], /^ [a-z]+$/, `id ${id}`);
    });
    // The specials sit at the real ids and decode to themselves unless skipped.
    const specials = [
      ...tokenizer.encode('<|im_start|><|im_end|><img></img><IMG_CONTEXT>', { addSpecialTokens: false }),
    ];
    assert.deepEqual(
      specials,
      shape === 'InternVL2_5-1B'
        ? [151644, 151645, 151665, 151666, 151667]
        : [92543, 92542, 92544, 92545, 92546],
    );
    assert.equal(tokenizer.decode(specials), '<|im_start|><|im_end|><img></img><IMG_CONTEXT>');
    assert.equal(tokenizer.decode(specials, { skipSpecialTokens: true }), '');
    // --no-weights writes no weights.
    assert.ok(!existsSync(path.join(dir, 'model.safetensors')));
  });
}

test('made-up words are distinct and grow by a syllable at a time', () => {
  const words = Array.from({ length: 6000 }, (_, n) => madeUpWord(n));
  assert.equal(new Set(words).size, words.length);
  assert.equal(words[0], ' ba');
  assert.equal(words[70], ' baba');
  assert.ok(words.every((w) => /^ [a-z]+$/.test(w)));
});

test('every published shape: the config has the published dims and about the published parameter count', async () => {
  // Parameters (billions): InternVL 2.5 from the model pages (within 1%); InternVL3 and InternVL3.5 from the
  // InternVL docs' quick_start tables, rounded there to 0.1 B (within 0.05 B). Dims: spec §1.3–1.4 and
  // src/tools/random-shapes.ts.
  const published: Record<string, { params: number; vit: number; llm: [number, number]; rounded?: true }> = {
    'InternVL2_5-1B': { params: 0.94, vit: 1024, llm: [896, 24] },
    'InternVL2_5-2B': { params: 2.21, vit: 1024, llm: [2048, 24] },
    'InternVL2_5-4B': { params: 3.71, vit: 1024, llm: [2048, 36] },
    'InternVL2_5-8B': { params: 8.08, vit: 1024, llm: [4096, 32] },
    'InternVL2_5-26B': { params: 25.5, vit: 3200, llm: [6144, 48] },
    'InternVL2_5-38B': { params: 38.4, vit: 3200, llm: [5120, 64] },
    'InternVL2_5-78B': { params: 78.4, vit: 3200, llm: [8192, 80] },
    'InternVL3-1B': { params: 0.9, vit: 1024, llm: [896, 24], rounded: true },
    'InternVL3-2B': { params: 2.1, vit: 1024, llm: [1536, 28], rounded: true },
    'InternVL3-8B': { params: 7.9, vit: 1024, llm: [3584, 28], rounded: true },
    'InternVL3_5-1B': { params: 1.1, vit: 1024, llm: [1024, 28], rounded: true },
    'InternVL3_5-2B': { params: 2.3, vit: 1024, llm: [2048, 28], rounded: true },
    'InternVL3_5-4B': { params: 4.7, vit: 1024, llm: [2560, 36], rounded: true },
    'InternVL3_5-8B': { params: 8.5, vit: 1024, llm: [4096, 36], rounded: true },
  };
  assert.deepEqual(Object.keys(RANDOM_SHAPES), Object.keys(published));
  for (const [shape, want] of Object.entries(published)) {
    const dir = await createRandomCheckpoint({
      shape,
      out: path.join(root, `config-${shape}`),
      weights: false,
    });
    const config = await loadModelConfig(dir);
    const vision = visionDimsFromConfig(config);
    const decoder = decoderDimsFromConfig(config);
    assert.equal(vision.vit.hiddenSize, want.vit, shape);
    assert.equal(vision.vit.numLayers, want.vit === 1024 ? 24 : 45, shape);
    assert.deepEqual([decoder.hiddenSize, decoder.numLayers], want.llm, shape);
    const arch = shape.startsWith('InternVL3_5')
      ? 'qwen3'
      : ['InternVL2_5-2B', 'InternVL2_5-8B', 'InternVL2_5-26B'].includes(shape)
        ? 'internlm2'
        : 'qwen2';
    assert.equal(decoder.arch, arch, shape);
    // Qwen3 (InternVL3.5): head_dim 128 from the config, 8 KV heads, a separate lm_head.
    if (arch === 'qwen3')
      assert.deepEqual([decoder.headDim, decoder.numKvHeads, decoder.tieWordEmbeddings], [128, 8, false]);
    const specs = [
      ...internVitTensorSpecs(vision.vit, vision.vit.numLayers),
      ...projectorTensorSpecs({ inputSize: 4 * vision.vit.hiddenSize, llmHiddenSize: decoder.hiddenSize }),
      ...decoderTensorSpecs(decoder),
    ];
    const params = specs.reduce((sum, s) => sum + s.shape.reduce((a, b) => a * b, 1), 0) / 1e9;
    const off = want.rounded
      ? Math.abs(params - want.params) < 0.05
      : Math.abs(params / want.params - 1) < 0.01;
    assert.ok(off, `${shape}: ${params.toFixed(3)}B parameters`);
  }
});

test('weights are written in shards with an index when they exceed the shard size, and load the same', async () => {
  // The same shape, seed and layers as the seed test's first checkpoint (seed-0), in 150 MB shards.
  const single = path.join(root, 'seed-0');
  const sharded = path.join(root, 'sharded');
  await createRandomCheckpoint({
    shape: 'InternVL2_5-1B',
    out: sharded,
    seed: 7,
    layers,
    maxShardBytes: 150e6,
  });
  const files = readdirSync(sharded).filter((f) => f.endsWith('.safetensors'));
  assert.ok(files.length >= 2, files.join(', '));
  assert.ok(files.every((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)));
  assert.ok(hasWeights(sharded) && hasWeights(single));
  const [a, b] = await Promise.all([Checkpoint.open(single), Checkpoint.open(sharded)]);
  assert.deepEqual(b.names().sort(), a.names().sort());
  for (const name of a.names()) assert.deepEqual(await b.readBytes(name), await a.readBytes(name), name);
  await Promise.all([a.close(), b.close()]);
  // Writing the same folder again without weights leaves no stale weight files behind.
  await createRandomCheckpoint({ shape: 'InternVL2_5-1B', out: sharded, layers, weights: false });
  assert.deepEqual(
    readdirSync(sharded).filter((f) => f.includes('safetensors')),
    [],
  );
  assert.ok(!hasWeights(sharded));
});
