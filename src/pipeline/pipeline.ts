import { type GenerationConfigFile, loadGenerationConfig } from '../config/generation-config.js';
import type { ModelConfig } from '../config/model-config.js';
import type { EngineOptions } from '../engine/core.js';
import type { ResponseFormat } from '../engine/grammar-types.js';
import type { MemoryCheck } from '../engine/memory-check.js';
import { InternVLModel } from '../engine/model.js';
import { InternVLError } from '../errors.js';
import { type ResolveModelOptions, resolveModel } from '../io/hub.js';
import type { TaskProgress } from '../io/progress.js';
import { loadTokenizer } from '../io/tokenizer-files.js';
import { decoderArchitecture } from '../models/registry.js';
import { getTemplate, type Template } from '../text/templates.js';
import { TOOL_FORMATS, type ToolFormat } from '../text/tool-prompts.js';
import type { Tokenizer } from '../text/types.js';
import { ChunkQueue } from './chunk-queue.js';
import { type Input, isBatch, type Turn, toTurns } from './conversation.js';
import { type GenerationConfigInput, parseGenerationConfigInput } from './generation-config.js';
import { MediaPreparer } from './media-loader.js';
import { checkMemoryBeforeLoad } from './memory-guard.js';
import { OffThreadTokenizer } from './off-thread-tokenizer.js';
import { prepareChatRequest, prepareCompletionRequest, type RequestContext } from './prepare-request.js';
import { longestTokenChars, PromptBounds } from './prompt-bounds.js';
import { type Response, type RunOptions, Session, type StreamChunk } from './responses.js';
import { generateResponse, type ResponseDeps } from './run-request.js';
import { compileToolFormat, parseToolOptions, type ToolOptions } from './tool-calls.js';

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

  async close(): Promise<void> {
    await this.#media.close();
    await this.#encoder.close();
    await this.model.close();
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
    const prepared = await prepareCompletionRequest(this.#requestContext(), prompt, gen);
    if (options.signal?.aborted) {
      throw new InternVLError('ABORTED', 'the request was aborted before it started');
    }
    return generateResponse(this.#responseDeps(), prepared, options.signal, options.onChunk);
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
    const prepared = await prepareChatRequest(this.#requestContext(), turns, gen, sessionId);
    return generateResponse(this.#responseDeps(), prepared, options.signal, onChunk);
  }

  #requestContext(): RequestContext {
    return {
      model: this.model,
      tokenizer: this.tokenizer,
      template: this.template,
      generationFile: this.generationFile,
      bounds: this.bounds,
      sessionLen: this.sessionLen,
      toolFormat: this.toolFormat,
      media: this.#media,
      encoder: this.#encoder,
    };
  }

  #responseDeps(): ResponseDeps {
    return { model: this.model, tokenizer: this.tokenizer, onProgress: this.options.onProgress };
  }
}

/** Loads a checkpoint (local folder or hub id) into a ready pipeline. */
export function pipeline(model?: string, options?: PipelineOptions): Promise<Pipeline> {
  return Pipeline.create(model, options);
}
