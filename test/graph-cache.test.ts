import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { cachedGraph, graphCacheKey, writeGraphDir } from '../src/engine/graph-cache.js';
import { createSession } from '../src/engine/session.js';
import { GraphBuilder } from '../src/onnx/graph.js';

function scaleGraph(factor: number) {
  const g = new GraphBuilder('scale');
  const x = g.input('x', 'float32', [4096]);
  const w = g.initializer('w', 'float32', [4096], new Float32Array(4096).fill(factor));
  g.output(g.mul(x, w), 'y', 'float32', [4096]);
  return g.graph;
}

test('a cached graph is built once, written atomically, and runs from disk', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-cache-'));
  try {
    const ckpt = path.join(dir, 'model.safetensors');
    writeFileSync(ckpt, 'weights v1');
    const key = graphCacheKey([ckpt], { dtype: 'fp32' });
    let builds = 0;
    const build = async () => {
      builds++;
      return scaleGraph(3);
    };
    const first = await cachedGraph(path.join(dir, 'cache'), key, build);
    const second = await cachedGraph(path.join(dir, 'cache'), key, build);
    assert.equal(builds, 1);
    assert.equal(first.hit, false);
    assert.equal(second.hit, true);
    assert.deepEqual(readdirSync(path.join(dir, 'cache')), [key]);
    const session = await createSession(second.modelPath, { threads: 1 });
    const y = await session.run({ x: new ort.Tensor('float32', new Float32Array(4096).fill(2), [4096]) });
    assert.equal((y.y.data as Float32Array)[4095], 6);
    await session.release();

    assert.notEqual(graphCacheKey([ckpt], { dtype: 'int8' }), key, 'options change the key');
    writeFileSync(ckpt, 'weights v2, longer');
    assert.notEqual(graphCacheKey([ckpt], { dtype: 'fp32' }), key, 'a changed checkpoint changes the key');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a failed build leaves no cache entry behind', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-cache-'));
  try {
    await assert.rejects(
      cachedGraph(dir, 'k', async () => {
        throw new Error('tensor missing');
      }),
      /tensor missing/,
    );
    assert.deepEqual(readdirSync(dir), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('when another process finishes the same entry first, its complete entry is kept, not replaced', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-cache-'));
  try {
    const cache = path.join(dir, 'cache');
    const { modelPath } = await cachedGraph(cache, 'k', async () => {
      // The other process renames its entry into place while this one is still building.
      writeGraphDir(scaleGraph(5), path.join(cache, 'k'), { keepExisting: true });
      return scaleGraph(3);
    });
    assert.deepEqual(readdirSync(cache), ['k'], 'no temporary folder is left');
    const session = await createSession(modelPath, { threads: 1 });
    const y = await session.run({ x: new ort.Tensor('float32', new Float32Array(4096).fill(2), [4096]) });
    assert.equal((y.y.data as Float32Array)[0], 10, 'the first complete entry stays');
    await session.release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
