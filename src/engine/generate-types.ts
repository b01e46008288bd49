/**
 * What a generate call takes, reports while it runs, and returns (engine/generate.ts), and what the
 * Generator is built on.
 */
import type { DecoderRunner } from './decoder.js';
import type { GrammarProvider, ResponseFormat } from './grammar-types.js';
import type { SampledToken, SamplingParams } from './sampler.js';

/** One image of a request, in prompt order: its tiles, and a key naming its content. */
export interface ImageRef {
  /** Content key (e.g. a hash of the pixels and tiling); equal keys mean equal features. */
  key: string;
  numTiles: number;
  /** [numTiles, 3, S, S]; may be omitted when the features are known to be cached. */
  pixelValues?: Float32Array;
}

export interface GenerateRequest {
  inputIds: number[];
  images: ImageRef[];
  /** Keep the KV cache under this id for the next call of the same conversation. */
  sessionId?: string;
  sampling: SamplingParams;
  maxNewTokens: number;
  /** Generated ids that end generation (the id itself is returned). */
  endTokenIds: number[];
  /**
   * Constrains the output to this format: each step's logits are masked to the tokens the grammar
   * allows, end tokens only once the text is complete; generation stops ('stop') when the grammar
   * admits nothing more.
   */
  responseFormat?: ResponseFormat;
}

export type FinishReason = 'stop' | 'length' | 'abort';

/** What a generate call reports while it runs: each chosen token, and vision-encoding progress. */
export type GenerateEvent =
  | { type: 'token'; token: SampledToken }
  | { type: 'encode'; done: number; total: number }
  /** Prompt tokens prefilled so far of those not reused; sent only for prompts longer than one chunk. */
  | { type: 'prefill'; done: number; total: number };

export interface GenerateStats {
  promptTokens: number;
  /** Prompt tokens whose KV came from the session's earlier turns. */
  reusedTokens: number;
  /** Tiles run through the vision encoder for this call. */
  encodedTiles: number;
}

export interface GenerateResult {
  tokens: SampledToken[];
  finishReason: FinishReason;
  stats: GenerateStats;
}

/** What a Generator runs on: the decoder, the vision encoder, and its limits and caches. */
export interface GeneratorDeps {
  decoder: DecoderRunner;
  imgContextId: number;
  tokensPerTile: number;
  /** Values per tile of pixel input (3·S·S). */
  tileValues: number;
  encode: (pixelValues: Float32Array, numTiles: number) => Promise<Float32Array>;
  featureCacheBytes?: number;
  /** Most sequences decoded together; newcomers wait for a free place. Default 16. */
  maxBatchSize?: number;
  /** Longest prefill chunk per scheduler step; default: the decoder runner's prefillChunk. */
  prefillChunk?: number;
  /** Bytes of finished prompts' KV kept for later requests that start the same way (0 = off, the default). */
  prefixCacheBytes?: number;
  /** Compiles response formats into matchers; requests with a responseFormat fail without it. */
  grammar?: GrammarProvider;
}
