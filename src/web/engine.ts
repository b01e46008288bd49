/**
 * InternVL in a browser: loads a folder written by `internvl convert --target web` from a URL
 * (downloads with progress, kept in the Cache API for offline reloads), opens its graphs on
 * onnxruntime-web (WASM, multi-threaded when the page is cross-origin isolated, or WebGPU) and
 * generates with the same scheduler, sampler, tiling and prompt code as Node. Imports nothing
 * Node-only; the browser bundle maps ../engine/ort.js to onnxruntime-web.
 */
import { parseGenerationConfig } from '../config/generation-config.js';
import { type ModelConfig, numImageTokens, parseModelConfig } from '../config/model-config.js';
import { DecoderRunner, decoderDimsFromConfig } from '../engine/decoder.js';
import { type FinishReason, type GenerateRequest, Generator } from '../engine/generate.js';
import * as ort from '../engine/ort.js';
import { GREEDY_SAMPLING, samplingParams } from '../engine/sampler.js';
import { VisionEncoder, visionDimsFromConfig } from '../engine/vision.js';
import { InternVLError } from '../errors.js';
import {
  type GenerationConfigInput,
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
import { fetchBytes, fetchJsonNetworkFirst, openResponseCache, type ResponseCache } from './fetch-cache.js';
import {
  manifestFiles,
  parseWebManifest,
  WEB_MANIFEST_FILE,
  type WebGraphEntry,
  type WebManifest,
} from './manifest.js';

export type WebExecutionProvider = 'wasm' | 'webgpu';

export interface LoadProgress {
  /** Bytes of all model files received (from the network or the cache). */
  loaded: number;
  total: number;
  /** The file being read, relative to the model URL. */
  file: string;
  /** Bytes that came from the Cache API so far. */
  fromCache: number;
}

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

function joinUrl(base: string, file: string): string {
  return new URL(file, base.endsWith('/') ? base : `${base}/`).href;
}

let sessionSeq = 0;

export class WebInternVL {
  readonly #generator: Generator;
  readonly #vision: VisionEncoder;
  readonly #decoder: DecoderRunner;
  readonly #fileConfig: ReturnType<typeof parseGenerationConfig>;
  readonly #imgContextId: number;

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
  ) {
    this.#vision = vision;
    this.#decoder = decoder;
    this.#fileConfig = fileConfig;
    this.#imgContextId = imgContextId;
    this.#generator = new Generator({
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
    const tokenizer = createTokenizer({
      tokenizerJson: json('tokenizer.json'),
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
    );
  }

  /** The resolved generation settings for `input` (defaults from generation_config.json). */
  generationConfig(input?: GenerationConfigInput): ResolvedGenerationConfig {
    return resolveGenerationConfig(input, {
      fileConfig: this.#fileConfig,
      template: this.template,
      tokenizer: this.tokenizer,
    });
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

async function downloadAll(
  baseUrl: string,
  manifest: WebManifest,
  cache: ResponseCache | undefined,
  onProgress: WebLoadOptions['onProgress'],
  into: Map<string, Uint8Array>,
): Promise<void> {
  const entries = manifestFiles(manifest);
  const total = entries.reduce((n, f) => n + f.bytes, 0);
  let finished = 0;
  let fromCache = 0;
  for (const entry of entries) {
    let cached = false;
    const bytes = await fetchBytes(joinUrl(baseUrl, entry.path), {
      cache,
      expectedBytes: entry.bytes,
      onProgress: (p) => {
        cached = p.fromCache;
        onProgress?.({
          loaded: finished + p.loaded,
          total,
          file: entry.path,
          fromCache: fromCache + (p.fromCache ? p.loaded : 0),
        });
      },
    });
    into.set(entry.path, bytes);
    finished += bytes.byteLength;
    if (cached) fromCache += bytes.byteLength;
  }
}

async function createWebSession(
  files: Map<string, Uint8Array>,
  graph: WebGraphEntry,
  provider: WebExecutionProvider,
): Promise<ort.InferenceSession> {
  const model = files.get(graph.model.path) as Uint8Array;
  const externalData = graph.externalData.map((e) => ({
    path: e.name,
    data: files.get(e.path) as Uint8Array,
  }));
  try {
    return await ort.InferenceSession.create(model, {
      executionProviders:
        provider === 'webgpu' ? ['webgpu', ort.CPU_EXECUTION_PROVIDER] : [ort.CPU_EXECUTION_PROVIDER],
      graphOptimizationLevel: 'all',
      externalData,
    });
  } catch (err) {
    throw new InternVLError(
      'INTERNAL',
      `onnxruntime-web (${provider}) could not open ${graph.model.path}: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/** The token-embedding table from its raw little-endian bytes (bf16 bit patterns or float32). */
function embeddingTable(bytes: Uint8Array, manifest: WebManifest): Float32Array | Uint16Array {
  const { dtype, shape, path } = manifest.embeddings;
  const count = shape[0] * shape[1];
  const width = dtype === 'bf16' ? 2 : 4;
  if (bytes.byteLength !== count * width) {
    throw new InternVLError(
      'BAD_CHECKPOINT',
      `${path}: ${bytes.byteLength} bytes, [${shape}] ${dtype} needs ${count * width}`,
    );
  }
  const copy = bytes.slice().buffer;
  return dtype === 'bf16' ? new Uint16Array(copy) : new Float32Array(copy);
}
