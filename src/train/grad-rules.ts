/**
 * Reverse-mode gradient rules, one per ONNX op, each written as ONNX ops appended to the graph.
 * A rule receives the gradients of the node's outputs and returns the gradients of its inputs
 * (undefined where an input needs none: integer indices, constants, frozen weights).
 */
import { InternVLError } from '../errors.js';
import { type GraphBuilder, intAttribute, intsAttribute, type OnnxNode } from '../onnx/graph.js';
import { normalizeAxis, type Shape, sliceBounds } from './shapes.js';

export interface GradContext {
  g: GraphBuilder;
  /** Static shape of a value (throws if unknown). */
  shape(value: string): Shape;
  /** Values of an int64/int32 constant. */
  ints(value: string): number[];
  /** Values of a float32 constant. */
  floats(value: string): number[];
  /** A float32 tensor of zeros of the given shape. */
  zeros(shape: Shape): string;
  /** `grad` (of shape `from`) summed over the axes broadcasting added, reshaped to `target`. */
  unbroadcast(grad: string, target: Shape, from: Shape): string;
}

/** `outGrads[i]` is the gradient of output i (zeros when it has none); `needs[i]` says whether input i wants one. */
export type GradRule = (
  ctx: GradContext,
  node: OnnxNode,
  outGrads: string[],
  needs: boolean[],
) => (string | undefined)[];

const shapeOfOutput = (ctx: GradContext, node: OnnxNode, i = 0) => ctx.shape(node.outputs[i]);
const shapeOfInput = (ctx: GradContext, node: OnnxNode, i: number) => ctx.shape(node.inputs[i]);

/** Gradient of a broadcasting binary op whose local derivatives are `da`, `db` (already times dy). */
function binary(
  ctx: GradContext,
  node: OnnxNode,
  needs: boolean[],
  da: () => string,
  db: () => string,
): (string | undefined)[] {
  const sy = shapeOfOutput(ctx, node);
  return [
    needs[0] ? ctx.unbroadcast(da(), shapeOfInput(ctx, node, 0), sy) : undefined,
    needs[1] ? ctx.unbroadcast(db(), shapeOfInput(ctx, node, 1), sy) : undefined,
  ];
}

/** Swaps the last two axes. */
function transposeLast2(g: GraphBuilder, x: string, rank: number): string {
  const perm = Array.from({ length: rank }, (_, i) => i);
  perm[rank - 2] = rank - 1;
  perm[rank - 1] = rank - 2;
  return g.transpose(x, perm);
}

function reshapeTo(g: GraphBuilder, x: string, shape: Shape): string {
  return g.reshape(x, shape);
}

export const GRAD_RULES: Record<string, GradRule> = {
  Identity: (_ctx, _n, [dy]) => [dy],
  Add: (ctx, n, [dy], needs) =>
    binary(
      ctx,
      n,
      needs,
      () => dy,
      () => dy,
    ),
  Sub: (ctx, n, [dy], needs) =>
    binary(
      ctx,
      n,
      needs,
      () => dy,
      () => ctx.g.op('Neg', [dy]),
    ),
  Mul: (ctx, n, [dy], needs) => {
    const [a, b] = n.inputs;
    return binary(
      ctx,
      n,
      needs,
      () => ctx.g.mul(dy, b),
      () => ctx.g.mul(dy, a),
    );
  },
  Div: (ctx, n, [dy], needs) => {
    const [, b] = n.inputs;
    const y = n.outputs[0];
    return binary(
      ctx,
      n,
      needs,
      () => ctx.g.div(dy, b),
      () => ctx.g.op('Neg', [ctx.g.div(ctx.g.mul(dy, y), b)]),
    );
  },
  Pow: (ctx, n, [dy], needs) => {
    if (needs[1]) throw new InternVLError('UNSUPPORTED', `${n.name}: Pow gradient needs a constant exponent`);
    const c = ctx.floats(n.inputs[1]);
    if (c.length !== 1) throw new InternVLError('UNSUPPORTED', `${n.name}: Pow exponent must be a scalar`);
    const g = ctx.g;
    const local = g.mul(g.scalarF32(c[0]), g.op('Pow', [n.inputs[0], g.scalarF32(c[0] - 1)]));
    return [ctx.unbroadcast(g.mul(dy, local), shapeOfInput(ctx, n, 0), shapeOfOutput(ctx, n)), undefined];
  },
  Neg: (ctx, _n, [dy]) => [ctx.g.op('Neg', [dy])],
  Exp: (ctx, n, [dy]) => [ctx.g.mul(dy, n.outputs[0])],
  Log: (ctx, n, [dy]) => [ctx.g.div(dy, n.inputs[0])],
  Sqrt: (ctx, n, [dy]) => [ctx.g.div(ctx.g.mul(dy, ctx.g.scalarF32(0.5)), n.outputs[0])],
  Reciprocal: (ctx, n, [dy]) => {
    const y = n.outputs[0];
    return [ctx.g.op('Neg', [ctx.g.mul(dy, ctx.g.mul(y, y))])];
  },
  Erf: (ctx, n, [dy]) => {
    const g = ctx.g;
    const x = n.inputs[0];
    const gauss = g.op('Exp', [g.op('Neg', [g.mul(x, x)])]);
    return [g.mul(dy, g.mul(gauss, g.scalarF32(2 / Math.sqrt(Math.PI))))];
  },
  Sigmoid: (ctx, n, [dy]) => {
    const g = ctx.g;
    const y = n.outputs[0];
    return [g.mul(dy, g.mul(y, g.sub(g.scalarF32(1), y)))];
  },
  Tanh: (ctx, n, [dy]) => {
    const g = ctx.g;
    const y = n.outputs[0];
    return [g.mul(dy, g.sub(g.scalarF32(1), g.mul(y, y)))];
  },
  Cast: (ctx, _n, [dy]) => [ctx.g.cast(dy, 'float32')],
  Softmax: (ctx, n, [dy]) => {
    const g = ctx.g;
    const y = n.outputs[0];
    const axis = intAttribute(n, 'axis', -1);
    const dot = g.op('ReduceSum', [g.mul(dy, y), g.constI64([axis])], { keepdims: { int: 1 } });
    return [g.mul(y, g.sub(dy, dot))];
  },
  LogSoftmax: (ctx, n, [dy]) => {
    const g = ctx.g;
    const y = n.outputs[0];
    const axis = intAttribute(n, 'axis', -1);
    const total = g.op('ReduceSum', [dy, g.constI64([axis])], { keepdims: { int: 1 } });
    return [g.sub(dy, g.mul(g.op('Exp', [y]), total))];
  },
  MatMul: (ctx, n, [dy], needs) => {
    const g = ctx.g;
    const [a, b] = n.inputs;
    const sa = ctx.shape(a);
    const sb = ctx.shape(b);
    const sy = shapeOfOutput(ctx, n);
    let da: string | undefined;
    let db: string | undefined;
    if (needs[0]) {
      const full = g.matMul(dy, transposeLast2(g, b, sb.length));
      const fullShape = [...sy.slice(0, -2), sa[sa.length - 2], sa[sa.length - 1]];
      da = ctx.unbroadcast(full, sa, fullShape);
    }
    if (needs[1]) {
      const K = sa[sa.length - 1];
      const N = sb[sb.length - 1];
      if (sb.length === 2 && sa.length > 2) {
        // A weight shared across a batch: fold the batch into the rows, one [K, rows] x [rows, N] product.
        const a2 = reshapeTo(g, a, [-1, K]);
        const dy2 = reshapeTo(g, dy, [-1, N]);
        db = g.matMul(g.transpose(a2, [1, 0]), dy2);
      } else {
        const full = g.matMul(transposeLast2(g, a, sa.length), dy);
        const fullShape = [...sy.slice(0, -2), K, N];
        db = ctx.unbroadcast(full, sb, fullShape);
      }
    }
    return [da, db];
  },
  Transpose: (ctx, n, [dy]) => {
    const rank = ctx.shape(n.inputs[0]).length;
    const perm = intsAttribute(n, 'perm') ?? Array.from({ length: rank }, (_, i) => rank - 1 - i);
    const inverse = new Array<number>(rank);
    perm.forEach((p, i) => {
      inverse[p] = i;
    });
    return [ctx.g.transpose(dy, inverse)];
  },
  Reshape: (ctx, n, [dy]) => [reshapeTo(ctx.g, dy, shapeOfInput(ctx, n, 0)), undefined],
  Unsqueeze: (ctx, n, [dy]) => [reshapeTo(ctx.g, dy, shapeOfInput(ctx, n, 0)), undefined],
  Squeeze: (ctx, n, [dy]) => [reshapeTo(ctx.g, dy, shapeOfInput(ctx, n, 0)), undefined],
  Expand: (ctx, n, [dy]) => [ctx.unbroadcast(dy, shapeOfInput(ctx, n, 0), shapeOfOutput(ctx, n)), undefined],
  Gather: (ctx, n, [dy]) => {
    const sx = shapeOfInput(ctx, n, 0);
    if (normalizeAxis(intAttribute(n, 'axis', 0), sx.length) !== 0) {
      throw new InternVLError('UNSUPPORTED', `${n.name}: Gather gradient is implemented for axis 0 only`);
    }
    const g = ctx.g;
    const indices = g.op('Unsqueeze', [n.inputs[1], g.constI64([-1])]);
    // Repeated indices (a token used twice) must add up, hence reduction 'add'.
    return [g.op('ScatterND', [ctx.zeros(sx), indices, dy], { reduction: 'add' }), undefined];
  },
  GatherElements: (ctx, n, [dy]) => {
    const axis = intAttribute(n, 'axis', 0);
    return [
      ctx.g.op('ScatterElements', [ctx.zeros(shapeOfInput(ctx, n, 0)), n.inputs[1], dy], {
        axis: { int: axis },
        reduction: 'add',
      }),
      undefined,
    ];
  },
  GatherND: (ctx, n, [dy]) => [
    ctx.g.op('ScatterND', [ctx.zeros(shapeOfInput(ctx, n, 0)), n.inputs[1], dy], { reduction: 'add' }),
    undefined,
  ],
  ScatterND: (ctx, n, [dy], needs) => {
    if (n.attributes.reduction !== undefined && n.attributes.reduction !== 'none') {
      throw new InternVLError('UNSUPPORTED', `${n.name}: ScatterND gradient needs reduction 'none'`);
    }
    const g = ctx.g;
    const [, indices, updates] = n.inputs;
    return [
      needs[0] ? g.op('ScatterND', [dy, indices, ctx.zeros(ctx.shape(updates))]) : undefined,
      undefined,
      needs[2] ? g.op('GatherND', [dy, indices]) : undefined,
    ];
  },
  Slice: (ctx, n, [dy]) => {
    const sx = shapeOfInput(ctx, n, 0);
    const starts = ctx.ints(n.inputs[1]);
    const ends = ctx.ints(n.inputs[2]);
    const axes = n.inputs[3] ? ctx.ints(n.inputs[3]) : starts.map((_, i) => i);
    if (n.inputs[4] && ctx.ints(n.inputs[4]).some((s) => s !== 1)) {
      throw new InternVLError('UNSUPPORTED', `${n.name}: Slice gradient needs steps of 1`);
    }
    const pads = new Array<number>(2 * sx.length).fill(0);
    axes.forEach((a, i) => {
      const axis = normalizeAxis(a, sx.length);
      const [s, e] = sliceBounds(starts[i], ends[i], sx[axis]);
      pads[axis] = s;
      pads[sx.length + axis] = sx[axis] - e;
    });
    return [ctx.g.op('Pad', [dy, ctx.g.constI64(pads)]), undefined, undefined, undefined, undefined];
  },
  Concat: (ctx, n, [dy], needs) => {
    const rank = shapeOfOutput(ctx, n).length;
    const axis = normalizeAxis(intAttribute(n, 'axis', 0), rank);
    const sizes = n.inputs.map((i) => ctx.shape(i)[axis]);
    const parts = ctx.g.node(
      'Split',
      [dy, ctx.g.constI64(sizes)],
      { axis: { int: axis } },
      { outputs: sizes.length },
    );
    return parts.map((p, i) => (needs[i] ? p : undefined));
  },
  Split: (ctx, n, outGrads) => {
    const rank = shapeOfInput(ctx, n, 0).length;
    const axis = normalizeAxis(intAttribute(n, 'axis', 0), rank);
    return [ctx.g.concat(outGrads, axis), undefined];
  },
  ReduceSum: (ctx, n, [dy]) => [reduceGrad(ctx, n, dy, false), undefined],
  ReduceMean: (ctx, n, [dy]) => [reduceGrad(ctx, n, dy, true), undefined],
  Where: (ctx, n, [dy], needs) => {
    const g = ctx.g;
    const cond = n.inputs[0];
    const sy = shapeOfOutput(ctx, n);
    const zero = g.scalarF32(0);
    return [
      undefined,
      needs[1] ? ctx.unbroadcast(g.op('Where', [cond, dy, zero]), shapeOfInput(ctx, n, 1), sy) : undefined,
      needs[2] ? ctx.unbroadcast(g.op('Where', [cond, zero, dy]), shapeOfInput(ctx, n, 2), sy) : undefined,
    ];
  },
  Sum: (ctx, n, [dy], needs) => {
    const sy = shapeOfOutput(ctx, n);
    return n.inputs.map((x, i) => (needs[i] ? ctx.unbroadcast(dy, ctx.shape(x), sy) : undefined));
  },
};

function reduceGrad(ctx: GradContext, n: OnnxNode, dy: string, mean: boolean): string {
  const g = ctx.g;
  const sx = shapeOfInput(ctx, n, 0);
  const axes = n.inputs[1]
    ? ctx.ints(n.inputs[1]).map((a) => normalizeAxis(a, sx.length))
    : sx.map((_, i) => i);
  const kept = sx.map((d, i) => (axes.includes(i) ? 1 : d));
  let grad = g.op('Expand', [reshapeTo(g, dy, kept), g.constI64(sx)]);
  if (mean) {
    const count = axes.reduce((a, i) => a * sx[i], 1);
    grad = g.mul(grad, g.scalarF32(1 / count));
  }
  return grad;
}

/** Ops whose outputs carry no gradient (integer or boolean results). */
export const NON_DIFFERENTIABLE_OPS = new Set([
  'Shape',
  'Size',
  'Equal',
  'Less',
  'LessOrEqual',
  'Greater',
  'GreaterOrEqual',
  'And',
  'Or',
  'Not',
  'ConstantOfShape',
  'ArgMax',
  'ArgMin',
  'NonZero',
  'Range',
]);
