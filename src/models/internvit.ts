/**
 * InternViT (modeling_intern_vit.py) as an ONNX graph, both styles:
 * 300M (LayerNorm, qkv bias) and 6B (RMSNorm, no qkv bias, q_norm/k_norm over the whole width).
 *
 *   patch Conv → row-major tokens → [CLS] prepended → + position embedding (bicubic-resized grid)
 *   → layers: h += ls1 ⊙ attn(norm1(h)); h += ls2 ⊙ mlp(norm2(h))       (no final norm)
 */
import type { VisionConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { type GraphBuilder, MS_DOMAIN } from '../onnx/graph.js';
import { type LinearQuant, quantizedMatMul } from '../onnx/quantize.js';
import { bicubicResize } from './torch-bicubic.js';
import { type TensorSpec, transposeMatrix, type WeightSource } from './weights.js';

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

const EMBEDDINGS = 'vision_model.embeddings';
const layerPrefix = (i: number) => `vision_model.encoder.layers.${i}`;

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
    { name: `${EMBEDDINGS}.class_embedding`, shape: [1, 1, C] },
    {
      name: `${EMBEDDINGS}.patch_embedding.weight`,
      shape: [C, dims.numChannels, dims.patchSize, dims.patchSize],
    },
    { name: `${EMBEDDINGS}.patch_embedding.bias`, shape: [C] },
    { name: `${EMBEDDINGS}.position_embedding`, shape: [1, 1 + G * G, C] },
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

/** GraphBuilder.within for an async body: value names stay under `scope` across awaits. */
export async function within<T>(g: GraphBuilder, scope: string, body: () => Promise<T>): Promise<T> {
  const saved = g.scope;
  g.scope = saved ? `${saved}/${scope}` : scope;
  try {
    return await body();
  } finally {
    g.scope = saved;
  }
}

async function initializerFrom(
  g: GraphBuilder,
  weights: WeightSource,
  name: string,
  dims: number[],
): Promise<string> {
  return g.initializer(name, 'float32', dims, await weights.float32(name));
}

/** A torch Linear weight [out, in] as a MatMul right-hand side [in, out]. */
async function linearWeight(
  g: GraphBuilder,
  weights: WeightSource,
  name: string,
  outDim: number,
  inDim: number,
): Promise<string> {
  return g.initializer(
    `${name}^T`,
    'float32',
    [inDim, outDim],
    transposeMatrix(await weights.float32(name), outDim, inDim),
  );
}

/** x · Wᵀ for the torch Linear weight `name` [out, in], in fp32 or stored as `quant` says. */
async function linearMatMul(
  g: GraphBuilder,
  weights: WeightSource,
  x: string,
  name: string,
  outDim: number,
  inDim: number,
  quant?: LinearQuant,
): Promise<string> {
  if (quant && quant.dtype !== 'fp32') {
    return quantizedMatMul(g, x, name, await weights.float32(name), outDim, inDim, quant);
  }
  return g.matMul(x, await linearWeight(g, weights, name, outDim, inDim));
}

/** torch Linear `prefix` (weight [out, in], bias [out]) applied to the last axis of `x`. */
export async function linear(
  g: GraphBuilder,
  weights: WeightSource,
  x: string,
  prefix: string,
  outDim: number,
  inDim: number,
  quant?: LinearQuant,
): Promise<string> {
  const y = await linearMatMul(g, weights, x, `${prefix}.weight`, outDim, inDim, quant);
  const b = await initializerFrom(g, weights, `${prefix}.bias`, [outDim]);
  return g.add(y, b);
}

/** torch LayerNorm `prefix` (weight and bias) over the last axis. */
export async function layerNorm(
  g: GraphBuilder,
  weights: WeightSource,
  x: string,
  prefix: string,
  width: number,
  eps: number,
): Promise<string> {
  const w = await initializerFrom(g, weights, `${prefix}.weight`, [width]);
  const b = await initializerFrom(g, weights, `${prefix}.bias`, [width]);
  return g.op('LayerNormalization', [x, w, b], { axis: { int: -1 }, epsilon: eps });
}

/** InternRMSNorm `prefix`: x·rsqrt(mean(x²)+eps)·weight over the last axis, in float32. */
export async function rmsNorm(
  g: GraphBuilder,
  weights: WeightSource,
  x: string,
  prefix: string,
  width: number,
  eps: number,
): Promise<string> {
  const w = await initializerFrom(g, weights, `${prefix}.weight`, [width]);
  return g.op('SimplifiedLayerNormalization', [x, w], { axis: { int: -1 }, epsilon: eps });
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

export interface InternVitOutputs {
  /** Embedding output [N, 1 + g², C] (hidden_states[0]). */
  embeddings: string;
  /** Output of each built layer [N, 1 + g², C] (hidden_states[1..]). */
  layers: string[];
}

/**
 * Adds InternViT to `g`: `pixels` [N, channels, imageSize, imageSize] → hidden states. Builds only the
 * first `layers` encoder layers. Tensor shapes must have been checked with `internVitTensorSpecs`.
 */
export async function buildInternVit(
  g: GraphBuilder,
  dims: InternVitDims,
  weights: WeightSource,
  pixels: string,
  options: { imageSize: number; layers: number; linearQuant?: LinearQuant },
): Promise<InternVitOutputs> {
  const C = dims.hiddenSize;
  const p = dims.patchSize;
  const grid = options.imageSize / p;
  if (!Number.isInteger(grid) || grid < 1) {
    throw new InternVLError(
      'BAD_INPUT',
      `image size ${options.imageSize} is not a multiple of the patch size ${p}`,
    );
  }
  const embeddings = await within(g, 'embeddings', async () => {
    const convW = await initializerFrom(g, weights, `${EMBEDDINGS}.patch_embedding.weight`, [
      C,
      dims.numChannels,
      p,
      p,
    ]);
    const convB = await initializerFrom(g, weights, `${EMBEDDINGS}.patch_embedding.bias`, [C]);
    const patches = g.op('Conv', [pixels, convW, convB], { kernel_shape: [p, p], strides: [p, p] });
    const tokens = g.transpose(g.reshape(patches, [0, C, grid * grid]), [0, 2, 1]);
    // A zero row in front of the patches takes the class token, which lives in the position rows.
    const withClassRow = g.op('Pad', [tokens, g.constI64([0, 1, 0, 0, 0, 0])]);
    const rows = positionRows(
      await weights.float32(`${EMBEDDINGS}.class_embedding`),
      await weights.float32(`${EMBEDDINGS}.position_embedding`),
      dims,
      grid,
    );
    const position = g.initializer(
      `${EMBEDDINGS}.position_rows_${grid}x${grid}`,
      'float32',
      [1, 1 + grid * grid, C],
      rows,
    );
    return g.add(withClassRow, position);
  });

  const layers: string[] = [];
  let h = embeddings;
  for (let i = 0; i < options.layers; i++) {
    h = await within(g, `layers.${i}`, () =>
      encoderLayer(g, dims, weights, h, layerPrefix(i), options.linearQuant),
    );
    layers.push(h);
  }
  return { embeddings, layers };
}

async function norm(
  g: GraphBuilder,
  dims: InternVitDims,
  weights: WeightSource,
  x: string,
  prefix: string,
): Promise<string> {
  return dims.normType === 'layer_norm'
    ? layerNorm(g, weights, x, prefix, dims.hiddenSize, dims.layerNormEps)
    : rmsNorm(g, weights, x, prefix, dims.hiddenSize, dims.layerNormEps);
}

async function encoderLayer(
  g: GraphBuilder,
  dims: InternVitDims,
  weights: WeightSource,
  h: string,
  prefix: string,
  quant?: LinearQuant,
): Promise<string> {
  const C = dims.hiddenSize;
  const I = dims.intermediateSize;
  const attended = await attention(
    g,
    dims,
    weights,
    await norm(g, dims, weights, h, `${prefix}.norm1`),
    prefix,
    quant,
  );
  const ls1 = await initializerFrom(g, weights, `${prefix}.ls1`, [C]);
  const h1 = g.add(h, g.mul(attended, ls1));

  const x = await norm(g, dims, weights, h1, `${prefix}.norm2`);
  const up = g.gelu(await linear(g, weights, x, `${prefix}.mlp.fc1`, I, C, quant));
  const down = await linear(g, weights, up, `${prefix}.mlp.fc2`, C, I, quant);
  const ls2 = await initializerFrom(g, weights, `${prefix}.ls2`, [C]);
  return g.add(h1, g.mul(down, ls2));
}

/**
 * The fused Attention op materialises the scores of all its heads at once (16 × 1025² floats = 67 MB
 * for a 448 px tile of the 300M ViT), so the heads run in this many groups: a quarter of the scores at
 * a time, which stay in L3, at the same speed and about 50 MB less peak memory.
 */
const ATTENTION_HEAD_GROUPS = 4;

/** Bidirectional multi-head attention with scale head_dim^-0.5, then proj. */
async function attention(
  g: GraphBuilder,
  dims: InternVitDims,
  weights: WeightSource,
  x: string,
  prefix: string,
  quant?: LinearQuant,
): Promise<string> {
  const C = dims.hiddenSize;
  const numHeads = { int: dims.numHeads };
  const quantized = quant !== undefined && quant.dtype !== 'fp32';
  const qkvName = `${prefix}.attn.qkv.weight`;
  const qkvBiasName = `${prefix}.attn.qkv.bias`;
  let heads: string;
  if (!dims.qkNormalization && !quantized) {
    heads = await fusedAttention(g, dims, weights, x, qkvName, dims.qkvBias ? qkvBiasName : undefined);
  } else {
    const projected = await linearMatMul(g, weights, x, qkvName, 3 * C, C, quant);
    const qkvB = dims.qkvBias ? await initializerFrom(g, weights, qkvBiasName, [3 * C]) : undefined;
    const qkv = qkvB ? g.add(projected, qkvB) : projected;
    const [q, k, v] = g.node('Split', [qkv], { axis: { int: -1 }, num_outputs: { int: 3 } }, { outputs: 3 });
    if (dims.qkNormalization) {
      // q_norm / k_norm span all heads together (width C), before the head split.
      const qn = await rmsNorm(g, weights, q, `${prefix}.attn.q_norm`, C, dims.layerNormEps);
      const kn = await rmsNorm(g, weights, k, `${prefix}.attn.k_norm`, C, dims.layerNormEps);
      heads = g.op('MultiHeadAttention', [qn, kn, v], { num_heads: numHeads }, MS_DOMAIN);
    } else {
      heads = g.op('MultiHeadAttention', [q, k, v], { num_heads: numHeads }, MS_DOMAIN);
    }
  }
  return linear(g, weights, heads, `${prefix}.attn.proj`, C, C, quant);
}

/**
 * com.microsoft Attention over the qkv projection (torch weight [3C, C]: q, k, v blocks, head-major), in
 * ATTENTION_HEAD_GROUPS groups of heads (one group when the heads do not divide evenly); each group
 * takes its heads' q, k and v rows, and the groups' outputs are concatenated in head order.
 */
async function fusedAttention(
  g: GraphBuilder,
  dims: InternVitDims,
  weights: WeightSource,
  x: string,
  qkvName: string,
  qkvBiasName: string | undefined,
): Promise<string> {
  const C = dims.hiddenSize;
  const groups = dims.numHeads % ATTENTION_HEAD_GROUPS === 0 ? ATTENTION_HEAD_GROUPS : 1;
  const width = C / groups;
  const w = await weights.float32(qkvName);
  const b = qkvBiasName ? await weights.float32(qkvBiasName) : new Float32Array(3 * C);
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
