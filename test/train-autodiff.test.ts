import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as ort from 'onnxruntime-node';
import { createSession } from '../src/engine/session.js';
import { GraphBuilder } from '../src/onnx/graph.js';
import { appendBackward, GRAD_PREFIX } from '../src/train/autodiff.js';
import { inferShapes } from '../src/train/shapes.js';

/** Deterministic pseudo-random numbers in [-1, 1). */
function randoms(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32) * 2 - 1;
  }
  return out;
}

interface FloatInput {
  name: string;
  shape: number[];
  /** Values; default random in [-1, 1). */
  data?: Float32Array;
}

/**
 * Builds y = body(inputs), L = Σ y·r (r random), differentiates L with appendBackward and compares the
 * gradient of every float input with central finite differences of L (accumulated in float64) at a few
 * elements per input.
 */
async function checkGradients(
  inputs: FloatInput[],
  body: (g: GraphBuilder, names: string[]) => string,
  options: { eps?: number; tol?: number; ints?: { name: string; shape: number[]; data: number[] }[] } = {},
): Promise<void> {
  const g = new GraphBuilder('fd');
  const names = inputs.map((i) => g.input(i.name, 'float32', i.shape));
  for (const i of options.ints ?? []) g.input(i.name, 'int64', i.shape);
  const y = body(g, names);
  const yShape = inferShapes(g.graph).get(y);
  assert.ok(yShape, 'output shape inferred');
  const r = g.input('r', 'float32', yShape);
  const loss = g.op('ReduceSum', [g.mul(y, r)], { keepdims: { int: 0 } });
  g.output(loss, 'loss', 'float32', []);
  g.output(y, 'y_out', 'float32', yShape);
  const graph = appendBackward(g.graph, { wrt: names });
  const session = await createSession(graph, { threads: 1 });
  const count = (s: number[]) => s.reduce((a, b) => a * b, 1);
  const values = inputs.map((i, k) => i.data ?? randoms(count(i.shape), 17 + 31 * k));
  const rData = randoms(count(yShape), 99);
  const feeds = (vals: Float32Array[]): Record<string, ort.Tensor> => {
    const f: Record<string, ort.Tensor> = { r: new ort.Tensor('float32', rData, yShape) };
    inputs.forEach((i, k) => {
      f[i.name] = new ort.Tensor('float32', vals[k], i.shape);
    });
    for (const i of options.ints ?? [])
      f[i.name] = new ort.Tensor('int64', BigInt64Array.from(i.data.map(BigInt)), i.shape);
    return f;
  };
  const lossOf = async (vals: Float32Array[]) => {
    const out = await session.run(feeds(vals), ['y_out']);
    const yv = out.y_out.data as Float32Array;
    let s = 0;
    for (let i = 0; i < yv.length; i++) s += yv[i] * rData[i];
    return s;
  };
  const analytic = await session.run(feeds(values));
  const eps = options.eps ?? 1e-2;
  const tol = options.tol ?? 2e-3;
  for (let k = 0; k < inputs.length; k++) {
    const grad = analytic[`${GRAD_PREFIX}${inputs[k].name}`].data as Float32Array;
    assert.equal(grad.length, values[k].length, `${inputs[k].name} gradient size`);
    const picks = new Set<number>([
      0,
      values[k].length - 1,
      Math.floor(values[k].length / 2),
      Math.floor(values[k].length / 3),
    ]);
    for (const idx of picks) {
      const plus = values.map((v) => v.slice());
      const minus = values.map((v) => v.slice());
      plus[k][idx] += eps;
      minus[k][idx] -= eps;
      const numeric = ((await lossOf(plus)) - (await lossOf(minus))) / (2 * eps);
      const err = Math.abs(numeric - grad[idx]);
      assert.ok(
        err <= tol * Math.max(1, Math.abs(numeric)),
        `${inputs[k].name}[${idx}]: analytic ${grad[idx]} vs numeric ${numeric}`,
      );
    }
  }
  await session.release();
}

describe('gradient rules vs finite differences', () => {
  it('broadcasting Add, Sub, Mul, Div', async () => {
    await checkGradients(
      [
        { name: 'a', shape: [2, 3, 4] },
        { name: 'b', shape: [3, 1] },
        { name: 'c', shape: [4] },
        { name: 'd', shape: [1, 3, 4], data: randoms(12, 5).map((v) => 1.5 + v) },
      ],
      (g, [a, b, c, d]) => g.div(g.mul(g.sub(g.add(a, b), c), g.add(a, c)), d),
    );
  });

  it('MatMul: batched with broadcasting, weight shared across a batch', async () => {
    await checkGradients(
      [
        { name: 'q', shape: [2, 3, 4, 5] },
        { name: 'k', shape: [2, 1, 5, 6] },
        { name: 'w', shape: [6, 3] },
      ],
      (g, [q, k, w]) => g.matMul(g.matMul(q, k), w),
    );
  });

  it('Reshape, Transpose, Unsqueeze, Squeeze, Expand, Concat, Split, Slice', async () => {
    await checkGradients(
      [
        { name: 'x', shape: [2, 6] },
        { name: 'y', shape: [3, 1] },
      ],
      (g, [x, y]) => {
        const t = g.transpose(g.reshape(x, [2, 3, 2]), [1, 2, 0]); // [3,2,2]
        const e = g.op('Expand', [g.op('Unsqueeze', [y, g.constI64([2])]), g.constI64([3, 2, 2])]);
        const c = g.concat([t, e], 1); // [3,4,2]
        const [p, q] = g.node('Split', [c, g.constI64([1, 3])], { axis: { int: 1 } }, { outputs: 2 });
        const s = g.slice(q, [1], [3], [1]); // [3,2,2]
        const sq = g.op('Squeeze', [p, g.constI64([1])]); // [3,2]
        return g.add(s, g.op('Unsqueeze', [sq, g.constI64([1])]));
      },
    );
  });

  it('Softmax, LogSoftmax, Exp, Log, Sqrt, Reciprocal, Pow, Neg', async () => {
    const positive = randoms(12, 3).map((v) => 1.2 + v);
    await checkGradients(
      [
        { name: 'x', shape: [3, 4] },
        { name: 'p', shape: [3, 4], data: positive },
      ],
      (g, [x, p]) => {
        const a = g.add(g.softmax(x, -1), g.op('LogSoftmax', [x], { axis: { int: 0 } }));
        const b = g.add(g.op('Log', [p]), g.op('Sqrt', [p]));
        const c = g.add(g.op('Reciprocal', [p]), g.op('Pow', [p, g.scalarF32(-0.5)]));
        return g.add(g.add(a, g.op('Exp', [g.op('Neg', [x])])), g.mul(b, c));
      },
    );
  });

  it('Erf (exact GELU), Sigmoid (SiLU), Tanh, Cast', async () => {
    await checkGradients([{ name: 'x', shape: [4, 5] }], (g, [x]) => {
      const gelu = g.mul(
        g.mul(x, g.scalarF32(0.5)),
        g.add(g.scalarF32(1), g.op('Erf', [g.mul(x, g.scalarF32(Math.SQRT1_2))])),
      );
      const silu = g.mul(x, g.sigmoid(x));
      return g.add(g.add(gelu, silu), g.cast(g.op('Tanh', [x]), 'float32'));
    });
  });

  it('ReduceMean and ReduceSum (keepdims both ways): LayerNorm and RMSNorm composed', async () => {
    await checkGradients(
      [
        { name: 'x', shape: [3, 8] },
        { name: 'w', shape: [8] },
      ],
      (g, [x, w]) => {
        const mean = g.op('ReduceMean', [x, g.constI64([-1])], { keepdims: { int: 1 } });
        const xc = g.sub(x, mean);
        const v = g.op('ReduceMean', [g.mul(xc, xc), g.constI64([-1])], { keepdims: { int: 1 } });
        const ln = g.mul(g.div(xc, g.op('Sqrt', [g.add(v, g.scalarF32(1e-5))])), w);
        const total = g.op('ReduceSum', [x, g.constI64([1])], { keepdims: { int: 0 } }); // [3]
        return g.add(ln, g.op('Unsqueeze', [total, g.constI64([1])]));
      },
    );
  });

  it('Gather with repeated indices, Where, ScatterND, GatherElements', async () => {
    await checkGradients(
      [
        { name: 'table', shape: [5, 3] },
        { name: 'img', shape: [2, 3] },
        { name: 'z', shape: [4, 3] },
      ],
      (g, [table, img, z]) => {
        const rows = g.gather(table, 'ids'); // [4,3]
        const scattered = g.op('ScatterND', [rows, 'pos', img]);
        const picked = g.op(
          'GatherElements',
          [g.op('LogSoftmax', [scattered], { axis: { int: 1 } }), 'pick'],
          {
            axis: { int: 1 },
          },
        ); // [4,1]
        const masked = g.op('Where', [g.op('Greater', [z, g.scalarF32(0)]), scattered, z]);
        return g.add(masked, picked);
      },
      {
        ints: [
          { name: 'ids', shape: [4], data: [1, 3, 1, 4] },
          { name: 'pos', shape: [2, 1], data: [2, 0] },
          { name: 'pick', shape: [4, 1], data: [0, 2, 1, 2] },
        ],
      },
    );
  });

  it('names the op that has no rule', async () => {
    const g = new GraphBuilder('norule');
    const x = g.input('x', 'float32', [3]);
    g.output(g.op('ReduceSum', [g.op('Abs', [x])], { keepdims: { int: 0 } }), 'loss', 'float32', []);
    assert.throws(() => appendBackward(g.graph, { wrt: [x] }), /no gradient rule for Abs/);
  });

  it('returns zeros for a parameter the loss does not depend on', async () => {
    const g = new GraphBuilder('unused');
    const x = g.input('x', 'float32', [3]);
    g.input('u', 'float32', [2]);
    g.output(g.op('ReduceSum', [g.mul(x, x)], { keepdims: { int: 0 } }), 'loss', 'float32', []);
    const session = await createSession(appendBackward(g.graph, { wrt: ['x', 'u'] }), { threads: 1 });
    const out = await session.run({
      x: new ort.Tensor('float32', Float32Array.from([1, 2, 3]), [3]),
      u: new ort.Tensor('float32', Float32Array.from([5, 6]), [2]),
    });
    assert.deepEqual(Array.from(out['grad.x'].data as Float32Array), [2, 4, 6]);
    assert.deepEqual(Array.from(out['grad.u'].data as Float32Array), [0, 0]);
    await session.release();
  });
});
