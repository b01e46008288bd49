/**
 * The vision side of the engine: InternViT → drop CLS → pixel shuffle → mlp1 as one ONNX graph,
 * and a runner that encodes image tiles with it.
 */

import { InternVLError } from '../errors.js';
import { internVitTensorSpecs } from '../models/internvit.js';
import { InferenceVisionOps } from '../models/internvit-graph.js';
import { projectorTensorSpecs, shuffleFactor } from '../models/projector.js';
import { type VisionDims, type VisionGeometry, visionGeometry, visionTower } from '../models/vision-tower.js';
import { checkTensorShapes, type WeightSource } from '../models/weights.js';
import { type Graph, GraphBuilder } from '../onnx/graph.js';
import { checkWeightDtype, type Int8Kernel, type WeightDtype } from '../onnx/quantize.js';
import { defaultInt8Kernel } from './cpu.js';
import type * as ort from './ort.js';
import { Tensor } from './ort.js';
import { type GraphCacheOptions, sessionForGraph } from './session.js';

export {
  type VisionDims,
  type VisionGeometry,
  visionDimsFromConfig,
  visionGeometry,
} from '../models/vision-tower.js';

/** Graph input and output names. */
export const VISION_IO = {
  pixelValues: 'pixel_values',
  /** [N, tokens, D_llm] mlp1 output. */
  imageEmbeds: 'image_embeds',
  /** [N, 1 + g², C] hidden_states[select_layer] incl. the class token (the last hidden state for -1). */
  hiddenState: 'vit_hidden_state',
  /** [N, tokens, k²·C] after dropping the class token and pixel shuffle. */
  pixelShuffle: 'pixel_shuffle',
  /** Debug graphs only: [N, 1 + g², C] embedding output and the output of each layer i. */
  embeddings: 'vit_embeddings',
  layer: (i: number) => `vit_layer_${i}`,
} as const;

export interface VisionGraphOptions {
  /** Tile side; default dims.imageSize. The position embedding is resized to it at build time. */
  imageSize?: number;
  /** Also output the embeddings and every layer's output (to localise numeric differences). */
  debugOutputs?: boolean;
  /** Storage of the encoder layers' linear weights (default fp32; mlp1 stays fp32). */
  vitDtype?: WeightDtype;
  /** int8 weights: the integer kernel (default: the one exact on this CPU, cpu.ts). */
  int8Kernel?: Int8Kernel;
}

/** Checks every needed tensor's presence and shape (BAD_CHECKPOINT naming it), then builds the graph. */
export async function buildVisionGraph(
  dims: VisionDims,
  weights: WeightSource,
  options: VisionGraphOptions = {},
): Promise<Graph> {
  const geo = visionGeometry(dims, options.imageSize);
  const C = dims.vit.hiddenSize;
  const k = shuffleFactor({ grid: geo.grid, ratio: dims.downsampleRatio });
  const projector = { inputSize: k * k * C, llmHiddenSize: dims.llmHiddenSize };
  checkTensorShapes(weights, [
    ...internVitTensorSpecs(dims.vit, geo.layers),
    ...projectorTensorSpecs(projector),
  ]);

  const g = new GraphBuilder('internvl_vision');
  const S = geo.imageSize;
  const tokens = 1 + geo.grid * geo.grid;
  const pixels = g.input(VISION_IO.pixelValues, 'float32', ['num_tiles', dims.vit.numChannels, S, S]);
  const vitDtype = options.vitDtype ?? 'fp32';
  const ops = new InferenceVisionOps(g, dims.vit, weights, pixels, {
    imageSize: S,
    linearQuant:
      vitDtype === 'fp32'
        ? undefined
        : { dtype: vitDtype, int8Kernel: options.int8Kernel ?? defaultInt8Kernel() },
  });
  const { hidden, shuffled, imageEmbeds: embeds, ...vit } = await visionTower(ops, dims, geo);

  g.output(embeds, VISION_IO.imageEmbeds, 'float32', ['num_tiles', geo.tokensPerTile, dims.llmHiddenSize]);
  g.output(hidden, VISION_IO.hiddenState, 'float32', ['num_tiles', tokens, C]);
  g.output(shuffled, VISION_IO.pixelShuffle, 'float32', ['num_tiles', geo.tokensPerTile, k * k * C]);
  if (options.debugOutputs) {
    g.output(vit.embeddings, VISION_IO.embeddings, 'float32', ['num_tiles', tokens, C]);
    vit.layers.forEach((layer, i) => {
      g.output(layer, VISION_IO.layer(i), 'float32', ['num_tiles', tokens, C]);
    });
  }
  return g.graph;
}

export interface VisionEncoderOptions {
  /** Intra-op threads; default: the number of cores. */
  threads?: number;
  /** Keep the built graph in this on-disk cache entry. */
  cache?: GraphCacheOptions;
  /** Tile side; default dims.imageSize. */
  imageSize?: number;
  /**
   * Tiles per session run. Default 1: one tile's activations stay in cache, and larger batches
   * measured 19–25 % slower per tile.
   */
  tilesPerRun?: number;
  /** Encoder linear weights: fp32 (default) or int8 (DynamicQuantizeMatMul, about 2× faster on CPU). */
  vitDtype?: WeightDtype;
  /** int8 weights: the integer kernel (default: the one exact on this CPU, cpu.ts). */
  int8Kernel?: Int8Kernel;
}

/** Owns the vision ORT session; encodes [N, 3, S, S] float32 tiles. */
export class VisionEncoder {
  readonly dims: VisionDims;
  readonly geometry: VisionGeometry;
  readonly tilesPerRun: number;
  #session: ort.InferenceSession | undefined;

  private constructor(
    dims: VisionDims,
    geometry: VisionGeometry,
    session: ort.InferenceSession,
    tilesPerRun: number,
  ) {
    this.dims = dims;
    this.geometry = geometry;
    this.#session = session;
    this.tilesPerRun = tilesPerRun;
  }

  static async create(
    dims: VisionDims,
    weights: WeightSource,
    options: VisionEncoderOptions = {},
  ): Promise<VisionEncoder> {
    const tilesPerRun = options.tilesPerRun ?? 1;
    if (!Number.isInteger(tilesPerRun) || tilesPerRun < 1) {
      throw new InternVLError('BAD_INPUT', `tilesPerRun must be a positive integer, got ${tilesPerRun}`);
    }
    const vitDtype = checkWeightDtype('vitDtype', options.vitDtype ?? 'fp32', ['fp32', 'int8']);
    const geometry = visionGeometry(dims, options.imageSize);
    const session = await sessionForGraph(
      () =>
        buildVisionGraph(dims, weights, {
          imageSize: geometry.imageSize,
          vitDtype,
          int8Kernel: options.int8Kernel,
        }),
      options,
    );
    return new VisionEncoder(dims, geometry, session, tilesPerRun);
  }

  /** An encoder over a session already opened on a graph from buildVisionGraph (e.g. in a browser). */
  static fromSession(
    dims: VisionDims,
    session: ort.InferenceSession,
    options: { imageSize?: number; tilesPerRun?: number } = {},
  ): VisionEncoder {
    const tilesPerRun = options.tilesPerRun ?? 1;
    if (!Number.isInteger(tilesPerRun) || tilesPerRun < 1) {
      throw new InternVLError('BAD_INPUT', `tilesPerRun must be a positive integer, got ${tilesPerRun}`);
    }
    return new VisionEncoder(dims, visionGeometry(dims, options.imageSize), session, tilesPerRun);
  }

  /** Values per tile of the pixel input (3·S·S). */
  get tileSize(): number {
    return this.dims.vit.numChannels * this.geometry.imageSize ** 2;
  }

  /** Image embeddings [N, tokensPerTile, D_llm], tiles in input order. */
  encode(pixelValues: Float32Array, numTiles: number): Promise<Float32Array> {
    return this.#run(VISION_IO.imageEmbeds, pixelValues, numTiles);
  }

  /** hidden_states[select_layer] [N, 1 + g², C] including the class token (debugging). */
  hiddenState(pixelValues: Float32Array, numTiles: number): Promise<Float32Array> {
    return this.#run(VISION_IO.hiddenState, pixelValues, numTiles);
  }

  /** Pixel-shuffled features [N, tokensPerTile, k²·C] (debugging). */
  pixelShuffle(pixelValues: Float32Array, numTiles: number): Promise<Float32Array> {
    return this.#run(VISION_IO.pixelShuffle, pixelValues, numTiles);
  }

  async release(): Promise<void> {
    const session = this.#session;
    this.#session = undefined;
    await session?.release();
  }

  async #run(output: string, pixelValues: Float32Array, numTiles: number): Promise<Float32Array> {
    if (!this.#session) throw new InternVLError('BAD_INPUT', 'VisionEncoder was released');
    this.#checkInput(pixelValues, numTiles);
    const S = this.geometry.imageSize;
    const channels = this.dims.vit.numChannels;
    const tileIn = this.tileSize;
    let out: Float32Array | undefined;
    let tileOut = 0;
    for (let start = 0; start < numTiles; start += this.tilesPerRun) {
      const count = Math.min(this.tilesPerRun, numTiles - start);
      const input = pixelValues.subarray(start * tileIn, (start + count) * tileIn);
      const feeds = { [VISION_IO.pixelValues]: new Tensor('float32', input, [count, channels, S, S]) };
      const result = await this.#session.run(feeds, [output]);
      const data = result[output].data as Float32Array;
      if (!out) {
        tileOut = data.length / count;
        out = new Float32Array(tileOut * numTiles);
      }
      out.set(data, start * tileOut);
      result[output].dispose();
    }
    return out as Float32Array;
  }

  #checkInput(pixelValues: Float32Array, numTiles: number): void {
    if (!(pixelValues instanceof Float32Array)) {
      throw new InternVLError('BAD_INPUT', 'pixel values must be a Float32Array');
    }
    if (!Number.isInteger(numTiles) || numTiles < 1) {
      throw new InternVLError('BAD_INPUT', `number of tiles must be a positive integer, got ${numTiles}`);
    }
    const S = this.geometry.imageSize;
    const expected = numTiles * this.tileSize;
    if (pixelValues.length !== expected) {
      throw new InternVLError(
        'BAD_INPUT',
        `pixel values hold ${pixelValues.length} floats; ${numTiles} tile(s) of [${this.dims.vit.numChannels}, ${S}, ${S}] need ${expected}`,
      );
    }
  }
}
