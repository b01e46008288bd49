import { InternVLError } from '../errors.js';
import type { TrainingTurn } from '../text/training.js';

/**
 * The LLM judge of the filtering pipeline (report §9). The official prompts are not published; these are this
 * project's own. Both ask for a single integer from 0 to 10 where higher is better, so one threshold rule
 * (drop below the minimum) serves both: quality below 7 and repetition below 3 are the report's examples.
 */
export type JudgeAspect = 'quality' | 'repetition';

export const JUDGE_SYSTEM_PROMPT =
  'You review training data for a chat assistant. You answer with one integer only.';

export const JUDGE_PROMPTS: Record<JudgeAspect, string> = {
  quality:
    "Rate the quality of the assistant's answers in the conversation below on a scale from 0 to 10.\n" +
    '10: correct, helpful, coherent and well written. 5: usable but with clear flaws. ' +
    '0: wrong, incoherent, truncated, off-topic or harmful.\n' +
    'Images are not shown; judge the text only and do not penalise references to an image.\n' +
    'Reply with the score as a single integer and nothing else.',
  repetition:
    "Rate how free the assistant's answers in the conversation below are of repetition, from 0 to 10.\n" +
    '10: no repeated sentences, phrases or lists. 5: some redundancy. 3: clearly repetitive. ' +
    '0: the same text repeated over and over, or a looping list.\n' +
    'Reply with the score as a single integer and nothing else.',
};

/** The conversation as plain text for a judge prompt. */
export function conversationForJudge(conversations: readonly TrainingTurn[]): string {
  const role = { system: 'System', human: 'User', gpt: 'Assistant' } as const;
  return conversations.map((turn) => `${role[turn.from]}: ${turn.value}`).join('\n\n');
}

export function judgeMessages(
  aspect: JudgeAspect,
  conversation: string,
): { role: string; content: string }[] {
  return [
    { role: 'system', content: JUDGE_SYSTEM_PROMPT },
    { role: 'user', content: `${JUDGE_PROMPTS[aspect]}\n\n<conversation>\n${conversation}\n</conversation>` },
  ];
}

/**
 * The score in a judge's reply: a number after "score"/"rating", else the first number in the text
 * ("8", "7/10", bold "7", "Score: 6.5"), after dropping any <think>…</think> block. Undefined unless within 0..10.
 */
export function parseJudgeScore(reply: string): number | undefined {
  const text = reply.replace(/<think>[\s\S]*?<\/think>/gi, ' ');
  const labelled = /\b(?:score|rating)\b\s*(?:is)?\s*[:=：]?\s*\**\s*(\d+(?:\.\d+)?)/i.exec(text);
  const first = labelled ?? /(?<![\d.])(\d+(?:\.\d+)?)/.exec(text);
  if (!first) return undefined;
  const score = Number(first[1]);
  return Number.isFinite(score) && score >= 0 && score <= 10 ? score : undefined;
}

export interface JudgeClient {
  /** The 0–10 score of a conversation for one aspect; throws after exhausting its retries. */
  score(aspect: JudgeAspect, conversation: string): Promise<number>;
}

export interface OpenAIJudgeOptions {
  /** Base URL of an OpenAI-compatible API (e.g. http://127.0.0.1:23333/v1) or its /chat/completions URL. */
  url: string;
  model?: string;
  apiKey?: string;
  /** Attempts after the first (default 3); network errors, 429, 5xx and unparseable replies are retried. */
  retries?: number;
  /** First retry delay; doubles each time (default 500 ms). */
  retryDelayMs?: number;
  timeoutMs?: number;
  fetchImpl?: typeof fetch;
}

class RetryableError extends Error {}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A judge that calls an OpenAI-compatible chat completions endpoint (LMDeploy, vLLM, this project's server). */
export function createOpenAIJudge(options: OpenAIJudgeOptions): JudgeClient {
  let endpoint: URL;
  try {
    endpoint = new URL(options.url);
  } catch {
    throw new InternVLError('BAD_INPUT', `judge URL ${options.url} is not a valid URL`);
  }
  if (!/\/chat\/completions\/?$/.test(endpoint.pathname)) {
    endpoint.pathname = `${endpoint.pathname.replace(/\/$/, '')}/chat/completions`;
  }
  const retries = options.retries ?? 3;
  const retryDelayMs = options.retryDelayMs ?? 500;
  const timeoutMs = options.timeoutMs ?? 120_000;
  const fetchImpl = options.fetchImpl ?? fetch;
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (options.apiKey) headers.authorization = `Bearer ${options.apiKey}`;

  async function once(aspect: JudgeAspect, conversation: string): Promise<number> {
    let response: Response;
    try {
      response = await fetchImpl(endpoint, {
        method: 'POST',
        headers,
        body: JSON.stringify({
          model: options.model ?? 'judge',
          messages: judgeMessages(aspect, conversation),
          temperature: 0,
          max_tokens: 16,
        }),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      throw new RetryableError(`judge request to ${endpoint.href} failed: ${(err as Error).message}`);
    }
    const body = await response.text().catch(() => '');
    if (response.status === 429 || response.status >= 500) {
      throw new RetryableError(
        `judge ${endpoint.href} answered HTTP ${response.status}: ${body.slice(0, 200)}`,
      );
    }
    if (!response.ok) {
      throw new InternVLError(
        'DOWNLOAD',
        `judge ${endpoint.href} answered HTTP ${response.status}: ${body.slice(0, 200)}`,
      );
    }
    let content: unknown;
    try {
      content = (JSON.parse(body) as { choices?: { message?: { content?: unknown } }[] }).choices?.[0]
        ?.message?.content;
    } catch {
      throw new RetryableError(`judge ${endpoint.href} sent a reply that is not JSON: ${body.slice(0, 200)}`);
    }
    const score = typeof content === 'string' ? parseJudgeScore(content) : undefined;
    if (score === undefined) {
      throw new RetryableError(`judge reply has no 0–10 score: ${JSON.stringify(content).slice(0, 200)}`);
    }
    return score;
  }

  return {
    async score(aspect, conversation) {
      for (let attempt = 0; ; attempt++) {
        try {
          return await once(aspect, conversation);
        } catch (err) {
          if (!(err instanceof RetryableError)) throw err;
          if (attempt >= retries) {
            throw new InternVLError('DOWNLOAD', `${err.message} (gave up after ${attempt + 1} attempts)`);
          }
          await sleep(retryDelayMs * 2 ** attempt);
        }
      }
    },
  };
}

/** Runs `fn` over items with at most `limit` calls in flight; rejects with the first error once in-flight calls end. */
export async function mapWithConcurrency<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<void>,
): Promise<void> {
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new InternVLError('BAD_INPUT', `concurrency must be a positive integer, got ${limit}`);
  }
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (failure === undefined && next < items.length) {
      const index = next++;
      try {
        await fn(items[index], index);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.error;
}
