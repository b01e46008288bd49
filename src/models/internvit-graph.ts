/**
 * The inference backend of VisionOps: InternViT built into an ONNX graph from checkpoint tensors — the
 * patch embedding as a Conv, the position table bicubic-resized to the tile's grid at build time with
 * the class token folded in, attention as com.microsoft Attention straight from the qkv weights (in
 * head groups), linears fp32 or quantised.
 */
import { type GraphBuilder, MS_DOMAIN } from '../onnx/graph.js';
import { type LinearQuant, quantizedMatMul } from '../onnx/quantize.js';
import { type InternVitDims, positionRows, VIT_EMBEDDINGS, VIT_LAYERS, type VisionOps } from './internvit.js';
import { transposeMatrix, type WeightSource } from './weights.js';

/**
 * The fused Attention op materialises the scores of all its heads at once (16 × 1025² floats = 67 MB
 * for a 448 px tile of the 300M ViT), so the heads run in this many groups: a quarter of the scores at
 * a time, which stay in L3, at the same speed and about 50 MB less peak memory.
 */
const ATTENTION_HEAD_GROUPS = 4;

export interface InferenceVisionOptions {
  /** Tile side; the position embedding is resized to its patch grid. */
  imageSize: number;
  /** Storage of the encoder layers' linear weights (default fp32; mlp1 stays fp32). */
  linearQuant?: LinearQuant;
}

export class InferenceVisionOps implements VisionOps {
  constructor(
    readonly g: GraphBuilder,
    private readonly dims: InternVitDims,
    private readonly weights: WeightSource,
    /** [N, channels, imageSize, imageSize] */
    private readonly pixels: string,
    private readonly options: InferenceVisionOptions,
  ) {}

  async #initializer(name: string, shape: number[]): Promise<string> {
    return this.g.initializer(name, 'float32', shape, await this.weights.float32(name));
  }

  async embeddings(): Promise<string> {
    const { g, dims } = this;
    const C = dims.hiddenSize;
    const p = dims.patchSize;
    const grid = this.options.imageSize / p;
    const convW = await this.#initializer(`${VIT_EMBEDDINGS}.patch_embedding.weight`, [
      C,
      dims.numChannels,
      p,
      p,
    ]);
    const convB = await this.#initializer(`${VIT_EMBEDDINGS}.patch_embedding.bias`, [C]);
    const patches = g.op('Conv', [this.pixels, convW, convB], { kernel_shape: [p, p], strides: [p, p] });
    const tokens = g.transpose(g.reshape(patches, [0, C, grid * grid]), [0, 2, 1]);
    // A zero row in front of the patches takes the class token, which lives in the position rows.
    const withClassRow = g.op('Pad', [tokens, g.constI64([0, 1, 0, 0, 0, 0])]);
    const rows = positionRows(
      await this.weights.float32(`${VIT_EMBEDDINGS}.class_embedding`),
      await this.weights.float32(`${VIT_EMBEDDINGS}.position_embedding`),
      dims,
      grid,
    );
    const position = g.initializer(
      `${VIT_EMBEDDINGS}.position_rows_${grid}x${grid}`,
      'float32',
      [1, 1 + grid * grid, C],
      rows,
    );
    return g.add(withClassRow, position);
  }

  async layerNorm(x: string, prefix: string, eps: number): Promise<string> {
    const shape = this.weights.shape(`${prefix}.weight`);
    const w = await this.#initializer(`${prefix}.weight`, shape);
    const b = await this.#initializer(`${prefix}.bias`, shape);
    return this.g.op('LayerNormalization', [x, w, b], { axis: { int: -1 }, epsilon: eps });
  }

  async rmsNorm(x: string, prefix: string, eps: number): Promise<string> {
    const w = await this.#initializer(`${prefix}.weight`, this.weights.shape(`${prefix}.weight`));
    return this.g.op('SimplifiedLayerNormalization', [x, w], { axis: { int: -1 }, epsilon: eps });
  }

  /** x · Wᵀ (+ b), W stored [in, out] in fp32 or, in the encoder, as `linearQuant` says. */
  async linear(x: string, prefix: string, outDim: number, inDim: number, bias: boolean): Promise<string> {
    const { g } = this;
    const name = `${prefix}.weight`;
    const quant = prefix.startsWith(VIT_LAYERS) ? this.options.linearQuant : undefined;
    const weight = await this.weights.float32(name);
    const y =
      quant && quant.dtype !== 'fp32'
        ? quantizedMatMul(g, x, name, weight, outDim, inDim, quant)
        : g.matMul(
            x,
            g.initializer(`${name}^T`, 'float32', [inDim, outDim], transposeMatrix(weight, outDim, inDim)),
          );
    return bias ? g.add(y, await this.#initializer(`${prefix}.bias`, [outDim])) : y;
  }

  /**
   * com.microsoft Attention over the qkv projection (torch weight [3C, C]: q, k, v blocks, head-major), in
   * ATTENTION_HEAD_GROUPS groups of heads (one group when the heads do not divide evenly); each group
   * takes its heads' q, k and v rows, and the groups' outputs are concatenated in head order. fp32 only.
   */
  async fusedAttention(x: string, prefix: string): Promise<string | undefined> {
    const quant = this.options.linearQuant;
    if (quant && quant.dtype !== 'fp32') return undefined;
    const { g, dims } = this;
    const C = dims.hiddenSize;
    const groups = dims.numHeads % ATTENTION_HEAD_GROUPS === 0 ? ATTENTION_HEAD_GROUPS : 1;
    const width = C / groups;
    const qkvName = `${prefix}.weight`;
    const w = await this.weights.float32(qkvName);
    const b = dims.qkvBias ? await this.weights.float32(`${prefix}.bias`) : new Float32Array(3 * C);
    const outputs: string[] = [];
    for (let group = 0; group < groups; group++) {
      const rows = new Float32Array(3 * width * C);
      const bias = new Float32Array(3 * width);
      for (let part = 0; part < 3; part++) {
        const first = part * C + group * width;
        rows.set(w.subarray(first * C, (first + width) * C), part * width * C);
        bias.set(b.subarray(first, first + width), part * width);
      }
      const suffix = groups === 1 ? '' : `.heads${group}`;
      const wT = g.initializer(
        `${qkvName}^T${suffix}`,
        'float32',
        [C, 3 * width],
        transposeMatrix(rows, 3 * width, C),
      );
      const bT = g.initializer(`${qkvName}.bias${suffix}`, 'float32', [3 * width], bias);
      outputs.push(g.op('Attention', [x, wT, bT], { num_heads: { int: dims.numHeads / groups } }, MS_DOMAIN));
    }
    return groups === 1 ? outputs[0] : g.concat(outputs, -1);
  }

  multiHeadAttention(q: string, k: string, v: string): string {
    return this.g.op('MultiHeadAttention', [q, k, v], { num_heads: { int: this.dims.numHeads } }, MS_DOMAIN);
  }

  gelu(x: string): string {
    return this.g.gelu(x);
  }

  async residual(h: string, branch: string, scale: string): Promise<string> {
    return this.g.add(h, this.g.mul(branch, await this.#initializer(scale, [this.dims.hiddenSize])));
  }
}
