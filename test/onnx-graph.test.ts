import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { GraphBuilder, MS_DOMAIN } from '../src/onnx/graph.js';
import { modelToBytes, serializeModel } from '../src/onnx/serialize.js';

function linearGraph() {
  const g = new GraphBuilder('linear');
  const x = g.input('x', 'float32', ['batch', 3]);
  const w = g.initializer('w', 'float32', [3, 2], Float32Array.from([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]));
  const b = g.initializer('b', 'float32', [2], Float32Array.from([0.5, -0.5]));
  const y = g.add(g.matMul(x, w), b);
  // Negative int attribute and a com.microsoft op.
  const s = g.softmax(y, -1);
  const gelu = g.op('Gelu', [y], {}, MS_DOMAIN);
  g.output(s, 'softmax', 'float32', ['batch', 2]);
  g.output(gelu, 'gelu', 'float32', ['batch', 2]);
  g.output(g.reshape(y, [-1]), 'flat', 'float32', ['n']);
  return g.graph;
}

const erfGelu = (v: number) => {
  // erf by its Maclaurin series, accurate for the small |v| used here.
  let sum = 0;
  let term = v / Math.SQRT2;
  const z = v / Math.SQRT2;
  for (let n = 0; n < 60; n++) {
    sum += term / (2 * n + 1);
    term *= (-z * z) / (n + 1);
  }
  return 0.5 * v * (1 + (2 / Math.sqrt(Math.PI)) * sum);
};

function check(results: ort.InferenceSession.ReturnType) {
  const x = [
    [1, 0, -1],
    [0.5, 0.25, 2],
  ];
  const w = [
    [0.1, 0.2],
    [0.3, 0.4],
    [0.5, 0.6],
  ];
  const y = x.map((row) => [0, 1].map((j) => row.reduce((a, v, k) => a + v * w[k][j], 0) + [0.5, -0.5][j]));
  const flat = results.flat.data as Float32Array;
  for (const [i, v] of y.flat().entries()) assert.ok(Math.abs(flat[i] - v) < 1e-6);
  const sm = results.softmax.data as Float32Array;
  for (let r = 0; r < 2; r++) {
    const e = y[r].map(Math.exp);
    const z = e[0] + e[1];
    assert.ok(Math.abs(sm[r * 2] - e[0] / z) < 1e-6);
  }
  const gelu = results.gelu.data as Float32Array;
  for (const [i, v] of y.flat().entries())
    assert.ok(Math.abs(gelu[i] - erfGelu(v)) < 1e-4 * Math.max(1, Math.abs(v)));
}

const feeds = () => ({ x: new ort.Tensor('float32', Float32Array.from([1, 0, -1, 0.5, 0.25, 2]), [2, 3]) });

test('a built graph serialises to an ONNX model that onnxruntime runs correctly', async () => {
  const session = await ort.InferenceSession.create(modelToBytes(linearGraph()));
  check(await session.run(feeds()));
  await session.release();
});

test('initializers can go to an external data file at aligned offsets', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-onnx-'));
  try {
    const { modelChunks, external, externalBytes } = serializeModel(linearGraph(), {
      externalData: { location: 'weights.bin', minBytes: 1 },
    });
    assert.equal(external.length, 2); // w and b; the int64 Reshape shape stays inline
    for (const piece of external) assert.equal(piece.offset % 65536, 0);
    const weights = new Uint8Array(externalBytes);
    for (const piece of external) weights.set(piece.data, piece.offset);
    writeFileSync(path.join(dir, 'weights.bin'), weights);
    writeFileSync(path.join(dir, 'model.onnx'), Buffer.concat(modelChunks));
    const session = await ort.InferenceSession.create(path.join(dir, 'model.onnx'));
    check(await session.run(feeds()));
    await session.release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the builder rejects a weight whose data does not match its dims', () => {
  const g = new GraphBuilder('bad');
  assert.throws(
    () => g.initializer('w', 'float32', [2, 2], new Float32Array(3)),
    /initializer w: 3 elements/,
  );
});
