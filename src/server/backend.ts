/**
 * What the server needs from a model: the two kinds of generation, the response-format and tools checks, the
 * default image tile budget, an id, and `close`. A `Pipeline` is one (`pipelineBackend`); a test or
 * another runtime can serve through a small object of its own.
 */
import type { ResponseFormat } from '../engine/grammar-types.js';
import type { ChatMessage } from '../pipeline/conversation.js';
import type { GenerationConfigInput } from '../pipeline/generation-config.js';
import type { FinishReason, StreamChunk, Usage } from '../pipeline/pipeline.js';
import type { ToolOptions } from '../pipeline/tool-calls.js';

/** How one generation ended; `usage` feeds the reply and the token counters of /metrics. */
export interface BackendResult {
  finishReason: FinishReason;
  usage: Usage;
}

/** One generation's abort signal and the sink of its streamed pieces (text, token ids, logprobs). */
export interface BackendRun {
  signal: AbortSignal;
  onChunk: (chunk: StreamChunk) => void;
}

export interface ServerBackend {
  /** The id served when the server options name none. */
  readonly modelId: string;
  /** The tile budget of an image whose request names none (`max_dynamic_patch`, `detail`). */
  readonly defaultImageTiles: number;
  /** One chat choice: the messages through the chat template, media included. */
  chat(messages: ChatMessage[], gen: GenerationConfigInput, run: BackendRun): Promise<BackendResult>;
  /** One legacy completion: `prompt` continued as given, without the chat template. */
  complete(prompt: string, gen: GenerationConfigInput, run: BackendRun): Promise<BackendResult>;
  /** Checks (and may cache) a response format; rejects with a BAD_INPUT InternVLError naming the problem. */
  compileResponseFormat(format: ResponseFormat): Promise<unknown>;
  /**
   * Checks (and may cache) a request's tools and tool choice the same way; a ToolInputError names the
   * option or tool (pipeline/tool-calls.ts).
   */
  compileTools(options: ToolOptions): Promise<unknown>;
  /** Frees the model; called when the server owns the backend and closes. */
  close(): Promise<void>;
}
