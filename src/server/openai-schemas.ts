/**
 * OpenAI request bodies validated (zod): Chat Completions and legacy Completions, with bounds on list
 * lengths, and a bad field reported as a 400 whose message and `param` name it.
 */
import { z } from 'zod';
import { HttpError } from './errors.js';
import { responseFormatSchema } from './response-format.js';
import { checkToolFields, messageToolFields, toolRequestFields } from './tool-calls.js';

/** Bounds on list lengths, so that a body of many tiny items cannot multiply the work. */
export const MAX_MESSAGES = 4096;
export const MAX_CONTENT_PARTS = 4096;
export const MAX_PROMPTS = 256;

const nullish = <T extends z.ZodType>(schema: T) => schema.nullish();
const probability = z.number().min(0).max(1);
const stopSchema = z.union([z.string().min(1), z.array(z.string().min(1)).max(16)]);

const samplingFields = {
  model: nullish(z.string()),
  temperature: nullish(z.number().min(0).max(2)),
  top_p: nullish(z.number().gt(0).max(1)),
  top_k: nullish(z.number().int().min(-1)),
  min_p: nullish(probability),
  repetition_penalty: nullish(z.number().gt(0)),
  stop: nullish(stopSchema),
  seed: nullish(z.number().int()),
  n: nullish(z.number().int().min(1).max(16)),
  stream: nullish(z.boolean()),
  stream_options: nullish(z.object({ include_usage: nullish(z.boolean()) })),
  ignore_eos: nullish(z.boolean()),
  skip_special_tokens: nullish(z.boolean()),
  presence_penalty: nullish(z.number()),
  frequency_penalty: nullish(z.number()),
  logit_bias: nullish(z.record(z.string(), z.number())),
  user: nullish(z.string()),
};

const textPart = z.object({ type: z.literal('text'), text: z.string() });
const imagePart = z.object({
  type: z.literal('image_url'),
  image_url: z.union([
    z.string().min(1),
    z.object({
      url: z.string().min(1),
      detail: nullish(z.enum(['auto', 'low', 'medium', 'high'])),
      max_dynamic_patch: nullish(z.number().int().min(1)),
    }),
  ]),
});
const videoPart = z.object({
  type: z.literal('video_url'),
  video_url: z.union([
    z.string().min(1),
    z.object({ url: z.string().min(1), num_segments: nullish(z.number().int().min(1)) }),
  ]),
});
const contentPart = z.discriminatedUnion('type', [textPart, imagePart, videoPart], {
  error: 'a content part must have type text, image_url or video_url',
});

export type RequestContentPart = z.infer<typeof contentPart>;

const message = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  /** null only in an assistant message with tool_calls (checked with the request). */
  content: z
    .union(
      [
        z.string(),
        z
          .array(contentPart)
          .max(MAX_CONTENT_PARTS, { error: `at most ${MAX_CONTENT_PARTS} content parts per message` }),
      ],
      {
        error: 'content must be a string or a list of content parts',
      },
    )
    .nullish(),
  name: nullish(z.string()),
  ...messageToolFields,
});

export const chatCompletionRequestSchema = z
  .object({
    ...samplingFields,
    messages: z
      .array(message)
      .min(1, { error: 'messages must not be empty' })
      .max(MAX_MESSAGES, { error: `at most ${MAX_MESSAGES} messages per request` }),
    max_tokens: nullish(z.number().int().min(1)),
    max_completion_tokens: nullish(z.number().int().min(1)),
    logprobs: nullish(z.boolean()),
    top_logprobs: nullish(z.number().int().min(0).max(20)),
    ...toolRequestFields,
    response_format: nullish(responseFormatSchema),
  })
  .superRefine(checkToolFields);
export type ChatCompletionRequest = z.infer<typeof chatCompletionRequestSchema>;

export const completionRequestSchema = z.object({
  ...samplingFields,
  prompt: z.union(
    [
      z.string(),
      z
        .array(z.string())
        .min(1)
        .max(MAX_PROMPTS, { error: `at most ${MAX_PROMPTS} prompts per request` }),
    ],
    {
      error: 'prompt must be a string or a list of strings (token-id prompts are not supported)',
    },
  ),
  max_tokens: nullish(z.number().int().min(1)),
  logprobs: nullish(z.number().int().min(0).max(5)),
  echo: nullish(z.boolean()),
  suffix: nullish(z.string()),
  best_of: nullish(z.number().int().min(1)),
  /** Not in OpenAI's legacy API; accepted as vLLM does. */
  response_format: nullish(responseFormatSchema),
});
export type CompletionRequest = z.infer<typeof completionRequestSchema>;

/** `messages[0].content[1].image_url.url` from a zod path. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) out += typeof key === 'number' ? `[${key}]` : `${out ? '.' : ''}${String(key)}`;
  return out;
}

interface PathIssue {
  path: PropertyKey[];
  message: string;
  code?: string;
  errors?: PathIssue[][];
}

/**
 * A union's own message says little ("content must be a string or a list…"); the branch that got
 * deepest into the input names the real problem (e.g. `content[0].image_url.url`), and so does a
 * branch whose type matched but whose check failed (e.g. a list that is too long).
 */
function mostSpecific(issue: PathIssue): PathIssue {
  if (issue.code !== 'invalid_union' || !issue.errors?.length) return issue;
  let best = issue;
  for (const branch of issue.errors) {
    if (branch.length === 0) continue;
    const inner = mostSpecific({ ...branch[0], path: [...issue.path, ...branch[0].path] });
    const typeMatched = inner.code !== 'invalid_type' && inner.code !== 'invalid_union';
    if (inner.path.length > best.path.length || (best === issue && typeMatched)) best = inner;
  }
  return best;
}

/** Parses a request body; a bad field is a 400 whose message and `param` name it. */
export function parseRequest<T>(schema: z.ZodType<T>, body: unknown): T {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new HttpError(400, 'the request body must be a JSON object', { openaiCode: 'invalid_request' });
  }
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const issue = mostSpecific(r.error.issues[0]);
  const param = formatPath(issue.path);
  const more = r.error.issues.length > 1 ? ` (and ${r.error.issues.length - 1} more problem(s))` : '';
  throw new HttpError(400, `${param || 'body'}: ${issue.message}${more}`, {
    param: param || null,
    openaiCode: 'invalid_value',
  });
}
