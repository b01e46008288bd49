/**
 * The engine in one thread: a checkpoint's vision encoder and language model, their ORT sessions and
 * the token-embedding table. `InternVLModel` runs this in a worker thread; tests may use it directly.
 */
import { type ModelConfig, numImageTokens } from '../config/model-config.js';
import { llmQuantization } from '../config/quantization-config.js';
import { InternVLError } from '../errors.js';
import { Checkpoint } from '../io/safetensors.js';
import { AWQ_LAYOUT } from '../models/awq.js';
import { gptqLayout } from '../models/gptq.js';
import { hfLayoutWeights, isHfLayout } from '../models/hf-layout.js';
import { loadModelConfig } from '../models/model-config.js';
import { packedWeights } from '../models/packed-weights.js';
import type { WeightSource } from '../models/weights.js';
import type { DecoderRunner } from './decoder.js';
import { scatterImageEmbeddings } from './embeddings.js';
import { type GenerateEvent, type GenerateRequest, type GenerateResult, Generator } from './generate.js';
import type { GrammarEngine } from './grammar.js';
import { grammarEngineForModel } from './grammar-files.js';
import type { ResponseFormat } from './grammar-types.js';
import { resolvePrecision } from './graph-plan.js';
import { greedyTokens, pixelKey } from './greedy.js';
import type { LlmPrecisionOptions, VitDtype, WeightDtype } from './precision.js';
import { createEngineRunners } from './runners.js';
import type { VisionEncoder } from './vision.js';

export interface EngineOptions extends LlmPrecisionOptions {
  /** Shorthand for llmDtype (kept for compatibility); llmDtype wins when both are given. */
  dtype?: WeightDtype;
  /** ViT encoder linear weights: fp32 (default) or int8. */
  vitDtype?: VitDtype;
  /** Intra-op threads; default: the number of cores. */
  threads?: number;
  /**
   * Bytes of finished prompts' KV cache kept so a later request that starts the same way (the same
   * conversation resent with a new question, the same image) prefills only the rest; 0 turns it off.
   * Default DEFAULT_PREFIX_CACHE_BYTES.
   */
  prefixCacheBytes?: number;
  /**
   * Where built graphs are cached (default: $INTERNVL_CACHE/graphs or ~/.cache/internvl-ts/graphs);
   * false builds them in memory on every load (only for checkpoints under 2 GiB in fp32).
   */
  cacheDir?: string | false;
}

/** Default bound of the cross-request prompt cache: about 10 k tokens of the 1B model's KV. */
export const DEFAULT_PREFIX_CACHE_BYTES = 256 * 1024 * 1024;

export interface ImageInput {
  pixelValues: Float32Array;
  numTiles: number;
}

/**
 * The checkpoint's tensors for the model builders. An AWQ or GPTQ checkpoint (config.json
 * quantization_config) reads through models/packed-weights.ts: its packed LLM linears give exact fp32
 * weights or MatMulNBits blocks. A transformers-native checkpoint reads through models/hf-layout.ts
 * under the original names.
 */
export function checkpointWeights(checkpoint: Checkpoint, config: ModelConfig): WeightSource {
  const stored = {
    has: (name: string) => checkpoint.has(name),
    shape: (name: string) => checkpoint.info(name).shape,
    float32: (name: string) => checkpoint.readFloat32(name),
    int32: (name: string) => checkpoint.readInt32(name),
    bfloat16: async (name: string) => {
      if (checkpoint.info(name).dtype !== 'BF16') return undefined;
      const bytes = await checkpoint.readBytes(name);
      return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
    },
    rows: (name: string) => checkpoint.rows(name),
  };
  const names = checkpoint.names();
  if (config.checkpoint_layout !== 'transformers' && isHfLayout(names)) {
    throw new InternVLError(
      'BAD_CHECKPOINT',
      `${checkpoint.source}: the tensors are named as transformers' InternVLForConditionalGeneration (vision_tower.*), but config.json describes an InternVLChatModel`,
    );
  }
  const base = config.checkpoint_layout === 'transformers' ? hfLayoutWeights(stored, names) : stored;
  const quantization = llmQuantization(config);
  if (quantization) {
    const layout = quantization.method === 'awq' ? AWQ_LAYOUT : gptqLayout(quantization.zeroPointOffset);
    return packedWeights(base, layout, quantization.groupSize);
  }
  const packed = names.find((n) => n.endsWith('.qweight'));
  if (packed !== undefined) {
    throw new InternVLError(
      'BAD_CHECKPOINT',
      `${checkpoint.source}: tensor ${packed} is a packed quantised weight, but config.json has no quantization_config`,
    );
  }
  return base;
}

export class EngineCore {
  private constructor(
    readonly config: ModelConfig,
    private readonly checkpoint: Checkpoint,
    private readonly vision: VisionEncoder,
    private readonly decoder: DecoderRunner,
    private readonly imgContextId: number,
    dir: string,
    prefixCacheBytes: number,
  ) {
    // Loaded on the first request with a response format (XGrammar and the vocabulary).
    this.grammar = grammarEngineForModel(dir, decoder.dims.vocabSize);
    this.generator = new Generator({
      grammar: this.grammar,
      decoder,
      imgContextId,
      tokensPerTile: numImageTokens(config),
      tileValues: vision.tileSize,
      encode: (pixelValues, numTiles) => vision.encode(pixelValues, numTiles),
      prefixCacheBytes,
    });
  }

  private readonly generator: Generator;
  private readonly grammar: GrammarEngine;

  /**
   * Loads a checkpoint folder. `onProgress(done, total)` counts the components loaded (vision encoder,
   * language model); the first load of a checkpoint builds their graphs, which takes a while.
   */
  static async load(
    dir: string,
    options: EngineOptions = {},
    onProgress?: (done: number, total: number) => void,
  ): Promise<EngineCore> {
    const prefixCacheBytes = options.prefixCacheBytes ?? DEFAULT_PREFIX_CACHE_BYTES;
    if (!Number.isSafeInteger(prefixCacheBytes) || prefixCacheBytes < 0) {
      throw new InternVLError(
        'BAD_INPUT',
        `prefixCacheBytes must be a non-negative integer, got ${prefixCacheBytes}`,
      );
    }
    const config = await loadModelConfig(dir);
    const precision = await resolvePrecision(options, config);
    const checkpoint = await Checkpoint.open(dir);
    try {
      const weights = checkpointWeights(checkpoint, config);
      const { vision, decoder } = await createEngineRunners(config, checkpoint, weights, {
        precision,
        threads: options.threads,
        cacheDir: options.cacheDir,
        onProgress,
      });
      const imgContextId = await imageContextTokenId(dir);
      return new EngineCore(config, checkpoint, vision, decoder, imgContextId, dir, prefixCacheBytes);
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

  /** The first `maxNewTokens` greedy tokens (the generation path with greedy sampling; no end token stops it). */
  async generateGreedy(inputIds: number[], maxNewTokens: number, image?: ImageInput): Promise<number[]> {
    if (maxNewTokens === 0) return [];
    return greedyTokens(
      this.generator,
      inputIds,
      maxNewTokens,
      image && [{ key: pixelKey(image.pixelValues), ...image }],
    );
  }

  /** Generates one continuation (see generate.ts); `onEvent` sees each token and encoding progress. */
  generate(
    request: GenerateRequest,
    callId: number,
    onEvent: (event: GenerateEvent) => void,
  ): Promise<GenerateResult> {
    return this.generator.generate(request, callId, onEvent);
  }

  /**
   * Checks and compiles a response format against the vocabulary (cached), so a bad one is reported
   * before generation starts; returns how long the compile took (0 when it was cached).
   */
  compileGrammar(format: ResponseFormat): Promise<{ compileMs: number }> {
    return this.grammar.compileTimed(format);
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
