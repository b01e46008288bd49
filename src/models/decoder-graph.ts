/**
 * The inference backend of DecoderLayerOps: an architecture's layers built into one ONNX graph (contract in
 * ./decoder.ts) from checkpoint tensors, with the fused kernels the engine runs — rotary +
 * GroupQueryAttention (or, in a graph for short chunks only, ./cache-attention.ts) over engine-owned KV
 * buffers, SkipSimplifiedLayerNormalization on the residual stream, linears stored fp32, int8 or int4 and
 * run as one matmul where that is faster — then the final norm and the head over the selected rows.
 */
import { type Graph, GraphBuilder, MS_DOMAIN } from '../onnx/graph.js';
import { DEFAULT_BLOCK_SIZE } from '../onnx/quantize.js';
import { CacheAttention } from './cache-attention.js';
import {
  DECODER_IO,
  type DecoderArchitecture,
  type DecoderDims,
  type DecoderGraphOptions,
  type DecoderLayerOps,
  type LinearSpec,
  outputHeadName,
} from './decoder.js';
import { fusedLinear, type LinearPart, type LinearWeight, linear } from './linear-layers.js';
import { splitPackedQkv, splitQkvWeight } from './packed-qkv.js';
import { checkTensorShapes, type WeightSource } from './weights.js';

/** The graph under construction plus the values every layer reads. */
export interface DecoderGraphContext {
  g: GraphBuilder;
  dims: DecoderDims;
  options: DecoderGraphOptions;
  /** [B,S,D] */
  inputsEmbeds: string;
  ropeCos: string;
  ropeSin: string;
  ropeIndex: string;
  seqlensK: string;
  totalSequenceLength: string;
  logitsRows: string;
}

function startDecoderGraph(
  name: string,
  dims: DecoderDims,
  options: DecoderGraphOptions,
): DecoderGraphContext {
  const g = new GraphBuilder(name);
  const half = dims.headDim / 2;
  return {
    g,
    dims,
    options,
    inputsEmbeds: g.input(DECODER_IO.inputsEmbeds, 'float32', ['batch', 'seq', dims.hiddenSize]),
    ropeCos: g.input(DECODER_IO.ropeCos, 'float32', ['rope_rows', half]),
    ropeSin: g.input(DECODER_IO.ropeSin, 'float32', ['rope_rows', half]),
    ropeIndex: g.input(DECODER_IO.ropeIndex, 'int64', ['batch', 'seq']),
    seqlensK: g.input(DECODER_IO.seqlensK, 'int32', ['batch']),
    totalSequenceLength: g.input(DECODER_IO.totalSequenceLength, 'int32', []),
    logitsRows: g.input(DECODER_IO.logitsRows, 'int64', ['rows']),
  };
}

/** RMSNorm in fp32 over the last axis: x / sqrt(mean(x²) + eps) · w. */
function rmsNorm(ctx: DecoderGraphContext, x: string, name: string, weight: Float32Array): string {
  const { g, dims } = ctx;
  const w = g.initializer(name, 'float32', [weight.length], weight);
  return g.op('SimplifiedLayerNormalization', [x, w], {
    axis: { int: -1 },
    epsilon: dims.rmsNormEps,
    stash_type: { int: 1 },
  });
}

/**
 * The residual stream of a decoder: `add(delta)` keeps x + delta pending, and the next `norm` computes
 * the sum and its RMSNorm in one SkipSimplifiedLayerNormalization kernel instead of an Add and a norm.
 */
class ResidualStream {
  #x: string;
  #pending: string | undefined;

  constructor(
    private readonly ctx: DecoderGraphContext,
    x: string,
  ) {
    this.#x = x;
  }

  add(delta: string): void {
    if (this.#pending) this.#x = this.ctx.g.add(this.#x, this.#pending);
    this.#pending = delta;
  }

  /** RMSNorm of the stream (the pending addition folded in). */
  norm(name: string, weight: Float32Array): string {
    const { g, dims } = this.ctx;
    if (!this.#pending) return rmsNorm(this.ctx, this.#x, name, weight);
    const w = g.initializer(name, 'float32', [weight.length], weight);
    const [normed, , , sum] = g.node(
      'SkipSimplifiedLayerNormalization',
      [this.#x, this.#pending, w],
      { epsilon: dims.rmsNormEps },
      { domain: MS_DOMAIN, outputs: [`${name}:normed`, '', '', `${name}:residual`] },
    );
    this.#x = sum;
    this.#pending = undefined;
    return normed;
  }

  /** The stream's current value. */
  value(): string {
    if (this.#pending) this.#x = this.ctx.g.add(this.#x, this.#pending);
    this.#pending = undefined;
    return this.#x;
  }
}

/** DecoderLayerOps over checkpoint tensors, built into the inference graph. */
class FusedDecoderOps implements DecoderLayerOps {
  readonly dims: DecoderDims;
  readonly residual: ResidualStream;
  readonly #cacheAttention: CacheAttention | undefined;

  constructor(
    private readonly ctx: DecoderGraphContext,
    private readonly weights: WeightSource,
  ) {
    this.dims = ctx.dims;
    this.residual = new ResidualStream(ctx, ctx.inputsEmbeds);
    if (ctx.options.attention === 'matmul') {
      this.#cacheAttention = new CacheAttention(ctx.g, ctx.dims, ctx.seqlensK);
    }
  }

  load(name: string): Promise<Float32Array> {
    return this.weights.float32(name);
  }

  async named(name: string): Promise<{ name: string; data: Float32Array }> {
    return { name, data: await this.load(name) };
  }

  /**
   * A torch Linear weight: the checkpoint's own 4-bit blocks when it stores them packed (AWQ, GPTQ) and the
   * graph is int4 with the same block size, so nothing is requantised; else float32.
   */
  async #loadLinear(name: string): Promise<LinearWeight> {
    const quant = this.ctx.options.linearQuant;
    if (quant?.dtype === 'int4' && this.weights.int4Blocks) {
      const blocks = await this.weights.int4Blocks(name);
      if (blocks && blocks.blockSize === (quant.blockSize ?? DEFAULT_BLOCK_SIZE)) return blocks;
    }
    return this.load(name);
  }

  async #part(spec: LinearSpec): Promise<LinearPart> {
    return {
      name: `${spec.name}.weight`,
      weight: await this.#loadLinear(`${spec.name}.weight`),
      outFeatures: spec.outFeatures,
      bias: spec.bias ? await this.named(`${spec.name}.bias`) : undefined,
    };
  }

  async norm(name: string): Promise<string> {
    return this.residual.norm(name, await this.load(name));
  }

  addResidual(delta: string): void {
    this.residual.add(delta);
  }

  async linear(x: string, inFeatures: number, spec: LinearSpec): Promise<string> {
    const part = await this.#part(spec);
    return linear(this.ctx, x, part.name, part.weight, part.outFeatures, inFeatures, part.bias);
  }

  async linears(x: string, inFeatures: number, fusedName: string, specs: LinearSpec[]): Promise<string[]> {
    const parts: LinearPart[] = [];
    for (const spec of specs) parts.push(await this.#part(spec));
    return fusedLinear(this.ctx, x, `${fusedName}.weight`, parts, inFeatures);
  }

  /** The packed rows regrouped as [q | k | v] at build time: one matmul (with int4), split after. */
  async packedQkv(x: string, spec: Omit<LinearSpec, 'outFeatures'>): Promise<[string, string, string]> {
    const { dims } = this;
    const w = splitQkvWeight(await this.#loadLinear(`${spec.name}.weight`), dims);
    const b = spec.bias ? splitPackedQkv(await this.load(`${spec.name}.bias`), dims, 1) : undefined;
    const qWidth = dims.numHeads * dims.headDim;
    const kvWidth = dims.numKvHeads * dims.headDim;
    const part = (which: 'q' | 'k' | 'v', outFeatures: number): LinearPart => ({
      name: `${spec.name}.weight:${which}`,
      weight: w[which],
      bias: b && { name: `${spec.name}.bias:${which}`, data: b[which] },
      outFeatures,
    });
    const [q, k, v] = fusedLinear(
      this.ctx,
      x,
      `${spec.name}.weight:qkv`,
      [part('q', qWidth), part('k', kvWidth), part('v', kvWidth)],
      dims.hiddenSize,
    );
    return [q, k, v];
  }

  async headNorm(x: string, heads: number, name: string): Promise<string> {
    const { g } = this.ctx;
    const perHead = g.reshape(x, [0, 0, heads, this.dims.headDim]);
    return g.reshape(rmsNorm(this.ctx, perHead, name, await this.load(name)), [
      0,
      0,
      heads * this.dims.headDim,
    ]);
  }

  /** Declares key.i (rotated) and value.i as graph outputs for the engine's KV buffers. */
  attention(layer: number, q: string, k: string, v: string): string {
    const { ctx, dims } = this;
    const { g } = ctx;
    const kvWidth = dims.numKvHeads * dims.headDim;
    const rotary = (x: string, heads: number) =>
      g.op(
        'RotaryEmbedding',
        [x, ctx.ropeIndex, ctx.ropeCos, ctx.ropeSin],
        { interleaved: { int: 0 }, num_heads: { int: heads } },
        MS_DOMAIN,
      );
    const qRot = rotary(q, dims.numHeads);
    const kRot = rotary(k, dims.numKvHeads);
    const pastShape = ['batch', dims.numKvHeads, 'capacity', dims.headDim];
    const pastKey = g.input(DECODER_IO.pastKey(layer), 'float32', pastShape);
    const pastValue = g.input(DECODER_IO.pastValue(layer), 'float32', pastShape);
    const out =
      this.#cacheAttention?.attend(qRot, kRot, v, pastKey, pastValue) ??
      this.#groupQueryAttention(qRot, kRot, v, pastKey, pastValue);
    g.output(kRot, DECODER_IO.key(layer), 'float32', ['batch', 'seq', kvWidth]);
    g.output(v, DECODER_IO.value(layer), 'float32', ['batch', 'seq', kvWidth]);
    return out;
  }

  #groupQueryAttention(q: string, k: string, v: string, pastKey: string, pastValue: string): string {
    const { ctx, dims } = this;
    // present_key/present_value must stay as node outputs (ORT ignores the past without them); the engine never fetches them.
    const [out] = ctx.g.node(
      'GroupQueryAttention',
      [q, k, v, pastKey, pastValue, ctx.seqlensK, ctx.totalSequenceLength],
      {
        num_heads: { int: dims.numHeads },
        kv_num_heads: { int: dims.numKvHeads },
        scale: 1 / Math.sqrt(dims.headDim),
        do_rotary: { int: 0 },
      },
      { domain: MS_DOMAIN, outputs: 3 },
    );
    return out;
  }

  swiGlu(gate: string, up: string): string {
    const { g } = this.ctx;
    return g.mul(g.mul(gate, g.sigmoid(gate)), up);
  }
}

/** Builds the decoder graph of `arch` (contract in ./decoder.ts) from checkpoint tensors. */
export async function buildDecoderGraph(
  arch: DecoderArchitecture,
  dims: DecoderDims,
  weights: WeightSource,
  options: DecoderGraphOptions = {},
): Promise<Graph> {
  checkTensorShapes(weights, arch.tensorSpecs(dims));
  const ctx = startDecoderGraph(`${arch.modelType}-decoder`, dims, options);
  const { g } = ctx;
  const ops = new FusedDecoderOps(ctx, weights);
  for (let i = 0; i < dims.numLayers; i++) {
    await arch.layer(ops, i);
    if (options.hiddenStates) {
      g.output(ops.residual.value(), DECODER_IO.hidden(i), 'float32', ['batch', 'seq', dims.hiddenSize]);
    }
  }
  // Final RMSNorm and the head on the rows `logits_rows` of the flattened hidden states.
  const rows = g.gather(g.reshape(ops.residual.value(), [-1, dims.hiddenSize]), ctx.logitsRows, 0);
  const normed = rmsNorm(ctx, rows, arch.finalNormName, await ops.load(arch.finalNormName));
  if (options.hiddenStates) g.output(normed, DECODER_IO.finalNorm, 'float32', ['rows', dims.hiddenSize]);
  const head = await ops.named(outputHeadName(arch, dims));
  const logits = linear(
    ctx,
    normed,
    head.name,
    head.data,
    dims.vocabSize,
    dims.hiddenSize,
    undefined,
    options.lmHeadQuant ?? options.linearQuant,
  );
  g.output(logits, DECODER_IO.logits, 'float32', ['rows', dims.vocabSize]);
  const next = g.op('ArgMax', [logits], { axis: { int: -1 }, keepdims: { int: 0 } });
  g.output(next, DECODER_IO.nextToken, 'int64', ['rows']);
  return g.graph;
}
