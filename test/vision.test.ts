import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Tensor } from 'onnxruntime-node';
import { createSession } from '../src/engine/session.js';
import { buildVisionGraph, VISION_IO, VisionEncoder, visionDimsFromConfig } from '../src/engine/vision.js';
import { InternVLError } from '../src/errors.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadModelConfig } from '../src/models/model-config.js';
import { pixelShuffle } from '../src/models/projector.js';
import { bicubicResize } from '../src/models/torch-bicubic.js';
import { memoryWeights, type WeightSource } from '../src/models/weights.js';
import { GraphBuilder } from '../src/onnx/graph.js';
import { GOLDEN_DIR, GOLDEN_MODELS, goldenModelDir, maxAbsDiff } from './helpers.js';

const ATOL = 1e-4;
const QWEN2 = 'tiny-internvl2_5-qwen2';

function weightsOf(checkpoint: Checkpoint): WeightSource {
  return {
    has: (name) => checkpoint.has(name),
    shape: (name) => checkpoint.info(name).shape,
    float32: (name) => checkpoint.readFloat32(name),
  };
}

async function readTensors(file: string, names: string[]): Promise<Map<string, Float32Array>> {
  const checkpoint = await Checkpoint.open(file);
  try {
    const out = new Map<string, Float32Array>();
    for (const name of names) out.set(name, await checkpoint.readFloat32(name));
    return out;
  } finally {
    await checkpoint.close();
  }
}

async function pixelInput(caseName: string): Promise<{ pixels: Float32Array; tiles: number }> {
  const file = path.join(GOLDEN_DIR, 'cases', '_inputs', `${caseName}.safetensors`);
  const checkpoint = await Checkpoint.open(file);
  try {
    return {
      pixels: await checkpoint.readFloat32('pixel_values'),
      tiles: checkpoint.info('pixel_values').shape[0],
    };
  } finally {
    await checkpoint.close();
  }
}

function assertClose(actual: Float32Array, expected: Float32Array, what: string): void {
  const diff = maxAbsDiff(actual, expected);
  assert.ok(diff <= ATOL, `${what}: max abs diff ${diff} > ${ATOL}`);
}

async function loadModel(model: string) {
  const dir = goldenModelDir(model);
  const config = await loadModelConfig(dir);
  const checkpoint = await Checkpoint.open(dir);
  return { config, dims: visionDimsFromConfig(config), checkpoint, weights: weightsOf(checkpoint) };
}

for (const model of GOLDEN_MODELS) {
  describe(`vision golden: ${model}`, () => {
    let loaded: Awaited<ReturnType<typeof loadModel>>;
    let encoder: VisionEncoder;
    before(async () => {
      loaded = await loadModel(model);
      encoder = await VisionEncoder.create(loaded.dims, loaded.weights, { threads: 2 });
    });
    after(async () => {
      await encoder?.release();
      await loaded?.checkpoint.close();
    });

    for (const caseName of ['img1', 'img3', 'img2x1']) {
      test(`${caseName}: last hidden state, pixel shuffle and projector within ${ATOL}`, async () => {
        const { pixels, tiles } = await pixelInput(caseName);
        const expected = await readTensors(path.join(GOLDEN_DIR, 'cases', model, `${caseName}.safetensors`), [
          'vit_last_hidden_state',
          'pixel_shuffle',
          'projector',
        ]);
        assertClose(await encoder.hiddenState(pixels, tiles), expected.get('vit_last_hidden_state')!, 'vit');
        assertClose(
          await encoder.pixelShuffle(pixels, tiles),
          expected.get('pixel_shuffle')!,
          'pixel_shuffle',
        );
        const embeds = await encoder.encode(pixels, tiles);
        assert.equal(embeds.length, tiles * 256 * loaded.config.llm_config.hidden_size);
        assertClose(embeds, expected.get('projector')!, 'projector');
      });
    }
  });
}

describe(`vision golden: ${QWEN2} (debug, other sizes, select_layer)`, () => {
  let loaded: Awaited<ReturnType<typeof loadModel>>;
  before(async () => {
    loaded = await loadModel(QWEN2);
  });
  after(async () => {
    await loaded?.checkpoint.close();
  });

  test('vision_336: 24x24 grid with the bicubic-resized position embedding, 144 tokens', async () => {
    const encoder = await VisionEncoder.create(loaded.dims, loaded.weights, { threads: 2, imageSize: 336 });
    try {
      assert.equal(encoder.geometry.tokensPerTile, 144);
      const { pixels, tiles } = await pixelInput('vision_336');
      const expected = await readTensors(path.join(GOLDEN_DIR, 'cases', QWEN2, 'vision_336.safetensors'), [
        'vit_last_hidden_state',
        'pixel_shuffle',
        'projector',
      ]);
      assertClose(await encoder.hiddenState(pixels, tiles), expected.get('vit_last_hidden_state')!, 'vit');
      assertClose(await encoder.pixelShuffle(pixels, tiles), expected.get('pixel_shuffle')!, 'pixel_shuffle');
      assertClose(await encoder.encode(pixels, tiles), expected.get('projector')!, 'projector');
    } finally {
      await encoder.release();
    }
  });

  test('img3 in runs of 2 + 1 tiles (dynamic tile dimension) equals the golden projector', async () => {
    const encoder = await VisionEncoder.create(loaded.dims, loaded.weights, { threads: 2, tilesPerRun: 2 });
    try {
      const { pixels, tiles } = await pixelInput('img3');
      const expected = await readTensors(path.join(GOLDEN_DIR, 'cases', QWEN2, 'img3.safetensors'), [
        'projector',
      ]);
      assertClose(await encoder.encode(pixels, tiles), expected.get('projector')!, 'projector');
    } finally {
      await encoder.release();
    }
  });

  test('img1 stage by stage: embeddings, then each encoder layer', async () => {
    const graph = await buildVisionGraph(loaded.dims, loaded.weights, { debugOutputs: true });
    const session = await createSession(graph, { threads: 2 });
    try {
      const { pixels } = await pixelInput('img1');
      const layers = loaded.dims.vit.numLayers;
      const stages = [
        { output: VISION_IO.embeddings, golden: 'debug.vit_embeddings' },
        ...Array.from({ length: layers }, (_, i) => ({
          output: VISION_IO.layer(i),
          golden: `debug.vit_layer_${i}`,
        })),
      ];
      const expected = await readTensors(
        path.join(GOLDEN_DIR, 'cases', QWEN2, 'img1.safetensors'),
        stages.map((s) => s.golden),
      );
      const result = await session.run(
        { [VISION_IO.pixelValues]: new Tensor('float32', pixels, [1, 3, 448, 448]) },
        stages.map((s) => s.output),
      );
      // The first stage over tolerance is where the error starts.
      for (const stage of stages) {
        const diff = maxAbsDiff(result[stage.output].data as Float32Array, expected.get(stage.golden)!);
        assert.ok(
          diff <= ATOL,
          `${stage.golden} is the first stage that differs: max abs diff ${diff} > ${ATOL}`,
        );
      }
    } finally {
      await session.release();
    }
  });

  test('select_layer -2 feeds hidden_states[1] (layer 0 output) to the projector', async () => {
    const dims = { ...loaded.dims, selectLayer: -2 };
    const encoder = await VisionEncoder.create(dims, loaded.weights, { threads: 2 });
    try {
      assert.equal(encoder.geometry.layers, 1);
      const { pixels, tiles } = await pixelInput('img1');
      const expected = await readTensors(path.join(GOLDEN_DIR, 'cases', QWEN2, 'img1.safetensors'), [
        'debug.vit_layer_0',
      ]);
      assertClose(
        await encoder.hiddenState(pixels, tiles),
        expected.get('debug.vit_layer_0')!,
        'hidden_states[1]',
      );
    } finally {
      await encoder.release();
    }
  });

  test('bad pixel input is BAD_INPUT', async () => {
    const encoder = await VisionEncoder.create(loaded.dims, loaded.weights, { threads: 1 });
    try {
      const tile = 3 * 448 * 448;
      await assert.rejects(encoder.encode(new Float32Array(tile - 1), 1), (e: unknown) => {
        return e instanceof InternVLError && e.code === 'BAD_INPUT' && /need 602112/.test(e.message);
      });
      await assert.rejects(encoder.encode(new Float32Array(tile), 0), { code: 'BAD_INPUT' });
      await assert.rejects(encoder.encode(new Float32Array(tile), 2), { code: 'BAD_INPUT' });
    } finally {
      await encoder.release();
    }
    await assert.rejects(encoder.encode(new Float32Array(3 * 448 * 448), 1), { code: 'BAD_INPUT' });
  });

  test('a missing or wrong-shaped tensor is BAD_CHECKPOINT naming it', async () => {
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const name of loaded.checkpoint.names()) {
      if (!name.startsWith('vision_model.') && !name.startsWith('mlp1.')) continue;
      tensors.set(name, {
        shape: loaded.checkpoint.info(name).shape,
        data: await loaded.checkpoint.readFloat32(name),
      });
    }
    const qkv = 'vision_model.encoder.layers.1.attn.qkv.weight';
    const missing = new Map(tensors);
    missing.delete(qkv);
    await assert.rejects(buildVisionGraph(loaded.dims, memoryWeights(missing)), {
      name: 'InternVLError',
      code: 'BAD_CHECKPOINT',
      message: `${qkv}: missing from the checkpoint`,
    });
    const reshaped = new Map(tensors);
    reshaped.set(qkv, { shape: [64, 192], data: tensors.get(qkv)!.data });
    await assert.rejects(buildVisionGraph(loaded.dims, memoryWeights(reshaped)), {
      code: 'BAD_CHECKPOINT',
      message: `${qkv}: expected [192,64], got [64,192]`,
    });
    const fc = 'mlp1.3.weight';
    const badProjector = new Map(tensors);
    badProjector.set(fc, { shape: [64, 65], data: new Float32Array(64 * 65) });
    await assert.rejects(buildVisionGraph(loaded.dims, memoryWeights(badProjector)), {
      code: 'BAD_CHECKPOINT',
      message: `${fc}: expected [64,64], got [64,65]`,
    });
  });
});

describe('pixel shuffle', () => {
  // 4x4 grid, 1 channel, value = patch index (row-major).
  async function shuffled(version: 'v1' | 'v2'): Promise<number[]> {
    const g = new GraphBuilder('ps');
    const x = g.input('x', 'float32', ['n', 16, 1]);
    g.output(pixelShuffle(g, x, { grid: 4, channels: 1, ratio: 0.5, version }), 'y', 'float32', ['n', 4, 4]);
    const session = await createSession(g.graph, { threads: 1 });
    try {
      const input = Float32Array.from({ length: 16 }, (_, i) => i);
      const r = await session.run({ x: new Tensor('float32', input, [1, 16, 1]) });
      assert.deepEqual(r.y.dims, [1, 4, 4]);
      return Array.from(r.y.data as Float32Array);
    } finally {
      await session.release();
    }
  }

  test('v2: token (i, j) row-major holds patches (2i,2j), (2i,2j+1), (2i+1,2j), (2i+1,2j+1)', async () => {
    assert.deepEqual(await shuffled('v2'), [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]);
  });

  test('v1: the same tokens in column-major order', async () => {
    assert.deepEqual(await shuffled('v1'), [0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15]);
  });
});

describe('torch bicubic resize', () => {
  test('same size is an exact copy', () => {
    const src = Float32Array.from({ length: 2 * 5 * 5 }, (_, i) => Math.sin(i));
    assert.deepEqual(bicubicResize(src, 2, 5, 5, 5, 5), src);
  });

  test('keeps constants', () => {
    const flat = bicubicResize(new Float32Array(64).fill(0.75), 1, 8, 8, 6, 6);
    for (const v of flat) assert.ok(Math.abs(v - 0.75) < 1e-6);
  });

  test('halving samples at t = 0.5 with A = -0.75 weights and edge-clamped taps', () => {
    // Weights at t = 0.5: [-0.09375, 0.59375, 0.59375, -0.09375]; output o reads columns 2o-1 .. 2o+2.
    const squares = Float32Array.from({ length: 8 }, (_, i) => i * i);
    assert.deepEqual(Array.from(bicubicResize(squares, 1, 1, 8, 1, 4)), [0.21875, 6.125, 20.125, 43.53125]);
  });
});
