/**
 * The LMDeploy-style API: `pipeline()` loads a checkpoint; `infer` answers one input or a batch,
 * `stream` yields the answer as it is generated, `chat` keeps a multi-turn session whose KV cache and
 * image features are reused between turns.
 */
import { randomUUID } from 'node:crypto';
import { type GenerationConfigFile, loadGenerationConfig } from '../config/generation-config.js';
import { type ModelConfig, numImageTokens } from '../config/model-config.js';
import type { EngineOptions } from '../engine/core.js';
import type { GenerateRequest, ImageRef } from '../engine/generate.js';
import type { ResponseFormat } from '../engine/grammar-types.js';
import type { MemoryCheck } from '../engine/memory-check.js';
import { InternVLModel } from '../engine/model.js';
import { type SampledToken, samplingParams } from '../engine/sampler.js';
import { WorkerClient } from '../engine/worker-rpc.js';
import { InternVLError } from '../errors.js';
import { type ResolveModelOptions, resolveModel } from '../io/hub.js';
import { loadImage } from '../io/image.js';
import type { TaskProgress } from '../io/progress.js';
import { loadTokenizer } from '../io/tokenizer-files.js';
import { loadVideo } from '../io/video.js';
import { decoderArchitecture } from '../models/registry.js';
import type { RgbImage } from '../preprocess/image.js';
import { expandImagePlaceholders } from '../text/prompt.js';
import { StreamDecoder } from '../text/stream-decoder.js';
import { getTemplate, renderConversation, type Template } from '../text/templates.js';
import { TOOL_FORMATS, type ToolFormat } from '../text/tool-prompts.js';
import type { Tokenizer } from '../text/types.js';
import {
  type ChatMessage,
  type ContentPart,
  type ImageLike,
  type Input,
  isBatch,
  type Media,
  type MediaVideo,
  renderTurns,
  type Turn,
  toTurns,
} from './conversation.js';
import {
  type GenerationConfigInput,
  parseGenerationConfigInput,
  type ResolvedGenerationConfig,
  resolveGenerationConfig,
} from './generation-config.js';
import type { ImageTiling } from './media-prep.js';
import { checkMemoryBeforeLoad } from './memory-guard.js';
import { OffThreadTokenizer } from './off-thread-tokenizer.js';
import { longestTokenChars, PromptBounds } from './prompt-bounds.js';
import { StopStringMatcher } from './stop.js';
import { RequestClock, type Timings } from './timings.js';
import {
  compileToolFormat,
  parseToolOptions,
  type ToolCall,
  type ToolCallDelta,
  ToolCallReader,
  type ToolOptions,
  toolCallFormat,
} from './tool-calls.js';

export const DEFAULT_MODEL = 'OpenGVLab/InternVL2_5-1B';
export const DEFAULT_SESSION_LEN = 8192;

export interface PipelineOptions {
  /** Tile budget per image (n_max); default the checkpoint's max_dynamic_patch. */
  maxTiles?: number;
  /**
   * Split maxTiles across the images of one message (max(1, ⌊n_max / images⌋)), as the training
   * data pipeline does; default false: each image gets the whole budget, as the official chat does.
   */
  splitTileBudget?: boolean;
  /** Longest prompt + answer in tokens; default 8192 (bounded by max_position_embeddings). */
  sessionLen?: number;
  /** Weight precision of the engine's graphs (see EngineOptions): e.g. `{ llmDtype: 'int4', prefillDtype: 'int8' }` is the fastest on CPU. */
  dtype?: EngineOptions['dtype'];
  llmDtype?: EngineOptions['llmDtype'];
  prefillDtype?: EngineOptions['prefillDtype'];
  lmHeadDtype?: EngineOptions['lmHeadDtype'];
  vitDtype?: EngineOptions['vitDtype'];
  blockSize?: number;
  accuracyLevel?: number;
  threads?: number;
  /**
   * Bytes of finished prompts' KV cache kept across requests (default 256 MiB; 0 = off): a request that
   * starts like an earlier one (a conversation resent with a new question, the same image) prefills
   * only the rest. `Response.cache.reusedPromptTokens` tells how much was reused.
   */
  prefixCacheBytes?: number;
  /** Where built graphs are cached (see InternVLModel.load). */
  cacheDir?: string | false;
  /** Hub download options (revision, token, offline). */
  hub?: ResolveModelOptions;
  /**
   * Progress of long steps: file downloads (`bytes`), loading the engine (its first load converts the
   * checkpoint), encoding image tiles and prefilling a long prompt for a request. `createTaskProgress()` draws it on stderr.
   */
  onProgress?: (progress: TaskProgress) => void;
  /**
   * Load even when the estimated peak memory exceeds the memory available (engine/memory-check.ts);
   * by default such a load is refused with an OUT_OF_MEMORY error naming the numbers and a precision that fits.
   */
  ignoreMemoryCheck?: boolean;
  /** Called before loading with the precision and the memory estimate (e.g. to print them). */
  onMemoryCheck?: (check: MemoryCheck) => void;
}

export interface TokenLogprobInfo {
  id: number;
  token: string;
  logprob: number;
  topLogprobs?: { id: number; token: string; logprob: number }[];
}

/** 'tool_calls': the answer is tool calls (`Response.toolCalls`), complete. */
export type FinishReason = 'stop' | 'length' | 'abort' | 'tool_calls';

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  /** Prompt tokens that stand for image tiles (`<IMG_CONTEXT>`). */
  imageTokens: number;
  /** Prompt tokens whose KV cache was reused (a chat session's earlier turns, or the prefix cache). */
  cachedTokens: number;
}

export interface Response {
  /** The answer; with tool calls, the text outside them (often ''). */
  text: string;
  /** The tools the answer calls (with `tools` in the generation config), in order. */
  toolCalls?: ToolCall[];
  finishReason: FinishReason;
  /** Generated ids, without a final end-of-turn id. */
  tokenIds: number[];
  usage: Usage;
  logprobs?: TokenLogprobInfo[];
  /** What the engine did not have to recompute: prompt tokens reused from the session's KV cache, and tiles encoded for this request. */
  cache: { reusedPromptTokens: number; encodedTiles: number };
  /** Time to first token, ViT seconds, prefill and decode speed of this request (timings.ts); absent when no token came. */
  timings?: Timings;
}

/** One streamed piece: new text; the last piece also carries finishReason and usage. */
export interface StreamChunk {
  /** New text (with tools: only text outside calls). */
  text: string;
  /** Tool-call pieces: a call's first one has its index, id and name; the next ones its arguments' text. */
  toolCalls?: ToolCallDelta[];
  tokenIds: number[];
  finishReason?: FinishReason;
  usage?: Usage;
  logprobs?: TokenLogprobInfo[];
}

export interface RunOptions {
  signal?: AbortSignal;
}

/** A multi-turn conversation; pass it back to `chat` for the next turn. */
export class Session {
  readonly id = randomUUID();
  /** The turns so far (user and assistant), media included. */
  readonly turns: Turn[] = [];
  response: Response | undefined;

  /** The conversation as chat messages (images as `image` parts). */
  get history(): ChatMessage[] {
    return this.turns.map((t) => ({
      role: t.role,
      ...(t.toolCalls ? { toolCalls: t.toolCalls } : {}),
      content:
        t.parts.length === 1 && typeof t.parts[0] === 'string'
          ? t.parts[0]
          : t.parts.map(
              (p): ContentPart =>
                typeof p === 'string'
                  ? { type: 'text', text: p }
                  : p.kind === 'image'
                    ? { type: 'image', image: p.source, maxTiles: p.maxTiles }
                    : {
                        type: 'video_url',
                        video_url: { url: p.video.path, num_segments: p.video.numSegments },
                      },
            ),
    }));
  }
}

interface PreparedMedia {
  /** Placeholders this media fills, each an image of `tiles` tiles. */
  refs: ImageRef[];
}

interface PreparedRequest {
  request: GenerateRequest;
  config: ResolvedGenerationConfig;
  imageTokens: number;
  /** The model's tool format, when its calls are read out of the text. */
  toolFormat?: ToolFormat;
}

function rgbLike(x: ImageLike): x is RgbImage {
  return typeof x === 'object' && !(x instanceof URL) && !(x instanceof Uint8Array) && 'data' in x;
}

/** Buffers that belong wholly to these images, so they can move to a worker without copying. */
function ownedBuffers(images: RgbImage[]): ArrayBuffer[] {
  return images
    .map((i) => i.data)
    .filter(
      (d) => d.buffer instanceof ArrayBuffer && d.byteOffset === 0 && d.byteLength === d.buffer.byteLength,
    )
    .map((d) => d.buffer as ArrayBuffer);
}

/** An async queue bridging token callbacks to an async iterator. */
class ChunkQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiting: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  private done = false;
  private error: unknown;

  push(item: T): void {
    const w = this.waiting;
    this.waiting = undefined;
    if (w) w.resolve({ value: item, done: false });
    else this.items.push(item);
  }

  end(error?: unknown): void {
    this.done = true;
    this.error = error;
    const w = this.waiting;
    this.waiting = undefined;
    if (w && error !== undefined) w.reject(error);
    else if (w) w.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        if (this.items.length > 0) return Promise.resolve({ value: this.items.shift()!, done: false });
        if (this.done) {
          return this.error !== undefined
            ? Promise.reject(this.error)
            : Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => {
          this.waiting = { resolve, reject };
        });
      },
    };
  }
}

// Under tsx (tests, development) this module is a .ts file and so is the worker beside it.
const mediaWorkerUrl = new URL(
  import.meta.url.endsWith('.ts') ? './media-worker.ts' : './media-worker.js',
  import.meta.url,
);

export class Pipeline {
  readonly #prepared = new WeakMap<Media, Promise<PreparedMedia>>();
  #media: WorkerClient | undefined;
  /** Refuses prompt text that cannot fit before it is tokenized. */
  readonly bounds: PromptBounds;
  readonly #encoder: OffThreadTokenizer;

  private constructor(
    readonly model: InternVLModel,
    readonly tokenizer: Tokenizer,
    readonly template: Template,
    readonly generationFile: GenerationConfigFile,
    readonly options: PipelineOptions,
    readonly sessionLen: number,
  ) {
    this.bounds = new PromptBounds(sessionLen, longestTokenChars(tokenizer));
    this.#encoder = new OffThreadTokenizer(tokenizer, model.dir);
  }

  static async create(model: string = DEFAULT_MODEL, options: PipelineOptions = {}): Promise<Pipeline> {
    const progress = options.onProgress;
    const dir = await resolveModel(model, {
      ...options.hub,
      onProgress:
        options.hub?.onProgress ??
        (progress && ((p) => progress({ label: p.file, done: p.downloaded, total: p.total, bytes: true }))),
    });
    options.onMemoryCheck?.(await checkMemoryBeforeLoad(dir, options));
    const tokenizer = await loadTokenizer(dir);
    const generationFile = await loadGenerationConfig(dir);
    // Everything but the pipeline's own options goes to the engine.
    const {
      maxTiles,
      splitTileBudget,
      sessionLen,
      hub,
      onProgress,
      ignoreMemoryCheck,
      onMemoryCheck,
      ...engineOptions
    } = options;
    const engine = await InternVLModel.load(dir, {
      ...engineOptions,
      onProgress: progress && ((done, total) => progress({ label: 'loading model', done, total })),
    });
    try {
      const config = engine.config;
      const template = getTemplate(config.template, { systemMessage: config.system_message ?? undefined });
      const limit = config.llm_config.max_position_embeddings;
      const sessionLen = options.sessionLen ?? Math.min(DEFAULT_SESSION_LEN, limit);
      if (!Number.isInteger(sessionLen) || sessionLen < 1 || sessionLen > limit) {
        throw new InternVLError(
          'BAD_INPUT',
          `sessionLen must be an integer in 1..${limit}, got ${options.sessionLen}`,
        );
      }
      if (options.maxTiles !== undefined && (!Number.isInteger(options.maxTiles) || options.maxTiles < 1)) {
        throw new InternVLError('BAD_INPUT', `maxTiles must be a positive integer, got ${options.maxTiles}`);
      }
      return new Pipeline(engine, tokenizer, template, generationFile, options, sessionLen);
    } catch (err) {
      await engine.close();
      throw err;
    }
  }

  get config(): ModelConfig {
    return this.model.config;
  }

  /** Answers one input, or each input of a batch (results in input order). */
  infer(input: Input, gen?: GenerationConfigInput, options?: RunOptions): Promise<Response>;
  infer(inputs: Input[], gen?: GenerationConfigInput, options?: RunOptions): Promise<Response[]>;
  async infer(
    input: Input | Input[],
    gen?: GenerationConfigInput,
    options: RunOptions = {},
  ): Promise<Response | Response[]> {
    if (isBatch(input)) return Promise.all(input.map((one) => this.infer(one, gen, options)));
    return this.#run(toTurns(input), gen, options);
  }

  /** Yields the answer as it is generated; the last chunk has finishReason and usage. */
  stream(input: Input, gen?: GenerationConfigInput, options: RunOptions = {}): AsyncIterable<StreamChunk> {
    const queue = new ChunkQueue<StreamChunk>();
    this.#run(toTurns(input), gen, options, (chunk) => queue.push(chunk)).then(
      (response) => {
        queue.push({
          text: '',
          tokenIds: [],
          finishReason: response.finishReason,
          usage: response.usage,
        });
        queue.end();
      },
      (err) => queue.end(err),
    );
    return queue;
  }

  /**
   * One chat turn. Without `session` a new conversation starts; with it, the input is appended to
   * its history, and only the new tokens are prefilled (the engine keeps the session's KV cache).
   */
  async chat(
    input: Input,
    options: {
      session?: Session;
      gen?: GenerationConfigInput;
      signal?: AbortSignal;
      /** Receives the answer as it is generated. */
      onChunk?: (chunk: StreamChunk) => void;
    } = {},
  ): Promise<Session> {
    const session = options.session ?? new Session();
    const turns = [...session.turns, ...toTurns(input)];
    const response = await this.#run(
      turns,
      options.gen,
      { signal: options.signal },
      options.onChunk,
      session.id,
    );
    const answer: Turn = { role: 'assistant', parts: [response.text] };
    if (response.toolCalls) answer.toolCalls = response.toolCalls;
    session.turns.splice(0, session.turns.length, ...turns, answer);
    session.response = response;
    return session;
  }

  /**
   * Checks and compiles a response format in the engine thread (cached by format), e.g. to report a bad
   * schema early or to warm the cache; `compileMs` is 0 when it was already compiled.
   */
  compileResponseFormat(format: ResponseFormat): Promise<{ compileMs: number }> {
    const parsed = parseGenerationConfigInput({ responseFormat: format }).responseFormat!;
    return this.model.compileGrammar(parsed);
  }

  /** The tool format of this model's LLM (text/tool-prompts.ts). */
  get toolFormat(): ToolFormat {
    return TOOL_FORMATS[decoderArchitecture(this.config.llm_config.model_type).toolFormat];
  }

  /**
   * Checks the tool options and compiles their grammar (cached), e.g. to report a bad parameters
   * schema early: a ToolInputError names the option or the tool.
   */
  async compileTools(options: ToolOptions): Promise<void> {
    const tools = parseToolOptions(options);
    if (tools) await compileToolFormat(this.toolFormat, tools, (f) => this.model.compileGrammar(f));
  }

  /** Frees a chat session's KV cache in the engine. */
  async endSession(session: Session): Promise<void> {
    await this.model.releaseSession(session.id);
  }

  async close(): Promise<void> {
    await this.#media?.terminate();
    this.#media = undefined;
    await this.#encoder.close();
    await this.model.close();
  }

  #maxTilesFor(media: Media, imagesInTurn: number): number {
    const base =
      (media.kind === 'image' ? media.maxTiles : undefined) ??
      this.options.maxTiles ??
      this.config.max_dynamic_patch;
    if (!Number.isInteger(base) || base < 1) {
      throw new InternVLError('BAD_INPUT', `the tile budget must be a positive integer, got ${base}`);
    }
    return this.options.splitTileBudget ? Math.max(1, Math.floor(base / imagesInTurn)) : base;
  }

  /** The media worker, started on first use. */
  #mediaWorker(): WorkerClient {
    // A media worker that died (a decoder crash on some file) is replaced for the next request.
    if (!this.#media || this.#media.exited) this.#media = new WorkerClient(mediaWorkerUrl, {}, 'media');
    return this.#media;
  }

  async #prepareImage(media: Media & { kind: 'image' }, maxTiles: number): Promise<PreparedMedia> {
    const given = rgbLike(media.source);
    const image = given
      ? (media.source as RgbImage)
      : await loadImage(media.source as string | URL | Uint8Array);
    const dynamic = this.config.dynamic_image_size;
    const tiling: ImageTiling = {
      minTiles: dynamic ? this.config.min_dynamic_patch : 1,
      maxTiles: dynamic ? maxTiles : 1,
      useThumbnail: this.config.use_thumbnail,
      tileSize: this.#tileSize(),
    };
    // A decoded image of our own moves to the worker; a caller's pixels are copied.
    const transfer = given ? [] : ownedBuffers([image]);
    const ref = await this.#mediaWorker().call<ImageRef>('prepareImage', [image, tiling], { transfer });
    return { refs: [ref] };
  }

  async #prepareVideo(media: MediaVideo): Promise<PreparedMedia> {
    const video = await loadVideo(media.video.path, {
      numSegments: media.video.numSegments ?? 8,
      bound: media.video.bound,
    });
    const transfer = ownedBuffers(video.frames);
    const refs = await this.#mediaWorker().call<ImageRef[]>(
      'prepareFrames',
      [video.frames, this.#tileSize()],
      {
        transfer,
      },
    );
    return { refs };
  }

  #tileSize(): number {
    return this.config.force_image_size ?? this.config.vision_config.image_size;
  }

  #prepare(media: Media, imagesInTurn: number): Promise<PreparedMedia> {
    let prepared = this.#prepared.get(media);
    if (!prepared) {
      prepared =
        media.kind === 'image'
          ? this.#prepareImage(media, this.#maxTilesFor(media, imagesInTurn))
          : this.#prepareVideo(media);
      this.#prepared.set(media, prepared);
      prepared.catch(() => this.#prepared.delete(media));
    }
    return prepared;
  }

  async #prepareRequest(
    turns: Turn[],
    gen: GenerationConfigInput | undefined,
    sessionId?: string,
  ): Promise<PreparedRequest> {
    const config = this.#resolveConfig(gen);
    const tools = gen && parseToolOptions(gen);
    const toolFormat = this.toolFormat;
    const toolGrammar = tools && toolCallFormat(toolFormat, tools);
    if (toolGrammar) {
      if (config.responseFormat) {
        throw new InternVLError(
          'BAD_INPUT',
          'responseFormat and tools (unless toolChoice is none) exclude each other',
        );
      }
      // Compiled here (cached) so that a schema XGrammar cannot read is an error naming its tool.
      await compileToolFormat(toolFormat, tools, (f) => this.model.compileGrammar(f));
      config.responseFormat = toolGrammar;
      // Tool-call markers may be special tokens (InternLM2's): they stay in the text to be read.
      config.skipSpecialTokens = false;
    }
    this.#checkTurnTexts(turns, config.maxNewTokens);
    // Media are decoded and tiled first: a video's frame count and each image's tiles shape the prompt.
    const prepared = new Map<Media, PreparedMedia>();
    await Promise.all(
      turns.map((turn) => {
        const media = turn.parts.filter((p): p is Media => typeof p !== 'string');
        const images = media.filter((m) => m.kind === 'image').length;
        return Promise.all(media.map(async (m) => prepared.set(m, await this.#prepare(m, images))));
      }),
    );
    const systemTurn = turns[0]?.role === 'system' ? turns[0] : undefined;
    const { chatTurns, media } = renderTurns(
      systemTurn ? turns.slice(1) : turns,
      (video) => prepared.get(video)!.refs.length,
    );
    const rendered = toolFormat.render(
      chatTurns,
      systemTurn ? systemTurn.parts.join('') : this.template.systemMessage,
      tools && tools.choice !== 'none' ? tools.tools : [],
    );
    const prompt = renderConversation(this.template, rendered.turns, {
      systemMessage: rendered.systemMessage,
      openAssistant: true,
    });
    this.bounds.checkLength(prompt.length, 'the prompt', config.maxNewTokens);
    const images = media.flatMap((m) => prepared.get(m)!.refs);
    const tokensPerTile = numImageTokens(this.config);
    const expanded = expandImagePlaceholders(
      prompt,
      images.map((r) => r.numTiles),
      tokensPerTile,
    );
    const inputIds = await this.#encoder.encode(expanded);
    const imageTokens = images.reduce((n, r) => n + r.numTiles * tokensPerTile, 0);
    this.#checkContext(inputIds.length, imageTokens, config.maxNewTokens);
    const request = this.#request(inputIds, images, config, sessionId);
    return { request, config, imageTokens, ...(toolGrammar ? { toolFormat } : {}) };
  }

  /** Each turn's text must fit (characters, words) before media are fetched or anything is tokenized. */
  #checkTurnTexts(turns: Turn[], maxNewTokens: number): void {
    turns.forEach((turn, i) => {
      const texts = turn.parts.filter((p): p is string => typeof p === 'string');
      const what = `messages[${i}]`;
      this.bounds.checkLength(
        texts.reduce((n, t) => n + t.length, 0),
        what,
        maxNewTokens,
      );
      for (const text of texts) this.bounds.checkWords(text, what);
    });
  }

  #logprobInfo(token: SampledToken): TokenLogprobInfo {
    const text = (id: number) => this.tokenizer.decode([id], { skipSpecialTokens: false });
    return {
      id: token.id,
      token: text(token.id),
      logprob: token.logprob ?? 0,
      topLogprobs: token.topLogprobs?.map((t) => ({ id: t.id, token: text(t.id), logprob: t.logprob })),
    };
  }

  async #run(
    turns: Turn[],
    gen: GenerationConfigInput | undefined,
    options: RunOptions,
    onChunk?: (chunk: StreamChunk) => void,
    sessionId?: string,
  ): Promise<Response> {
    if (options.signal?.aborted) {
      throw new InternVLError('ABORTED', 'the request was aborted before it started');
    }
    const prepared = await this.#prepareRequest(turns, gen, sessionId);
    return this.#generate(prepared, options.signal, onChunk);
  }

  /**
   * Continues `prompt` as given, without the chat template or images (LMDeploy's completions with
   * `do_preprocess=False`). Stop strings, end ids, the context guard and streaming are as in `infer`.
   */
  async complete(
    prompt: string,
    gen?: GenerationConfigInput,
    options: RunOptions & { onChunk?: (chunk: StreamChunk) => void } = {},
  ): Promise<Response> {
    const config = this.#resolveConfig(gen);
    if (prompt.length === 0) throw new InternVLError('BAD_INPUT', 'prompt must not be empty');
    this.bounds.checkLength(prompt.length, 'the prompt', config.maxNewTokens);
    this.bounds.checkWords(prompt, 'the prompt');
    const inputIds = await this.#encoder.encode(prompt);
    const imageContext = this.tokenizer.tokenToId('<IMG_CONTEXT>');
    if (imageContext !== undefined && inputIds.includes(imageContext)) {
      throw new InternVLError(
        'BAD_INPUT',
        'prompt contains <IMG_CONTEXT>, which only image features may fill',
      );
    }
    if (inputIds.length === 0) throw new InternVLError('BAD_INPUT', 'prompt encodes to no tokens');
    this.#checkContext(inputIds.length, 0, config.maxNewTokens);
    if (options.signal?.aborted) {
      throw new InternVLError('ABORTED', 'the request was aborted before it started');
    }
    const request = this.#request(inputIds, [], config);
    return this.#generate({ request, config, imageTokens: 0 }, options.signal, options.onChunk);
  }

  #resolveConfig(gen: GenerationConfigInput | undefined): ResolvedGenerationConfig {
    return resolveGenerationConfig(gen, {
      fileConfig: this.generationFile,
      template: this.template,
      tokenizer: this.tokenizer,
    });
  }

  /** The context guard: prompt + maxNewTokens must fit in sessionLen. */
  #checkContext(promptTokens: number, imageTokens: number, maxNewTokens: number): void {
    if (promptTokens + maxNewTokens > this.sessionLen) {
      throw new InternVLError(
        'CONTEXT_OVERFLOW',
        `the prompt has ${promptTokens} tokens (${imageTokens} of them for images) and maxNewTokens is ` +
          `${maxNewTokens}: ${promptTokens + maxNewTokens} > sessionLen ${this.sessionLen}`,
      );
    }
  }

  #request(
    inputIds: number[],
    images: ImageRef[],
    config: ResolvedGenerationConfig,
    sessionId?: string,
  ): GenerateRequest {
    return {
      inputIds,
      images,
      sessionId,
      sampling: samplingParams(config),
      maxNewTokens: config.maxNewTokens,
      endTokenIds: config.endTokenIds,
      ...(config.responseFormat ? { responseFormat: config.responseFormat } : {}),
    };
  }

  /** Runs a prepared request in the engine, turning its tokens into text (stop strings, streaming). */
  async #generate(
    { request, config, imageTokens, toolFormat }: PreparedRequest,
    userSignal: AbortSignal | undefined,
    userOnChunk?: (chunk: StreamChunk) => void,
  ): Promise<Response> {
    const tools = toolFormat && new ToolCallReader(toolFormat);
    const onChunk = tools
      ? (chunk: StreamChunk) => {
          const read = tools.chunk(chunk);
          if (userOnChunk && (read.text || read.toolCalls || read.tokenIds.length)) userOnChunk(read);
        }
      : userOnChunk;
    const decoder = new StreamDecoder(this.tokenizer, { skipSpecialTokens: config.skipSpecialTokens });
    const stops = new StopStringMatcher(config.stop);
    const end = new Set(config.endTokenIds);
    const stopped = new AbortController();
    const signal = userSignal ? AbortSignal.any([userSignal, stopped.signal]) : stopped.signal;
    const tokenIds: number[] = [];
    const logprobs: TokenLogprobInfo[] = [];
    let text = '';
    let generated = 0;
    let flushed = false;
    const emit = (piece: string, ids: number[], info: TokenLogprobInfo[]) => {
      text += piece;
      if (onChunk && (piece || ids.length)) {
        onChunk({ text: piece, tokenIds: ids, ...(config.logprobs ? { logprobs: info } : {}) });
      }
    };
    const clock = new RequestClock();
    const onToken = (token: SampledToken) => {
      clock.token();
      if (stops.stopped) return;
      generated++;
      const info = config.logprobs ? [this.#logprobInfo(token)] : [];
      logprobs.push(...info);
      if (end.has(token.id)) {
        flushed = true;
        emit(stops.push(decoder.flush()).emit + stops.flush(), [], info);
        return;
      }
      tokenIds.push(token.id);
      const { emit: piece, stopped: hit } = stops.push(decoder.push(token.id));
      emit(piece, [token.id], info);
      if (hit) stopped.abort();
    };
    const progress = this.options.onProgress;
    const onEncode = (done: number, total: number) => {
      clock.encoded();
      progress?.({ label: 'encoding tiles', done, total });
    };
    const onPrefill =
      progress && ((done: number, total: number) => progress({ label: 'prefill', done, total }));
    const result = await this.model.generate(request, { onToken, onEncode, onPrefill, signal });
    let finishReason: FinishReason = result.finishReason;
    if (stops.stopped) finishReason = 'stop';
    // Also after a 'stop' without an end token: a response format whose text is complete.
    else if (!flushed) emit(stops.push(decoder.flush()).emit + stops.flush(), [], []);
    const response: Response = {
      text,
      finishReason,
      tokenIds,
      usage: {
        promptTokens: request.inputIds.length,
        completionTokens: generated,
        imageTokens,
        cachedTokens: result.stats.reusedTokens,
      },
      ...(config.logprobs ? { logprobs } : {}),
      cache: { reusedPromptTokens: result.stats.reusedTokens, encodedTiles: result.stats.encodedTiles },
    };
    const timings = clock.timings(request.inputIds.length - result.stats.reusedTokens);
    if (timings) response.timings = timings;
    if (!tools) return response;
    const rest = tools.flush();
    if (rest && userOnChunk) userOnChunk(rest);
    return tools.finish(response);
  }
}

/** Loads a checkpoint (local folder or hub id) into a ready pipeline. */
export function pipeline(model?: string, options?: PipelineOptions): Promise<Pipeline> {
  return Pipeline.create(model, options);
}
