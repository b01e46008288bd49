/**
 * InternVL in a browser: loads a folder written by `internvl convert --target web` from a URL
 * (downloads with progress, kept in the Cache API for offline reloads), opens its graphs on
 * onnxruntime-web (WASM, multi-threaded when the page is cross-origin isolated, or WebGPU) and
 * generates with the same scheduler, sampler, tiling and prompt code as Node. Imports nothing
 * Node-only; the browser bundle maps ../engine/ort.js to onnxruntime-web.
 */
import { parseGenerationConfig } from '../config/generation-config.js';
import { type ModelConfig, numImageTokens } from '../config/model-config.js';
import { DecoderRunner, decoderDimsFromConfig } from '../engine/decoder.js';
import { type FinishReason, type GenerateRequest, Generator } from '../engine/generate.js';
import { GrammarEngine } from '../engine/grammar.js';
import type { ResponseFormat } from '../engine/grammar-types.js';
import { grammarVocab } from '../engine/grammar-vocab.js';
import * as ort from '../engine/ort.js';
import { GREEDY_SAMPLING, samplingParams } from '../engine/sampler.js';
import { VisionEncoder, visionDimsFromConfig } from '../engine/vision.js';
import { InternVLError } from '../errors.js';
import { parseModelConfig } from '../models/model-config.js';
import {
  type GenerationConfigInput,
  parseGenerationConfigInput,
  type ResolvedGenerationConfig,
  resolveGenerationConfig,
} from '../pipeline/generation-config.js';
import type { RgbImage } from '../preprocess/image.js';
import { toPixelValues } from '../preprocess/pixels.js';
import { dynamicPreprocess } from '../preprocess/tiles.js';
import { buildChatPrompt, type HistoryEntry, postprocessResponse } from '../text/prompt.js';
import { StreamDecoder } from '../text/stream-decoder.js';
import { getTemplate, type Template } from '../text/templates.js';
import { createTokenizer } from '../text/tokenizer.js';
import type { Tokenizer } from '../text/types.js';
import { fetchJsonNetworkFirst, openResponseCache } from './fetch-cache.js';
import {
  createWebSession,
  downloadAll,
  embeddingTable,
  joinUrl,
  type LoadProgress,
  type WebExecutionProvider,
} from './load-files.js';
import { parseWebManifest, WEB_MANIFEST_FILE, type WebGraphEntry, type WebManifest } from './manifest.js';

export type { LoadProgress, WebExecutionProvider } from './load-files.js';

export interface WebLoadOptions {
  /** Default 'wasm'. 'webgpu' needs navigator.gpu with an adapter (UNSUPPORTED otherwise). */
  executionProvider?: WebExecutionProvider;
  /** Where onnxruntime-web's .wasm/.mjs files are served (ort.env.wasm.wasmPaths). */
  wasmPaths?: string;
  /** WASM threads; default: up to 4 when the page is cross-origin isolated, else 1. */
  threads?: number;
  /** Cache API store for the model files; false: no caching. Default 'internvl-web-v1'. */
  cacheName?: string | false;
  onProgress?: (progress: LoadProgress) => void;
  /**
   * Where the page serves `@mlc-ai/web-xgrammar`'s `lib/index.js` (XGrammar, with its WebAssembly
   * inlined), for generation with a `responseFormat`; fetched on the first such request. Without it
   * such a request fails (UNSUPPORTED).
   */
  xgrammarUrl?: string;
}

export interface WebChatInput {
  question: string;
  /** One image, tiled as the official dynamic_preprocess (thumbnail on). */
  image?: RgbImage;
  /** Tile budget for the image (default 12). */
  maxTiles?: number;
  /** Earlier [question, answer] turns. */
  history?: readonly HistoryEntry[];
}

export interface WebChatChunk {
  /** New text since the last chunk. */
  text: string;
  tokenId: number;
}

export interface WebChatResult {
  text: string;
  tokenIds: number[];
  finishReason: FinishReason;
  promptTokens: number;
}

/** A page's WASM thread count: several only where SharedArrayBuffer is allowed (cross-origin isolation). */
export function defaultWasmThreads(): number {
  const g = globalThis as { crossOriginIsolated?: boolean; navigator?: { hardwareConcurrency?: number } };
  if (!g.crossOriginIsolated) return 1;
  return Math.max(1, Math.min(4, g.navigator?.hardwareConcurrency ?? 1));
}

/** Whether the page can use onnxruntime-web's WebGPU provider (a GPU adapter is available). */
export async function webGpuAvailable(): Promise<boolean> {
  const gpu = (globalThis as { navigator?: { gpu?: { requestAdapter(): Promise<unknown> } } }).navigator?.gpu;
  if (!gpu) return false;
  try {
    return (await gpu.requestAdapter()) != null;
  } catch {
    return false;
  }
}

let sessionSeq = 0;

export class WebInternVL {
  readonly #generator: Generator;
  readonly #vision: VisionEncoder;
  readonly #decoder: DecoderRunner;
  readonly #fileConfig: ReturnType<typeof parseGenerationConfig>;
  readonly #imgContextId: number;
  readonly #grammar: GrammarEngine;

  private constructor(
    readonly manifest: WebManifest,
    readonly config: ModelConfig,
    readonly tokenizer: Tokenizer,
    readonly template: Template,
    readonly executionProvider: WebExecutionProvider,
    vision: VisionEncoder,
    decoder: DecoderRunner,
    fileConfig: ReturnType<typeof parseGenerationConfig>,
    imgContextId: number,
    grammar: GrammarEngine,
  ) {
    this.#grammar = grammar;
    this.#vision = vision;
    this.#decoder = decoder;
    this.#fileConfig = fileConfig;
    this.#imgContextId = imgContextId;
    this.#generator = new Generator({
      grammar,
      decoder,
      imgContextId,
      tokensPerTile: numImageTokens(config),
      tileValues: vision.tileSize,
      encode: (pixelValues, numTiles) => vision.encode(pixelValues, numTiles),
      maxBatchSize: 4,
    });
  }

  /** Loads the web model folder at `baseUrl` (the folder holding internvl-web.json). */
  static async load(baseUrl: string, options: WebLoadOptions = {}): Promise<WebInternVL> {
    const provider = options.executionProvider ?? 'wasm';
    if (provider !== 'wasm' && provider !== 'webgpu') {
      throw new InternVLError(
        'BAD_INPUT',
        `executionProvider must be 'wasm' or 'webgpu', got ${String(provider)}`,
      );
    }
    if (provider === 'webgpu' && !(await webGpuAvailable())) {
      throw new InternVLError('UNSUPPORTED', 'WebGPU is not available in this browser (no GPU adapter)');
    }
    if (options.wasmPaths !== undefined) ort.env.wasm.wasmPaths = options.wasmPaths;
    ort.env.wasm.numThreads = options.threads ?? defaultWasmThreads();

    const cache =
      options.cacheName === false
        ? undefined
        : await openResponseCache(options.cacheName ?? 'internvl-web-v1');
    const manifestUrl = joinUrl(baseUrl, WEB_MANIFEST_FILE);
    const manifest = parseWebManifest(await fetchJsonNetworkFirst(manifestUrl, cache), manifestUrl);
    const files = new Map<string, Uint8Array>();
    await downloadAll(baseUrl, manifest, cache, options.onProgress, files);

    const text = (name: string) => {
      const bytes = files.get(name);
      return bytes === undefined ? undefined : new TextDecoder().decode(bytes);
    };
    const json = (name: string): unknown => {
      const t = text(name);
      if (t === undefined) return undefined;
      try {
        return JSON.parse(t);
      } catch (err) {
        throw new InternVLError('BAD_CONFIG', `${joinUrl(baseUrl, name)} is not valid JSON`, { cause: err });
      }
    };
    const configJson = json('config.json');
    if (configJson === undefined) {
      throw new InternVLError('BAD_CONFIG', `${manifestUrl} lists no config.json`);
    }
    const config = parseModelConfig(configJson, joinUrl(baseUrl, 'config.json'));
    const fileConfig = parseGenerationConfig(json('generation_config.json') ?? {}, 'generation_config.json');
    const tokenizerJson = json('tokenizer.json') as Record<string, unknown> | undefined;
    const tokenizer = createTokenizer({
      tokenizerJson,
      sentencePieceModel: files.get('tokenizer.model'),
      tokenizerConfig: json('tokenizer_config.json'),
      specialTokensMap: json('special_tokens_map.json'),
      addedTokens: json('added_tokens.json'),
      source: baseUrl,
    });
    const imgContextId = tokenizer.tokenToId('<IMG_CONTEXT>');
    if (imgContextId === undefined) {
      throw new InternVLError('BAD_TOKENIZER', `${baseUrl}: the tokenizer has no <IMG_CONTEXT> token`);
    }

    const open = async (graph: WebGraphEntry) => createWebSession(files, graph, provider);
    const visionDims = visionDimsFromConfig(config);
    const vision = VisionEncoder.fromSession(visionDims, await open(manifest.graphs.vision));
    const prefillGraph = manifest.graphs['decoder-prefill'];
    const decoder = DecoderRunner.fromSessions(
      decoderDimsFromConfig(config),
      {
        decoder: await open(manifest.graphs.decoder),
        prefill: prefillGraph ? await open(prefillGraph) : undefined,
      },
      embeddingTable(files.get(manifest.embeddings.path) as Uint8Array, manifest),
    );
    // Only what grammarVocab reads of tokenizer.json is kept (XGrammar loads on the first response format).
    const vocabHints = tokenizerJson && {
      decoder: tokenizerJson.decoder,
      model: {
        byte_fallback: (tokenizerJson.model as { byte_fallback?: unknown } | undefined)?.byte_fallback,
      },
      pre_tokenizer: tokenizerJson.pre_tokenizer,
      normalizer: tokenizerJson.normalizer,
    };
    const grammar = new GrammarEngine(
      async () => grammarVocab(tokenizer, vocabHints, decoder.dims.vocabSize),
      { xgrammarSource: options.xgrammarUrl },
    );
    files.clear();
    return new WebInternVL(
      manifest,
      config,
      tokenizer,
      getTemplate(config.template),
      provider,
      vision,
      decoder,
      fileConfig,
      imgContextId,
      grammar,
    );
  }

  /** The resolved generation settings for `input` (defaults from generation_config.json). */
  generationConfig(input?: GenerationConfigInput): ResolvedGenerationConfig {
    const tools = input?.tools;
    if (tools && tools.length > 0 && input?.toolChoice !== 'none') {
      throw new InternVLError(
        'UNSUPPORTED',
        'tools are not supported by the browser engine (its chat has no tool turns); use responseFormat, or pipeline() in Node',
      );
    }
    return resolveGenerationConfig(input, {
      fileConfig: this.#fileConfig,
      template: this.template,
      tokenizer: this.tokenizer,
    });
  }

  /**
   * Checks and compiles a response format against the vocabulary (cached), so that a bad one is
   * reported (InternVLError BAD_INPUT naming the problem) before generation; returns how long the
   * compile took (0 when it was cached). The first call also loads XGrammar and the vocabulary.
   */
  compileResponseFormat(format: ResponseFormat): Promise<{ compileMs: number }> {
    const parsed = parseGenerationConfigInput({ responseFormat: format }).responseFormat as ResponseFormat;
    return this.#grammar.compileTimed(parsed);
  }

  /**
   * Streams the answer to one chat turn: yields text as tokens arrive and returns the whole answer.
   * `signal` stops generation (finishReason 'abort').
   */
  async *chat(
    input: WebChatInput,
    generation: GenerationConfigInput = {},
    signal?: AbortSignal,
  ): AsyncGenerator<WebChatChunk, WebChatResult> {
    const config = this.generationConfig(generation);
    let numTiles: number | undefined;
    let pixelValues: Float32Array | undefined;
    if (input.image) {
      const { tiles } = dynamicPreprocess(input.image, {
        maxTiles: input.maxTiles ?? 12,
        useThumbnail: true,
      });
      numTiles = tiles.length;
      pixelValues = toPixelValues(tiles);
    }
    const { expandedPrompt } = buildChatPrompt({
      template: this.template,
      question: input.question,
      history: input.history && input.history.length > 0 ? input.history : null,
      numTiles,
      numImageToken: numImageTokens(this.config),
    });
    const inputIds = this.tokenizer.encode(expandedPrompt);
    const request: GenerateRequest = {
      inputIds,
      images: pixelValues && numTiles ? [{ key: `image-${++sessionSeq}`, numTiles, pixelValues }] : [],
      sampling: {
        ...samplingParams(config),
        logprobs: false,
        topLogprobs: 0,
      },
      maxNewTokens: config.maxNewTokens,
      endTokenIds: config.endTokenIds,
      ...(config.responseFormat ? { responseFormat: config.responseFormat } : {}),
    };
    const stream = new StreamDecoder(this.tokenizer, { skipSpecialTokens: config.skipSpecialTokens });
    const queue: WebChatChunk[] = [];
    let wake: (() => void) | undefined;
    const callId = ++sessionSeq;
    const onAbort = () => this.#generator.abort(callId);
    signal?.addEventListener('abort', onAbort);
    let settled = false;
    const done = this.#generator
      .generate(request, callId, (event) => {
        if (event.type !== 'token') return;
        const { token } = event;
        if (config.endTokenIds.includes(token.id)) return;
        queue.push({ text: stream.push(token.id), tokenId: token.id });
        wake?.();
      })
      .finally(() => {
        settled = true;
        wake?.();
      });
    if (signal?.aborted) onAbort();
    try {
      for (;;) {
        while (queue.length > 0) {
          const chunk = queue.shift() as WebChatChunk;
          if (chunk.text) yield chunk;
        }
        if (settled) break;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
      const result = await done;
      const tail = stream.flush();
      if (tail) yield { text: tail, tokenId: -1 };
      const ids = result.tokens.map((t) => t.id).filter((id) => !config.endTokenIds.includes(id));
      return {
        text: postprocessResponse(
          this.tokenizer.decode(ids, { skipSpecialTokens: config.skipSpecialTokens }),
          this.template,
        ),
        tokenIds: result.tokens.map((t) => t.id),
        finishReason: result.finishReason,
        promptTokens: inputIds.length,
      };
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Greedy continuation of `inputIds` (with the image's pixel values for its `<IMG_CONTEXT>` rows),
   * `maxNewTokens` long without stopping at eos: the ids the golden cases record.
   */
  async greedyIds(
    inputIds: number[],
    maxNewTokens: number,
    image?: { pixelValues: Float32Array; numTiles: number },
  ): Promise<number[]> {
    const result = await this.#generator.generate(
      {
        inputIds,
        images: image ? [{ key: `ids-${++sessionSeq}`, ...image }] : [],
        sampling: GREEDY_SAMPLING,
        maxNewTokens,
        endTokenIds: [],
      },
      ++sessionSeq,
      () => undefined,
    );
    return result.tokens.map((t) => t.id);
  }

  get imageContextTokenId(): number {
    return this.#imgContextId;
  }

  async close(): Promise<void> {
    await this.#vision.release();
    await this.#decoder.release();
  }
}
