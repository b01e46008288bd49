/**
 * The vision tower of InternVLChatModel.extract_feature, written once: InternViT up to select_layer →
 * drop CLS → pixel shuffle → mlp1, over VisionOps (the inference graph, models/internvit-graph.ts, or
 * training's differentiable ops, train/vision-ops.ts).
 */
import { imageSize as configImageSize, type ModelConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import {
  type InternVitDims,
  type InternVitOutputs,
  internVitDimsFromConfig,
  internVitEncoder,
  layersForSelectLayer,
  type VisionOps,
} from './internvit.js';
import { type PixelShuffleVersion, pixelShuffle, shuffleFactor } from './projector.js';

export interface VisionDims {
  vit: InternVitDims;
  /** Index into the L+1 hidden states (-1 = last layer). */
  selectLayer: number;
  downsampleRatio: number;
  psVersion: PixelShuffleVersion;
  llmHiddenSize: number;
  /** Tile side fed to the model: force_image_size ?? vision_config.image_size. */
  imageSize: number;
}

export function visionDimsFromConfig(config: ModelConfig): VisionDims {
  return {
    vit: internVitDimsFromConfig(config.vision_config),
    selectLayer: config.select_layer,
    downsampleRatio: config.downsample_ratio,
    psVersion: config.ps_version,
    llmHiddenSize: config.llm_config.hidden_size,
    imageSize: configImageSize(config),
  };
}

/** Geometry of the graph for one tile size. */
export interface VisionGeometry {
  imageSize: number;
  /** Patch-grid side g. */
  grid: number;
  /** LLM tokens per tile, (g/k)². */
  tokensPerTile: number;
  /** Encoder layers built for select_layer. */
  layers: number;
}

export function visionGeometry(dims: VisionDims, imageSize = dims.imageSize): VisionGeometry {
  const p = dims.vit.patchSize;
  if (!Number.isInteger(imageSize) || imageSize < p || imageSize % p !== 0) {
    throw new InternVLError(
      'BAD_INPUT',
      `image size ${imageSize} is not a positive multiple of the patch size ${p}`,
    );
  }
  const grid = imageSize / p;
  const k = shuffleFactor({ grid, ratio: dims.downsampleRatio });
  return {
    imageSize,
    grid,
    tokensPerTile: (grid / k) ** 2,
    layers: layersForSelectLayer(dims.vit.numLayers, dims.selectLayer),
  };
}

export interface VisionTowerOutputs extends InternVitOutputs {
  /** [N, 1 + g², C] hidden_states[select_layer]. */
  hidden: string;
  /** [N, tokens, k²·C] after dropping the class token and pixel shuffle. */
  shuffled: string;
  /** [N, tokens, D_llm] the image features the LLM reads. */
  imageEmbeds: string;
}

/** The vision tower over `ops` for tiles of the geometry `geo`. */
export async function visionTower(
  ops: VisionOps,
  dims: VisionDims,
  geo: VisionGeometry,
): Promise<VisionTowerOutputs> {
  const { g } = ops;
  const C = dims.vit.hiddenSize;
  const vit = await internVitEncoder(ops, dims.vit, geo.layers);
  const hidden = geo.layers === 0 ? vit.embeddings : vit.layers[geo.layers - 1];
  const patches = g.slice(hidden, [1], [1 + geo.grid * geo.grid], [1]);
  const shuffled = pixelShuffle(g, patches, {
    grid: geo.grid,
    channels: C,
    ratio: dims.downsampleRatio,
    version: dims.psVersion,
  });
  // mlp1: LayerNorm (eps 1e-5, torch default) → Linear → exact GELU → Linear.
  const k = shuffleFactor({ grid: geo.grid, ratio: dims.downsampleRatio });
  const I = k * k * C;
  const D = dims.llmHiddenSize;
  const normed = await ops.layerNorm(shuffled, 'mlp1.0', 1e-5);
  const projected = ops.gelu(await ops.linear(normed, 'mlp1.1', D, I, true));
  const imageEmbeds = await ops.linear(projected, 'mlp1.3', D, D, true);
  return { ...vit, hidden, shuffled, imageEmbeds };
}
