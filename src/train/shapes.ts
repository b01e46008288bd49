/**
 * Static shape inference over the graph IR for the ops training graphs use. Training graphs are built
 * for one concrete batch shape, so every dimension is a number; the autodiff pass reads these shapes
 * to undo broadcasting and to rebuild the shapes of reshaped or sliced values.
 */
import { InternVLError } from '../errors.js';
import { type Graph, type Initializer, intAttribute, intsAttribute, type OnnxNode } from '../onnx/graph.js';

export type Shape = number[];

export function normalizeAxis(axis: number, rank: number): number {
  return axis < 0 ? axis + rank : axis;
}

/** Numpy-style broadcast of two or more shapes. */
export function broadcastShapes(...shapes: Shape[]): Shape {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out: Shape = [];
  for (let i = 0; i < rank; i++) {
    let d = 1;
    for (const s of shapes) {
      const k = s.length - rank + i;
      const sd = k < 0 ? 1 : s[k];
      if (sd === 1) continue;
      if (d !== 1 && d !== sd) {
        throw new InternVLError(
          'INTERNAL',
          `shapes [${shapes.map((x) => x.join(',')).join('] [')}] do not broadcast`,
        );
      }
      d = sd;
    }
    out.push(d);
  }
  return out;
}

/** Values of the int64 initializers (shape and index constants). */
export function intConstants(graph: Graph): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const init of graph.initializers) {
    if (init.dtype === 'int64') out.set(init.name, Array.from(init.data as BigInt64Array, Number));
    else if (init.dtype === 'int32') out.set(init.name, Array.from(init.data as Int32Array));
  }
  return out;
}

/**
 * Shapes of every value the graph computes, from its inputs' and initializers' dims.
 * Values produced by ops it does not know are left out (the autodiff pass names them if it needs one).
 */
export function inferShapes(graph: Graph, extra: Map<string, Shape> = new Map()): Map<string, Shape> {
  const shapes = new Map<string, Shape>(extra);
  for (const v of graph.inputs) {
    if (v.shape.every((d) => typeof d === 'number')) shapes.set(v.name, v.shape as number[]);
  }
  for (const init of graph.initializers as Initializer[]) shapes.set(init.name, init.dims);
  const consts = intConstants(graph);
  for (const node of graph.nodes) inferNode(node, shapes, consts);
  return shapes;
}

function constOf(consts: Map<string, number[]>, name: string, node: OnnxNode): number[] {
  const v = consts.get(name);
  if (!v) throw new InternVLError('INTERNAL', `${node.name}: ${name} must be an int64 constant`);
  return v;
}

export function inferNode(node: OnnxNode, shapes: Map<string, Shape>, consts: Map<string, number[]>): void {
  const ins = node.inputs.map((n) => (n === '' ? undefined : shapes.get(n)));
  if (node.inputs.some((n, i) => n !== '' && ins[i] === undefined)) return;
  const x = ins[0] as Shape;
  const set = (i: number, s: Shape) => shapes.set(node.outputs[i], s);
  switch (node.opType) {
    case 'Add':
    case 'Sub':
    case 'Mul':
    case 'Div':
    case 'Pow':
    case 'Equal':
    case 'Less':
    case 'LessOrEqual':
    case 'Greater':
    case 'And':
    case 'Or':
    case 'Where':
    case 'Sum':
    case 'Max':
    case 'Min':
      set(0, broadcastShapes(...(ins as Shape[])));
      return;
    case 'Identity':
    case 'Neg':
    case 'Exp':
    case 'Log':
    case 'Sqrt':
    case 'Reciprocal':
    case 'Erf':
    case 'Sigmoid':
    case 'Tanh':
    case 'Relu':
    case 'Cast':
    case 'Not':
    case 'Softmax':
    case 'LogSoftmax':
    case 'Abs':
      set(0, [...x]);
      return;
    case 'MatMul': {
      const a = x;
      const b = ins[1] as Shape;
      if (a.length < 2 || b.length < 2)
        throw new InternVLError('INTERNAL', `${node.name}: MatMul needs rank >= 2`);
      const batch = broadcastShapes(a.slice(0, -2), b.slice(0, -2));
      set(0, [...batch, a[a.length - 2], b[b.length - 1]]);
      return;
    }
    case 'Transpose': {
      const perm = intsAttribute(node, 'perm') ?? x.map((_, i) => x.length - 1 - i);
      set(
        0,
        perm.map((p) => x[p]),
      );
      return;
    }
    case 'Reshape': {
      const target = constOf(consts, node.inputs[1], node);
      const total = x.reduce((a, b) => a * b, 1);
      const out = target.map((d, i) => (d === 0 ? x[i] : d));
      const known = out.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
      set(
        0,
        out.map((d) => (d === -1 ? total / known : d)),
      );
      return;
    }
    case 'Unsqueeze': {
      const axes = constOf(consts, node.inputs[1], node);
      const rank = x.length + axes.length;
      const norm = axes.map((a) => normalizeAxis(a, rank));
      const out: Shape = [];
      let k = 0;
      for (let i = 0; i < rank; i++) out.push(norm.includes(i) ? 1 : x[k++]);
      set(0, out);
      return;
    }
    case 'Squeeze': {
      const axes = node.inputs[1]
        ? constOf(consts, node.inputs[1], node).map((a) => normalizeAxis(a, x.length))
        : undefined;
      set(
        0,
        x.filter((d, i) => (axes ? !axes.includes(i) : d !== 1)),
      );
      return;
    }
    case 'Gather': {
      const axis = normalizeAxis(intAttribute(node, 'axis', 0), x.length);
      const idx = ins[1] as Shape;
      set(0, [...x.slice(0, axis), ...idx, ...x.slice(axis + 1)]);
      return;
    }
    case 'GatherElements':
      set(0, [...(ins[1] as Shape)]);
      return;
    case 'GatherND': {
      const idx = ins[1] as Shape;
      const k = idx[idx.length - 1];
      set(0, [...idx.slice(0, -1), ...x.slice(k)]);
      return;
    }
    case 'ScatterND':
    case 'ScatterElements':
      set(0, [...x]);
      return;
    case 'Slice': {
      const starts = constOf(consts, node.inputs[1], node);
      const ends = constOf(consts, node.inputs[2], node);
      const axes = node.inputs[3] ? constOf(consts, node.inputs[3], node) : starts.map((_, i) => i);
      const steps = node.inputs[4] ? constOf(consts, node.inputs[4], node) : starts.map(() => 1);
      const out = [...x];
      axes.forEach((a, i) => {
        const axis = normalizeAxis(a, x.length);
        const [s, e] = sliceBounds(starts[i], ends[i], x[axis]);
        if (steps[i] !== 1) throw new InternVLError('INTERNAL', `${node.name}: Slice steps other than 1`);
        out[axis] = Math.max(0, e - s);
      });
      set(0, out);
      return;
    }
    case 'Concat': {
      const axis = normalizeAxis(intAttribute(node, 'axis', 0), x.length);
      const out = [...x];
      out[axis] = (ins as Shape[]).reduce((a, s) => a + s[axis], 0);
      set(0, out);
      return;
    }
    case 'Split': {
      const axis = normalizeAxis(intAttribute(node, 'axis', 0), x.length);
      const sizes = node.inputs[1]
        ? constOf(consts, node.inputs[1], node)
        : node.outputs.map(() => x[axis] / node.outputs.length);
      sizes.forEach((s, i) => {
        const out = [...x];
        out[axis] = s;
        set(i, out);
      });
      return;
    }
    case 'ReduceSum':
    case 'ReduceMean':
    case 'ReduceMax': {
      const keep = intAttribute(node, 'keepdims', 1) === 1;
      const axes = node.inputs[1]
        ? constOf(consts, node.inputs[1], node).map((a) => normalizeAxis(a, x.length))
        : x.map((_, i) => i);
      const out: Shape = [];
      x.forEach((d, i) => {
        if (!axes.includes(i)) out.push(d);
        else if (keep) out.push(1);
      });
      set(0, out);
      return;
    }
    case 'Expand':
      set(0, broadcastShapes(x, constOf(consts, node.inputs[1], node)));
      return;
    case 'ConstantOfShape':
      set(0, constOf(consts, node.inputs[0], node));
      return;
    case 'Pad': {
      const pads = constOf(consts, node.inputs[1], node);
      const axes = node.inputs[3] ? constOf(consts, node.inputs[3], node) : x.map((_, i) => i);
      const out = [...x];
      axes.forEach((a, i) => {
        const axis = normalizeAxis(a, x.length);
        out[axis] += pads[i] + pads[i + axes.length];
      });
      set(0, out);
      return;
    }
    case 'Shape':
      set(0, [x.length]);
      return;
    default:
      return;
  }
}

/** Clamped [start, end) of a step-1 Slice along a dimension of size `dim`. */
export function sliceBounds(start: number, end: number, dim: number): [number, number] {
  const clamp = (v: number) => Math.min(dim, Math.max(0, v < 0 ? v + dim : v));
  return [clamp(start), clamp(end)];
}
