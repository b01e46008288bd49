/**
 * InternVLChatModel.pixel_shuffle and mlp1's tensors (modeling_internvl_chat.py); mlp1 itself is in
 * ./vision-tower.ts.
 */
import { InternVLError } from '../errors.js';
import type { GraphBuilder } from '../onnx/graph.js';
import type { TensorSpec } from './weights.js';

export type PixelShuffleVersion = 'v1' | 'v2';

export interface PixelShuffleShape {
  /** Patch-grid side (32 at 448 px). */
  grid: number;
  /** Channels per patch (ViT hidden size). */
  channels: number;
  /** downsample_ratio, 1/k for an integer k (0.5 in InternVL 2.5). */
  ratio: number;
  version: PixelShuffleVersion;
}

/** Patches merged per output side (2 for ratio 0.5); throws when the ratio does not fit the grid. */
export function shuffleFactor(shape: Pick<PixelShuffleShape, 'grid' | 'ratio'>): number {
  const k = Math.round(1 / shape.ratio);
  if (!(shape.ratio > 0) || Math.abs(k * shape.ratio - 1) > 1e-9 || shape.grid % k !== 0) {
    throw new InternVLError(
      'UNSUPPORTED',
      `downsample_ratio ${shape.ratio} does not evenly shuffle the ${shape.grid}x${shape.grid} patch grid`,
    );
  }
  return k;
}

/**
 * [N, grid², C] (row-major patches) → [N, (grid/k)², k²·C]. v2: output token t = i·(grid/k) + j holds
 * patches (k·i + di, k·j + dj) for di, then dj, ascending; v1: the same tokens in column-major order
 * (t = j·(grid/k) + i), as the official code without its final permute.
 */
export function pixelShuffle(g: GraphBuilder, x: string, shape: PixelShuffleShape): string {
  const k = shuffleFactor(shape);
  const side = shape.grid / k;
  const C = shape.channels;
  // Axes: [N, i, di, j, dj, C].
  const split = g.reshape(x, [0, side, k, side, k, C]);
  const perm = shape.version === 'v2' ? [0, 1, 3, 2, 4, 5] : [0, 3, 1, 2, 4, 5];
  return g.reshape(g.transpose(split, perm), [0, side * side, k * k * C]);
}

export interface ProjectorDims {
  /** Input width of mlp1: k²·C_vit (4·C for ratio 0.5). */
  inputSize: number;
  /** LLM hidden size. */
  llmHiddenSize: number;
}

export function projectorTensorSpecs(dims: ProjectorDims): TensorSpec[] {
  const { inputSize: I, llmHiddenSize: D } = dims;
  return [
    { name: 'mlp1.0.weight', shape: [I] },
    { name: 'mlp1.0.bias', shape: [I] },
    { name: 'mlp1.1.weight', shape: [D, I] },
    { name: 'mlp1.1.bias', shape: [D] },
    { name: 'mlp1.3.weight', shape: [D, D] },
    { name: 'mlp1.3.bias', shape: [D] },
  ];
}
