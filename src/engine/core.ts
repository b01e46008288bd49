/**
 * The engine in one thread: a checkpoint's vision encoder and language model, their ORT sessions and
 * the token-embedding table. `InternVLModel` runs this in a worker thread; tests may use it directly.
 */
import { loadModelConfig, type ModelConfig, numImageTokens } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { Checkpoint } from '../io/safetensors.js';
import type { WeightSource } from '../models/weights.js';
import { DecoderRunner, decoderDimsFromConfig, generateGreedy, scatterImageEmbeddings } from './decoder.js';
import { type GenerateEvent, type GenerateRequest, type GenerateResult, Generator } from './generate.js';
import { defaultGraphCacheDir, graphCacheKey } from './graph-cache.js';
import { resolvePrecision } from './graph-plan.js';
import {
  type LlmPrecisionOptions,
  llmCacheTag,
  type VitDtype,
  vitCacheTag,
  type WeightDtype,
} from './precision.js';
import { VisionEncoder, visionDimsFromConfig } from './vision.js';

export interface EngineOptions extends LlmPrecisionOptions {
  /** Shorthand for llmDtype (kept for compatibility); llmDtype wins when both are given. */
  dtype?: WeightDtype;
  /** ViT encoder linear weights: fp32 (default) or int8. */
  vitDtype?: VitDtype;
  /** Intra-op threads; default: the number of cores. */
  threads?: number;
  /**
   * Where built graphs are cached (default: $INTERNVL_CACHE/graphs or ~/.cache/internvl-ts/graphs);
   * false builds them in memory on every load (only for checkpoints under 2 GiB in fp32).
   */
  cacheDir?: string | false;
}

export interface ImageInput {
  pixelValues: Float32Array;
  numTiles: number;
}

export function checkpointWeights(checkpoint: Checkpoint): WeightSource {
  return {
    has: (name) => checkpoint.has(name),
    shape: (name) => checkpoint.info(name).shape,
    float32: (name) => checkpoint.readFloat32(name),
    bfloat16: async (name) => {
      if (checkpoint.info(name).dtype !== 'BF16') return undefined;
      const bytes = await checkpoint.readBytes(name);
      return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
    },
    rows: (name) => checkpoint.rows(name),
  };
}

export class EngineCore {
  private constructor(
    readonly config: ModelConfig,
    private readonly checkpoint: Checkpoint,
    private readonly vision: VisionEncoder,
    private readonly decoder: DecoderRunner,
    private readonly imgContextId: number,
  ) {
    this.generator = new Generator({
      decoder,
      imgContextId,
      tokensPerTile: numImageTokens(config),
      tileValues: vision.tileSize,
      encode: (pixelValues, numTiles) => vision.encode(pixelValues, numTiles),
    });
  }

  private readonly generator: Generator;

  /**
   * Loads a checkpoint folder. `onProgress(done, total)` counts the components loaded (vision encoder,
   * language model); the first load of a checkpoint builds their graphs, which takes a while.
   */
  static async load(
    dir: string,
    options: EngineOptions = {},
    onProgress?: (done: number, total: number) => void,
  ): Promise<EngineCore> {
    const { vitDtype, ...precision } = await resolvePrecision(options);
    const config = await loadModelConfig(dir);
    const checkpoint = await Checkpoint.open(dir);
    try {
      const weights = checkpointWeights(checkpoint);
      const threads = options.threads;
      const cacheDir = options.cacheDir === undefined ? defaultGraphCacheDir() : options.cacheDir;
      const cacheFor = (component: string, dims: unknown, tag: Record<string, unknown>) =>
        cacheDir === false
          ? undefined
          : {
              dir: cacheDir,
              key: graphCacheKey(checkpoint.files(), { component, dims, ...tag }),
              source: { files: checkpoint.files(), component, dtype: String(tag.dtype) },
            };
      onProgress?.(0, 2);
      const visionDims = visionDimsFromConfig(config);
      const vision = await VisionEncoder.create(visionDims, weights, {
        threads,
        vitDtype,
        int8Kernel: precision.int8Kernel,
        cache: cacheFor('vision', visionDims, vitCacheTag(vitDtype, precision.int8Kernel)),
      });
      onProgress?.(1, 2);
      const decoderDims = decoderDimsFromConfig(config);
      const decoder = await DecoderRunner.create(decoderDims, weights, {
        threads,
        ...precision,
        cache: cacheFor('decoder', decoderDims, llmCacheTag(precision, precision.llmDtype)),
        prefillCache: cacheFor('decoder', decoderDims, llmCacheTag(precision, precision.prefillDtype)),
      });
      const imgContextId = await imageContextTokenId(dir);
      onProgress?.(2, 2);
      return new EngineCore(config, checkpoint, vision, decoder, imgContextId);
    } catch (err) {
      await checkpoint.close();
      throw err;
    }
  }

  get numImageTokens(): number {
    return numImageTokens(this.config);
  }

  encodeImages(pixelValues: Float32Array, numTiles: number): Promise<Float32Array> {
    return this.vision.encode(pixelValues, numTiles);
  }

  visionHiddenState(pixelValues: Float32Array, numTiles: number): Promise<Float32Array> {
    return this.vision.hiddenState(pixelValues, numTiles);
  }

  /** Token embeddings of `inputIds` with the images' features written into the `<IMG_CONTEXT>` rows. */
  private async inputEmbeddings(inputIds: ArrayLike<number>, image?: ImageInput): Promise<Float32Array> {
    const embeds = this.decoder.embed(inputIds);
    if (image) {
      const features = await this.encodeImages(image.pixelValues, image.numTiles);
      scatterImageEmbeddings(embeds, inputIds, this.imgContextId, features);
    }
    return embeds;
  }

  async forwardLogits(inputIds: ArrayLike<number>, image?: ImageInput): Promise<Float32Array> {
    const embeds = await this.inputEmbeddings(inputIds, image);
    const seq = this.decoder.newSequence();
    return this.decoder.forward(seq, embeds, inputIds.length, { allLogits: true });
  }

  async generateGreedy(
    inputIds: ArrayLike<number>,
    maxNewTokens: number,
    image?: ImageInput,
  ): Promise<number[]> {
    const embeds = await this.inputEmbeddings(inputIds, image);
    return generateGreedy(this.decoder, embeds, inputIds.length, maxNewTokens);
  }

  /** Generates one continuation (see generate.ts); `onEvent` sees each token and encoding progress. */
  generate(
    request: GenerateRequest,
    callId: number,
    onEvent: (event: GenerateEvent) => void,
  ): Promise<GenerateResult> {
    return this.generator.generate(request, callId, onEvent);
  }

  abort(callId: number): void {
    this.generator.abort(callId);
  }

  releaseSession(sessionId: string): boolean {
    return this.generator.releaseSession(sessionId);
  }

  async close(): Promise<void> {
    await this.vision.release();
    await this.decoder.release();
    await this.checkpoint.close();
  }
}

/** The id of `<IMG_CONTEXT>` from the checkpoint's tokenizer files. */
async function imageContextTokenId(dir: string): Promise<number> {
  const { loadTokenizer } = await import('../io/tokenizer-files.js');
  const tokenizer = await loadTokenizer(dir);
  const id = tokenizer.tokenToId('<IMG_CONTEXT>');
  if (id === undefined)
    throw new InternVLError('BAD_TOKENIZER', `${dir}: the tokenizer has no <IMG_CONTEXT> token`);
  return id;
}
