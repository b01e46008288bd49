/** What the pipeline answers: responses, stream chunks, usage, and the chat session they belong to. */
import { randomUUID } from 'node:crypto';
import type { ChatMessage, ContentPart, Turn } from './conversation.js';
import type { Timings } from './timings.js';
import type { ToolCall, ToolCallDelta } from './tool-calls.js';

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
