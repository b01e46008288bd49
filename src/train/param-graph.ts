/**
 * The primitive-op building blocks of the training graphs: every parameter a graph input named by its
 * checkpoint name, in checkpoint layout (the trainer feeds updated fp32 masters without rebuilding, and
 * gradients come out in checkpoint layout); torch Linears with LoRA adapters; norms and activations
 * written in ops that all have gradient rules.
 */
import { InternVLError } from '../errors.js';
import { GraphBuilder } from '../onnx/graph.js';

export interface LoraGraphSpec {
  /**
   * Checkpoint names of the adapted Linear weights, each with its alpha / r and the dropout
   * probability on its input (loss mode only).
   */
  targets: ReadonlyMap<string, { scale: number; dropout: number }>;
}

/** A graph input of inverted-dropout scales (1/keep or 0) that the caller draws for each run. */
export interface NoiseInput {
  name: string;
  shape: number[];
  dropProbability: number;
}

/** The adapter parameter names of a LoRA-adapted Linear weight (trainer-only, never in a saved checkpoint). */
export function loraParameterNames(weight: string): { a: string; b: string } {
  const base = weight.endsWith('.weight') ? weight.slice(0, -'.weight'.length) : weight;
  return { a: `${base}.lora_A.weight`, b: `${base}.lora_B.weight` };
}

/** Names of the non-parameter graph inputs. */
export const BATCH_INPUTS = {
  inputIds: 'input_ids',
  pixelValues: 'pixel_values',
  imageRows: 'image_rows',
  segmentIds: 'segment_ids',
  positionIds: 'position_ids',
  ropeCos: 'rope_cos',
  ropeSin: 'rope_sin',
  lossRows: 'loss_rows',
  lossTargets: 'loss_targets',
  lossWeights: 'loss_weights',
} as const;

/**
 * A training graph under construction: checkpoint parameters as graph inputs, torch Linears with their LoRA
 * adapters, and the primitive-op norms and activations every backward rule exists for.
 */
export class ParamGraph {
  readonly g = new GraphBuilder('internvl_train');
  readonly params: string[] = [];
  readonly noise: NoiseInput[] = [];
  constructor(
    private readonly shapes: ReadonlyMap<string, readonly number[]>,
    /** Rows of the decoder's [T, D] activations, the only inputs LoRA adapters see. */
    private readonly seqLen: number,
    private readonly lora?: LoraGraphSpec,
    readonly training = false,
  ) {}

  /** A float input of inverted-dropout scales, registered with its drop probability. */
  noiseInput(name: string, shape: number[], dropProbability: number): string {
    this.noise.push({ name, shape, dropProbability });
    return this.g.input(name, 'float32', shape);
  }

  has(name: string): boolean {
    return this.shapes.has(name);
  }

  /** A parameter input (registered once). */
  param(name: string): string {
    const shape = this.shapes.get(name);
    if (!shape) throw new InternVLError('BAD_CHECKPOINT', `${name}: missing from the checkpoint`);
    if (!this.params.includes(name)) {
      this.params.push(name);
      this.g.input(name, 'float32', [...shape]);
    }
    return name;
  }

  /**
   * x @ W^T (+ b) for a torch Linear weight [out, in]. `rows` are x's dimensions before the last
   * (default [T], the decoder's rows), the shape of a LoRA dropout mask.
   */
  linear(x: string, weight: string, bias?: string, rows: number[] = [this.seqLen]): string {
    const g = this.g;
    let y = g.matMul(x, g.transpose(this.param(weight), [1, 0]));
    if (bias && this.has(bias)) y = g.add(y, this.param(bias));
    const adapter = this.lora?.targets.get(weight);
    if (adapter) y = g.add(y, this.#loraDelta(x, weight, adapter, rows));
    return y;
  }

  /** scale·(dropout(x)·Aᵀ)·Bᵀ for an input x [...rows, in] (PEFT's lora.Linear). */
  #loraDelta(x: string, weight: string, adapter: { scale: number; dropout: number }, rows: number[]): string {
    const g = this.g;
    const { a, b } = loraParameterNames(weight);
    let input = x;
    if (this.training && adapter.dropout > 0) {
      const inFeatures = (this.shapes.get(weight) as readonly number[])[1];
      input = g.mul(x, this.noiseInput(`lora_dropout.${weight}`, [...rows, inFeatures], adapter.dropout));
    }
    const down = g.matMul(input, g.transpose(this.param(a), [1, 0]));
    const up = g.matMul(down, g.transpose(this.param(b), [1, 0]));
    return g.mul(up, g.scalarF32(adapter.scale));
  }

  mean(x: string): string {
    return this.g.op('ReduceMean', [x, this.g.constI64([-1])], { keepdims: { int: 1 } });
  }

  layerNorm(x: string, prefix: string, eps: number): string {
    const g = this.g;
    const xc = g.sub(x, this.mean(x));
    const variance = this.mean(g.mul(xc, xc));
    const normed = g.div(xc, g.op('Sqrt', [g.add(variance, g.scalarF32(eps))]));
    return g.add(g.mul(normed, this.param(`${prefix}.weight`)), this.param(`${prefix}.bias`));
  }

  rmsNorm(x: string, weight: string, eps: number): string {
    const g = this.g;
    const ms = this.mean(g.mul(x, x));
    return g.mul(g.div(x, g.op('Sqrt', [g.add(ms, g.scalarF32(eps))])), this.param(weight));
  }

  /** Exact GELU: 0.5·x·(1 + erf(x/√2)). */
  gelu(x: string): string {
    const g = this.g;
    const erf = g.op('Erf', [g.mul(x, g.scalarF32(Math.SQRT1_2))]);
    return g.mul(g.mul(x, g.scalarF32(0.5)), g.add(g.scalarF32(1), erf));
  }

  silu(x: string): string {
    return this.g.mul(x, this.g.sigmoid(x));
  }
}
