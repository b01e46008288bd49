/**
 * Linear layers of the decoder graphs: one torch Linear (fp32 MatMul, int8 DynamicQuantizeMatMul or int4
 * MatMulNBits), and several over the same input run as one int4 kernel. A weight comes as float32 or, from
 * a pre-quantised (AWQ, GPTQ) checkpoint, as MatMulNBits blocks that int4 graphs with the same block size take
 * over unchanged; other graphs get its exact fp32 values.
 */
import { InternVLError } from '../errors.js';
import type { GraphBuilder } from '../onnx/graph.js';
import {
  DEFAULT_ACCURACY_LEVEL,
  DEFAULT_BLOCK_SIZE,
  dequantizeInt4,
  type Int4Blocks,
  int4MatMul,
  type LinearQuant,
  quantizedMatMul,
  stackInt4Columns,
} from '../onnx/quantize.js';
import { transposeMatrix } from './weights.js';

/** The graph the linears are added to and the storage of their weights. */
export interface LinearContext {
  g: GraphBuilder;
  options: { linearQuant?: LinearQuant };
}

/** A torch Linear weight [out, in]: float32, or 4-bit blocks read pre-packed from the checkpoint. */
export type LinearWeight = Float32Array | Int4Blocks;

/** The weight's float32 values (blocks dequantised exactly). */
export function linearWeightFloat32(weight: LinearWeight): Float32Array {
  return weight instanceof Float32Array ? weight : dequantizeInt4(weight);
}

/** Blocks usable as they are by an int4 graph with `quant`. */
function reusableBlocks(weight: LinearWeight, quant: LinearQuant | undefined): weight is Int4Blocks {
  return (
    !(weight instanceof Float32Array) &&
    quant?.dtype === 'int4' &&
    weight.blockSize === (quant.blockSize ?? DEFAULT_BLOCK_SIZE)
  );
}

/**
 * y = x·Wᵀ (+ b) for a torch Linear weight W [out, in]: in fp32 the initializer is stored as [in, out];
 * int8/int4 go through quantizedMatMul, or int4MatMul for blocks the graph can take over.
 */
export function linear(
  ctx: LinearContext,
  x: string,
  name: string,
  weight: LinearWeight,
  outFeatures: number,
  inFeatures: number,
  bias?: { name: string; data: Float32Array },
  quant: LinearQuant | undefined = ctx.options.linearQuant,
): string {
  const { g } = ctx;
  if (!(weight instanceof Float32Array) && (weight.n !== outFeatures || weight.k !== inFeatures)) {
    throw new InternVLError(
      'INTERNAL',
      `${name}: packed weight is [${weight.n}, ${weight.k}], expected [${outFeatures}, ${inFeatures}]`,
    );
  }
  let y: string;
  if (reusableBlocks(weight, quant)) {
    y = int4MatMul(g, x, name, weight, quant?.accuracyLevel ?? DEFAULT_ACCURACY_LEVEL);
  } else if (quant && quant.dtype !== 'fp32') {
    y = quantizedMatMul(g, x, name, linearWeightFloat32(weight), outFeatures, inFeatures, quant);
  } else {
    const data = transposeMatrix(linearWeightFloat32(weight), outFeatures, inFeatures);
    y = g.matMul(x, g.initializer(name, 'float32', [inFeatures, outFeatures], data));
  }
  return bias ? g.add(y, g.initializer(bias.name, 'float32', [outFeatures], bias.data)) : y;
}

/** One part of a fusedLinear: a torch Linear weight [outFeatures, inFeatures] and its optional bias. */
export interface LinearPart {
  name: string;
  weight: LinearWeight;
  outFeatures: number;
  bias?: { name: string; data: Float32Array };
}

/**
 * Several torch Linears over the same input. With int4 weights (MatMulNBits, the decode kernel) they
 * run as one: rows stacked into one weight (`name`), one kernel, split back in order; each output
 * column is quantised on its own, so the parts come out as the separate linears give them (pre-packed
 * blocks are stacked as they are), and at M = 1 a few wide kernels stream their weights faster than many
 * narrow ones. fp32 and int8 graphs (the prefill kernels, M in the hundreds) keep separate linears:
 * there the split would only add copies.
 */
export function fusedLinear(
  ctx: LinearContext,
  x: string,
  name: string,
  parts: LinearPart[],
  inFeatures: number,
): string[] {
  const quant = ctx.options.linearQuant;
  if (quant?.dtype !== 'int4') {
    return parts.map((p) => linear(ctx, x, p.name, p.weight, p.outFeatures, inFeatures, p.bias));
  }
  const total = parts.reduce((n, p) => n + p.outFeatures, 0);
  const bias = parts.some((p) => p.bias) ? new Float32Array(total) : undefined;
  let row = 0;
  for (const part of parts) {
    if (part.bias) bias?.set(part.bias.data, row);
    row += part.outFeatures;
  }
  const weights = parts.map((p) => p.weight);
  let weight: LinearWeight;
  if (weights.every((w): w is Int4Blocks => reusableBlocks(w, quant))) {
    weight = stackInt4Columns(weights);
  } else {
    weight = new Float32Array(total * inFeatures);
    row = 0;
    for (const part of parts) {
      weight.set(linearWeightFloat32(part.weight), row * inFeatures);
      row += part.outFeatures;
    }
  }
  const y = linear(ctx, x, name, weight, total, inFeatures, bias && { name: `${name}:bias`, data: bias });
  const sizes = ctx.g.constI64(parts.map((p) => p.outFeatures));
  return ctx.g.node('Split', [y, sizes], { axis: { int: -1 } }, { outputs: parts.length });
}
