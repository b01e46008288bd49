/**
 * InternViT (modeling_intern_vit.py), both styles: 300M (LayerNorm, qkv bias) and 6B (RMSNorm, no qkv
 * bias, q_norm/k_norm over the whole width).
 *
 *   patch embedding → [CLS] prepended → + position embedding
 *   → layers: h += ls1 ⊙ attn(norm1(h)); h += ls2 ⊙ mlp(norm2(h))       (no final norm)
 *
 * The encoder is written once against VisionOps; models/internvit-graph.ts builds it for inference
 * (Conv patches, fused attention, quantised linears), train/vision-ops.ts in differentiable ops.
 */
import type { VisionConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import type { GraphBuilder } from '../onnx/graph.js';
import { bicubicResize } from './torch-bicubic.js';
import type { TensorSpec } from './weights.js';

export type VitNormType = 'layer_norm' | 'rms_norm';

export interface InternVitDims {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  intermediateSize: number;
  patchSize: number;
  /** The image size the position-embedding table was trained for (vision_config.image_size). */
  imageSize: number;
  numChannels: number;
  qkvBias: boolean;
  qkNormalization: boolean;
  normType: VitNormType;
  layerNormEps: number;
}

export function internVitDimsFromConfig(vision: VisionConfig): InternVitDims {
  return {
    hiddenSize: vision.hidden_size,
    numLayers: vision.num_hidden_layers,
    numHeads: vision.num_attention_heads,
    intermediateSize: vision.intermediate_size,
    patchSize: vision.patch_size,
    imageSize: vision.image_size,
    numChannels: vision.num_channels,
    qkvBias: vision.qkv_bias,
    qkNormalization: vision.qk_normalization,
    normType: vision.norm_type,
    layerNormEps: vision.layer_norm_eps,
  };
}

/**
 * How many encoder layers produce `hidden_states[selectLayer]` of the L+1 tuple
 * (embeddings, layer 1, …, layer L); -1 is the last layer.
 */
export function layersForSelectLayer(numLayers: number, selectLayer: number): number {
  const index = selectLayer < 0 ? numLayers + 1 + selectLayer : selectLayer;
  if (!Number.isInteger(index) || index < 0 || index > numLayers) {
    throw new InternVLError(
      'BAD_CONFIG',
      `select_layer ${selectLayer} is outside -${numLayers + 1}..${numLayers} for a ${numLayers}-layer InternViT`,
    );
  }
  return index;
}

export const VIT_EMBEDDINGS = 'vision_model.embeddings';
export const VIT_LAYERS = 'vision_model.encoder.layers.';
const layerPrefix = (i: number) => `${VIT_LAYERS}${i}`;

/** Patch-grid side of the position-embedding table (32 for 448 px / 14). */
export function tableGrid(dims: InternVitDims): number {
  return Math.floor(dims.imageSize / dims.patchSize);
}

/** Every checkpoint tensor the first `layers` encoder layers need, with its expected shape. */
export function internVitTensorSpecs(dims: InternVitDims, layers: number): TensorSpec[] {
  const C = dims.hiddenSize;
  const I = dims.intermediateSize;
  const G = tableGrid(dims);
  const specs: TensorSpec[] = [
    { name: `${VIT_EMBEDDINGS}.class_embedding`, shape: [1, 1, C] },
    {
      name: `${VIT_EMBEDDINGS}.patch_embedding.weight`,
      shape: [C, dims.numChannels, dims.patchSize, dims.patchSize],
    },
    { name: `${VIT_EMBEDDINGS}.patch_embedding.bias`, shape: [C] },
    { name: `${VIT_EMBEDDINGS}.position_embedding`, shape: [1, 1 + G * G, C] },
  ];
  const withBias = dims.normType === 'layer_norm';
  for (let i = 0; i < layers; i++) {
    const p = layerPrefix(i);
    for (const norm of ['norm1', 'norm2']) {
      specs.push({ name: `${p}.${norm}.weight`, shape: [C] });
      if (withBias) specs.push({ name: `${p}.${norm}.bias`, shape: [C] });
    }
    specs.push({ name: `${p}.attn.qkv.weight`, shape: [3 * C, C] });
    if (dims.qkvBias) specs.push({ name: `${p}.attn.qkv.bias`, shape: [3 * C] });
    if (dims.qkNormalization) {
      specs.push({ name: `${p}.attn.q_norm.weight`, shape: [C] });
      specs.push({ name: `${p}.attn.k_norm.weight`, shape: [C] });
    }
    specs.push(
      { name: `${p}.attn.proj.weight`, shape: [C, C] },
      { name: `${p}.attn.proj.bias`, shape: [C] },
      { name: `${p}.mlp.fc1.weight`, shape: [I, C] },
      { name: `${p}.mlp.fc1.bias`, shape: [I] },
      { name: `${p}.mlp.fc2.weight`, shape: [C, I] },
      { name: `${p}.mlp.fc2.bias`, shape: [C] },
      { name: `${p}.ls1`, shape: [C] },
      { name: `${p}.ls2`, shape: [C] },
    );
  }
  return specs;
}

/**
 * Position embedding for a `grid`×`grid` patch grid as rows [1 + grid², C], with the class token
 * folded into row 0 (class_embedding + CLS position, added in float32 as the reference does).
 */
export function positionRows(
  classEmbedding: Float32Array,
  table: Float32Array,
  dims: InternVitDims,
  grid: number,
): Float32Array {
  const C = dims.hiddenSize;
  const G = tableGrid(dims);
  // [G², C] row-major → [C, G, G] planes for the resize, and back.
  const planes = new Float32Array(C * G * G);
  for (let p = 0; p < G * G; p++) {
    for (let c = 0; c < C; c++) planes[c * G * G + p] = table[(1 + p) * C + c];
  }
  const resized = bicubicResize(planes, C, G, G, grid, grid);
  const rows = new Float32Array((1 + grid * grid) * C);
  for (let c = 0; c < C; c++) rows[c] = Math.fround(classEmbedding[c] + table[c]);
  for (let p = 0; p < grid * grid; p++) {
    for (let c = 0; c < C; c++) rows[(1 + p) * C + c] = resized[c * grid * grid + p];
  }
  return rows;
}

/**
 * The operations the encoder is written in. Values are graph value names of [N, tokens, width] tensors.
 */
export interface VisionOps {
  readonly g: GraphBuilder;
  /** Patch embedding, class token and position embedding of the input tiles: [N, 1 + grid², C]. */
  embeddings(): Promise<string>;
  /** torch LayerNorm `prefix` (weight and bias) over the last axis. */
  layerNorm(x: string, prefix: string, eps: number): Promise<string>;
  /** InternRMSNorm `prefix` over the last axis. */
  rmsNorm(x: string, prefix: string, eps: number): Promise<string>;
  /** torch Linear `prefix` (weight [outDim, inDim], with `bias` its bias). */
  linear(x: string, prefix: string, outDim: number, inDim: number, bias: boolean): Promise<string>;
  /**
   * The whole attention (before proj) from the qkv Linear `prefix` in one kernel, where the backend has
   * one; undefined where it has not.
   */
  fusedAttention(x: string, prefix: string): Promise<string | undefined>;
  /** Bidirectional attention over q, k, v [N, L, C] with num_heads heads and scale head_dim^-0.5. */
  multiHeadAttention(q: string, k: string, v: string): string;
  /** Exact GELU. */
  gelu(x: string): string;
  /** h + ls ⊙ branch for the layer-scale tensor `scale` of `layer`'s `which` branch. */
  residual(h: string, branch: string, scale: string, layer: number, which: 'attn' | 'mlp'): Promise<string>;
}

async function norm(ops: VisionOps, dims: InternVitDims, x: string, prefix: string): Promise<string> {
  return dims.normType === 'layer_norm'
    ? ops.layerNorm(x, prefix, dims.layerNormEps)
    : ops.rmsNorm(x, prefix, dims.layerNormEps);
}

/** Self-attention of one layer: qkv → (q_norm, k_norm over the whole width) → heads → proj. */
async function attention(ops: VisionOps, dims: InternVitDims, x: string, prefix: string): Promise<string> {
  const C = dims.hiddenSize;
  const qkvPrefix = `${prefix}.attn.qkv`;
  let heads = dims.qkNormalization ? undefined : await ops.fusedAttention(x, qkvPrefix);
  if (heads === undefined) {
    const qkv = await ops.linear(x, qkvPrefix, 3 * C, C, dims.qkvBias);
    const [q, k, v] = ops.g.node(
      'Split',
      [qkv],
      { axis: { int: -1 }, num_outputs: { int: 3 } },
      { outputs: 3 },
    );
    heads = dims.qkNormalization
      ? ops.multiHeadAttention(
          await ops.rmsNorm(q, `${prefix}.attn.q_norm`, dims.layerNormEps),
          await ops.rmsNorm(k, `${prefix}.attn.k_norm`, dims.layerNormEps),
          v,
        )
      : ops.multiHeadAttention(q, k, v);
  }
  return ops.linear(heads, `${prefix}.attn.proj`, C, C, true);
}

/** Encoder layer `i`. */
export async function internVitLayer(
  ops: VisionOps,
  dims: InternVitDims,
  h: string,
  i: number,
): Promise<string> {
  const C = dims.hiddenSize;
  const I = dims.intermediateSize;
  const p = layerPrefix(i);
  const attended = await attention(ops, dims, await norm(ops, dims, h, `${p}.norm1`), p);
  const h1 = await ops.residual(h, attended, `${p}.ls1`, i, 'attn');
  const up = ops.gelu(await ops.linear(await norm(ops, dims, h1, `${p}.norm2`), `${p}.mlp.fc1`, I, C, true));
  const down = await ops.linear(up, `${p}.mlp.fc2`, C, I, true);
  return ops.residual(h1, down, `${p}.ls2`, i, 'mlp');
}

export interface InternVitOutputs {
  /** Embedding output [N, 1 + g², C] (hidden_states[0]). */
  embeddings: string;
  /** Output of each built layer [N, 1 + g², C] (hidden_states[1..]). */
  layers: string[];
}

/** The embeddings and the first `layers` encoder layers. */
export async function internVitEncoder(
  ops: VisionOps,
  dims: InternVitDims,
  layers: number,
): Promise<InternVitOutputs> {
  const embeddings = await ops.g.within('embeddings', () => ops.embeddings());
  const outputs: string[] = [];
  let h = embeddings;
  for (let i = 0; i < layers; i++) {
    h = await ops.g.within(`layers.${i}`, () => internVitLayer(ops, dims, h, i));
    outputs.push(h);
  }
  return { embeddings, layers: outputs };
}
