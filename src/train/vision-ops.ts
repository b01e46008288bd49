/**
 * The training backend of VisionOps: the vision tower (models/vision-tower.ts, the code the engine builds
 * its graph from) in differentiable ops — the patch embedding as a reshape + MatMul against the conv
 * kernel, softmax attention, timm DropPath on each residual branch, parameters with their LoRA adapters.
 */
import type { ModelConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { tableGrid, VIT_EMBEDDINGS, type VisionOps } from '../models/internvit.js';
import {
  type VisionDims,
  visionDimsFromConfig,
  visionGeometry,
  visionTower,
} from '../models/vision-tower.js';
import { BATCH_INPUTS, type ParamGraph } from './param-graph.js';

class PrimitiveVisionOps implements VisionOps {
  readonly g;
  /** Tokens per tile, 1 + grid². */
  readonly #tokens: number;

  constructor(
    private readonly m: ParamGraph,
    private readonly dims: VisionDims,
    private readonly numTiles: number,
    private readonly grid: number,
    /** Drop-path rate of each encoder layer (none in logits mode). */
    private readonly dropPath: readonly number[],
  ) {
    this.g = m.g;
    this.#tokens = 1 + grid * grid;
  }

  async embeddings(): Promise<string> {
    const { g, m, numTiles: N, grid: G } = this;
    const { hiddenSize: C, patchSize: P, numChannels } = this.dims.vit;
    const S = G * P;
    // Each patch's (channel, row, col) values against the conv kernel.
    const pixels = g.input(BATCH_INPUTS.pixelValues, 'float32', [N, numChannels, S, S]);
    const patches = g.reshape(
      g.transpose(g.reshape(pixels, [N, numChannels, G, P, G, P]), [0, 2, 4, 1, 3, 5]),
      [N, G * G, numChannels * P * P],
    );
    const kernel = g.reshape(m.param(`${VIT_EMBEDDINGS}.patch_embedding.weight`), [C, numChannels * P * P]);
    const embedded = g.add(
      g.matMul(patches, g.transpose(kernel, [1, 0])),
      m.param(`${VIT_EMBEDDINGS}.patch_embedding.bias`),
    );
    const cls = g.op('Expand', [m.param(`${VIT_EMBEDDINGS}.class_embedding`), g.constI64([N, 1, C])]);
    return g.add(g.concat([cls, embedded], 1), m.param(`${VIT_EMBEDDINGS}.position_embedding`));
  }

  async layerNorm(x: string, prefix: string, eps: number): Promise<string> {
    return this.m.layerNorm(x, prefix, eps);
  }

  async rmsNorm(x: string, prefix: string, eps: number): Promise<string> {
    return this.m.rmsNorm(x, `${prefix}.weight`, eps);
  }

  async linear(x: string, prefix: string, _outDim: number, _inDim: number, bias: boolean): Promise<string> {
    return this.m.linear(x, `${prefix}.weight`, bias ? `${prefix}.bias` : undefined, [
      this.numTiles,
      this.#tokens,
    ]);
  }

  async fusedAttention(): Promise<undefined> {
    return undefined;
  }

  multiHeadAttention(q: string, k: string, v: string): string {
    const { g, numTiles: N } = this;
    const L = this.#tokens;
    const { hiddenSize: C, numHeads: H } = this.dims.vit;
    const d = C / H;
    const heads = (t: string) => g.transpose(g.reshape(t, [N, L, H, d]), [0, 2, 1, 3]);
    const scores = g.matMul(g.mul(heads(q), g.scalarF32(d ** -0.5)), g.transpose(heads(k), [0, 1, 3, 2]));
    const attn = g.matMul(g.softmax(scores, -1), heads(v));
    return g.reshape(g.transpose(attn, [0, 2, 1, 3]), [N, L, C]);
  }

  gelu(x: string): string {
    return this.m.gelu(x);
  }

  /** timm DropPath: one keep/drop draw per tile, kept branches scaled by 1/keep. */
  async residual(
    h: string,
    branch: string,
    scale: string,
    layer: number,
    which: 'attn' | 'mlp',
  ): Promise<string> {
    const { g } = this;
    let scaled = g.mul(branch, this.m.param(scale));
    const rate = this.dropPath[layer] ?? 0;
    if (rate > 0)
      scaled = g.mul(scaled, this.m.noiseInput(`drop_path.${layer}.${which}`, [this.numTiles, 1, 1], rate));
    return g.add(h, scaled);
  }
}

/** InternViT → drop CLS → pixel shuffle → mlp1 over `numTiles` tiles; returns [N·tokensPerTile, D]. */
export async function trainingVisionTower(
  m: ParamGraph,
  config: ModelConfig,
  numTiles: number,
  dropPath: readonly number[],
): Promise<string> {
  const dims = visionDimsFromConfig(config);
  const geo = visionGeometry(dims);
  if (tableGrid(dims.vit) !== geo.grid) {
    const table = tableGrid(dims.vit);
    throw new InternVLError(
      'UNSUPPORTED',
      `training at image size ${geo.imageSize} needs a position embedding for ${geo.grid}x${geo.grid} patches; the checkpoint's is ${table}x${table} (resize it first)`,
    );
  }
  const ops = new PrimitiveVisionOps(m, dims, numTiles, geo.grid, dropPath);
  const { imageEmbeds } = await visionTower(ops, dims, geo);
  return m.g.reshape(imageEmbeds, [numTiles * geo.tokensPerTile, dims.llmHiddenSize]);
}
