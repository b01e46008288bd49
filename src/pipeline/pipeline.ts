import { type GenerationConfigFile, loadGenerationConfig } from '../config/generation-config.js';
import { type ModelConfig, numImageTokens } from '../config/model-config.js';
import type { EngineOptions } from '../engine/core.js';
import type { GenerateRequest, ImageRef } from '../engine/generate.js';
import type { ResponseFormat } from '../engine/grammar-types.js';
import type { MemoryCheck } from '../engine/memory-check.js';
import { InternVLModel } from '../engine/model.js';
import { samplingParams } from '../engine/sampler.js';
import { InternVLError } from '../errors.js';
import { type ResolveModelOptions, resolveModel } from '../io/hub.js';
import type { TaskProgress } from '../io/progress.js';
import { loadTokenizer } from '../io/tokenizer-files.js';
import { decoderArchitecture } from '../models/registry.js';
import { expandImagePlaceholders } from '../text/prompt.js';
import { getTemplate, renderConversation, type Template } from '../text/templates.js';
import { TOOL_FORMATS, type ToolFormat } from '../text/tool-prompts.js';
import type { Tokenizer } from '../text/types.js';
import { ChunkQueue } from './chunk-queue.js';
import { type Input, isBatch, type Media, renderTurns, type Turn, toTurns } from './conversation.js';
import {
  type GenerationConfigInput,
  parseGenerationConfigInput,
  type ResolvedGenerationConfig,
  resolveGenerationConfig,
} from './generation-config.js';
import { MediaPreparer, type PreparedMedia } from './media-loader.js';
import { checkMemoryBeforeLoad } from './memory-guard.js';
import { OffThreadTokenizer } from './off-thread-tokenizer.js';
import { longestTokenChars, PromptBounds } from './prompt-bounds.js';
import { type Response, type RunOptions, Session, type StreamChunk } from './responses.js';
import { generateResponse, type PreparedRequest, type ResponseDeps } from './run-request.js';
import { compileToolFormat, parseToolOptions, type ToolOptions, toolCallFormat } from './tool-calls.js';

export {
  type FinishReason,
  type Response,
  type RunOptions,
  Session,
  type StreamChunk,
  type TokenLogprobInfo,
  type Usage,
} from './responses.js';

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

export class Pipeline {
  readonly #media: MediaPreparer;
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
    this.#media = new MediaPreparer(model.config, options);
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

  #responseDeps(): ResponseDeps {
    return { model: this.model, tokenizer: this.tokenizer, onProgress: this.options.onProgress };
  }

  async close(): Promise<void> {
    await this.#media.close();
    await this.#encoder.close();
    await this.model.close();
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
        return Promise.all(media.map(async (m) => prepared.set(m, await this.#media.prepare(m, images))));
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
    return generateResponse(this.#responseDeps(), prepared, options.signal, onChunk);
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
    return generateResponse(
      this.#responseDeps(),
      { request, config, imageTokens: 0 },
      options.signal,
      options.onChunk,
    );
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
}

/** Loads a checkpoint (local folder or hub id) into a ready pipeline. */
export function pipeline(model?: string, options?: PipelineOptions): Promise<Pipeline> {
  return Pipeline.create(model, options);
}
