/**
 * Reverse-mode automatic differentiation over the graph IR: appends the backward pass of a scalar
 * loss to a forward graph, as ONNX ops in the same graph, with one output `grad.<name>` per chosen
 * input or initializer. One ORT run of the result computes the loss and exactly those gradients.
 */
import { InternVLError } from '../errors.js';
import { type Graph, GraphBuilder, type Initializer } from '../onnx/graph.js';
import { GRAD_RULES, type GradContext, NON_DIFFERENTIABLE_OPS } from './grad-rules.js';
import { inferShapes, intConstants, type Shape } from './shapes.js';

export const GRAD_PREFIX = 'grad.';

export interface BackwardOptions {
  /** The scalar (or one-element) value to differentiate; default: the graph's first output. */
  loss?: string;
  /** Graph inputs or initializers to return gradients for (float32). */
  wrt: readonly string[];
  /** Keep the forward graph's outputs (default true). */
  keepOutputs?: boolean;
}

/** A new graph: the forward graph plus its backward pass; outputs are the loss (and other forward outputs) then `grad.<name>` for each `wrt`. */
export function appendBackward(forward: Graph, options: BackwardOptions): Graph {
  const loss = options.loss ?? forward.outputs[0]?.name;
  if (!loss) throw new InternVLError('BAD_INPUT', `graph ${forward.name} has no output to differentiate`);
  const g = new GraphBuilder(forward.name, forward.opsets);
  // Reserve every existing value name so generated ones cannot collide.
  for (const v of forward.inputs) g.fresh(v.name);
  for (const i of forward.initializers) g.fresh(i.name);
  for (const n of forward.nodes) {
    g.fresh(n.name);
    for (const o of n.outputs) if (o) g.fresh(o);
  }
  g.graph.inputs.push(...forward.inputs);
  g.graph.initializers.push(...forward.initializers);
  g.graph.nodes.push(...forward.nodes);
  if (options.keepOutputs ?? true) g.graph.outputs.push(...forward.outputs);
  else g.graph.outputs.push(...forward.outputs.filter((o) => o.name === loss));

  const shapes = inferShapes(forward);
  const known = new Set<string>([
    ...forward.inputs.map((v) => v.name),
    ...forward.initializers.map((i) => i.name),
  ]);
  for (const w of options.wrt) {
    if (!known.has(w))
      throw new InternVLError('BAD_INPUT', `${w} is not an input or initializer of graph ${forward.name}`);
  }
  const lossShape = shapes.get(loss);
  if (!lossShape) throw new InternVLError('INTERNAL', `shape of the loss ${loss} is unknown`);
  if (lossShape.reduce((a, b) => a * b, 1) !== 1) {
    throw new InternVLError('BAD_INPUT', `loss ${loss} has shape [${lossShape}], expected one element`);
  }

  // Values that depend on a `wrt` value through differentiable ops.
  const needsGrad = new Set<string>(options.wrt);
  for (const n of forward.nodes) {
    if (NON_DIFFERENTIABLE_OPS.has(n.opType)) continue;
    if (n.inputs.some((i) => needsGrad.has(i))) for (const o of n.outputs) if (o) needsGrad.add(o);
  }

  const consts = intConstants(g.graph);
  const floatConsts = new Map<string, Initializer>();
  for (const i of forward.initializers) if (i.dtype === 'float32') floatConsts.set(i.name, i);

  g.scope = 'backward';
  const ctx: GradContext = {
    g,
    shape: (value) => {
      const s = shapes.get(value);
      if (!s) throw new InternVLError('INTERNAL', `autodiff: shape of ${value} is unknown`);
      return s;
    },
    ints: (value) => {
      const v = consts.get(value) ?? intConstants(g.graph).get(value);
      if (!v) throw new InternVLError('INTERNAL', `autodiff: ${value} is not an integer constant`);
      return v;
    },
    floats: (value) => {
      const v = floatConsts.get(value);
      if (!v) throw new InternVLError('INTERNAL', `autodiff: ${value} is not a float constant`);
      return Array.from(v.data as Float32Array);
    },
    zeros: (shape) => g.op('ConstantOfShape', [g.constI64(shape)]),
    unbroadcast: (grad, target, from) => unbroadcast(g, grad, target, from),
  };

  // Gradient contributions per value, summed when the value is first read.
  const pending = new Map<string, string[]>();
  const addGrad = (value: string, grad: string) => {
    const list = pending.get(value);
    if (list) list.push(grad);
    else pending.set(value, [grad]);
  };
  const gradOf = (value: string): string | undefined => {
    const list = pending.get(value);
    if (!list || list.length === 0) return undefined;
    if (list.length === 1) return list[0];
    const total = g.op('Sum', list);
    pending.set(value, [total]);
    return total;
  };

  const seed = g.constF32([1], lossShape);
  addGrad(loss, seed);

  for (let k = forward.nodes.length - 1; k >= 0; k--) {
    const node = forward.nodes[k];
    if (NON_DIFFERENTIABLE_OPS.has(node.opType)) continue;
    const needs = node.inputs.map((i) => i !== '' && needsGrad.has(i));
    if (!needs.some(Boolean)) continue;
    const outGradsMaybe = node.outputs.map((o) => (o ? gradOf(o) : undefined));
    if (outGradsMaybe.every((d) => d === undefined)) continue;
    const rule = GRAD_RULES[node.opType];
    if (!rule) {
      throw new InternVLError(
        'UNSUPPORTED',
        `autodiff: no gradient rule for ${node.opType} (node ${node.name})`,
      );
    }
    const outGrads = outGradsMaybe.map((d, i) => d ?? ctx.zeros(ctx.shape(node.outputs[i])));
    const inGrads = g.within(node.name, () => rule(ctx, node, outGrads, needs));
    node.inputs.forEach((input, i) => {
      const d = inGrads[i];
      if (needs[i] && d) addGrad(input, d);
    });
  }

  g.scope = '';
  for (const w of options.wrt) {
    const shape = ctx.shape(w);
    const d = gradOf(w) ?? ctx.zeros(shape);
    g.output(d, `${GRAD_PREFIX}${w}`, 'float32', shape);
  }
  return g.graph;
}

/** Sums `grad` (shape `from`) over the axes that broadcasting added to reach `from` from `target`. */
function unbroadcast(g: GraphBuilder, grad: string, target: Shape, from: Shape): string {
  if (target.length === from.length && target.every((d, i) => d === from[i])) return grad;
  const lead = from.length - target.length;
  if (lead < 0) throw new InternVLError('INTERNAL', `unbroadcast: [${from}] cannot come from [${target}]`);
  const axes: number[] = [];
  for (let i = 0; i < from.length; i++) {
    if (i < lead || (target[i - lead] === 1 && from[i] !== 1)) axes.push(i);
  }
  const summed =
    axes.length > 0 ? g.op('ReduceSum', [grad, g.constI64(axes)], { keepdims: { int: 1 } }) : grad;
  return g.reshape(summed, target);
}
