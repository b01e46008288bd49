/** The response shapes of the OpenAI API: usage, and the logprobs of Chat Completions and legacy Completions. */
import type { TokenLogprobInfo, Usage } from '../pipeline/pipeline.js';

export interface OpenAIUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** As OpenAI reports prompt caching: prompt tokens served from the cache. */
  prompt_tokens_details: { cached_tokens: number };
}

/** Usage of a request: the prompt counted once per prompt, completions summed over choices. */
export function openAIUsage(promptTokens: number, completionTokens: number, cachedTokens = 0): OpenAIUsage {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: cachedTokens },
  };
}

export function sumUsage(usages: readonly Usage[], promptGroups: number): OpenAIUsage {
  const perPrompt = new Map<number, { prompt: number; cached: number }>();
  let completion = 0;
  usages.forEach((u, i) => {
    // Choices of one prompt run it once each; the first one's cache use is the prompt's.
    if (!perPrompt.has(i % promptGroups)) {
      perPrompt.set(i % promptGroups, { prompt: u.promptTokens, cached: u.cachedTokens });
    }
    completion += u.completionTokens;
  });
  const prompts = [...perPrompt.values()];
  return openAIUsage(
    prompts.reduce((a, b) => a + b.prompt, 0),
    completion,
    prompts.reduce((a, b) => a + b.cached, 0),
  );
}

const utf8 = new TextEncoder();

export interface ChatLogprobEntry {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export function chatLogprobs(infos: readonly TokenLogprobInfo[]): { content: ChatLogprobEntry[] } {
  return {
    content: infos.map((t) => ({
      token: t.token,
      logprob: t.logprob,
      bytes: [...utf8.encode(t.token)],
      top_logprobs: (t.topLogprobs ?? []).map((a) => ({
        token: a.token,
        logprob: a.logprob,
        bytes: [...utf8.encode(a.token)],
      })),
    })),
  };
}

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[] | null;
  text_offset: number[];
}

/** The legacy shape; `textOffset` is where this piece's text starts in the choice's text. */
export function completionLogprobs(
  infos: readonly TokenLogprobInfo[],
  textOffset: number,
): CompletionLogprobs {
  const offsets: number[] = [];
  let at = textOffset;
  for (const t of infos) {
    offsets.push(at);
    at += t.token.length;
  }
  return {
    tokens: infos.map((t) => t.token),
    token_logprobs: infos.map((t) => t.logprob),
    top_logprobs: infos.map((t) =>
      Object.fromEntries((t.topLogprobs ?? []).map((a) => [a.token, a.logprob])),
    ),
    text_offset: offsets,
  };
}
