/**
 * The OpenAI wire format: request validation (zod) into pipeline inputs, and the response, chunk
 * and logprob shapes of Chat Completions and legacy Completions.
 *
 * Semantics worth knowing (see the README's server section):
 * - Sampling defaults come from the checkpoint (InternVL 2.5: greedy) when `temperature` is absent,
 *   not OpenAI's temperature 1.
 * - `image_url.max_dynamic_patch` sets an image's tile budget; otherwise `detail` is read as LMDeploy
 *   reads it (low 6, medium 12, high 24 tiles, capped at the server's per-image limit); otherwise the
 *   checkpoint's max_dynamic_patch.
 * - `n` > 1 runs n generations; with a `seed`, choice i samples with seed + i.
 * - `response_format` `json_object` / `json_schema` constrains decoding (XGrammar in the engine thread):
 *   the JSON is compact (no free whitespace), and `finish_reason: "length"` means max_tokens cut it off
 *   before it was complete. A schema XGrammar cannot read is a 400 naming the problem.
 */
import { z } from 'zod';
import type { ChatMessage, ContentPart } from '../pipeline/conversation.js';
import type { GenerationConfigInput } from '../pipeline/generation-config.js';
import { HttpError } from './errors.js';
import { type LocalVideo, loadRequestImage, type MediaPolicy, materializeVideo } from './media.js';
import { responseFormat, responseFormatSchema } from './response-format.js';
import {
  checkToolFields,
  messageToolCalls,
  messageToolFields,
  toolOptions,
  toolRequestFields,
} from './tool-calls.js';

/** LMDeploy's reading of OpenAI's `detail` as a tile budget (`_preprocess_v1_5`). */
export const DETAIL_TILES: Readonly<Record<string, number>> = { low: 6, medium: 12, high: 24 };

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

type RequestContentPart = z.infer<typeof contentPart>;

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

function unsupported(param: string, what: string): never {
  throw new HttpError(400, `${param} is not supported by this server (${what})`, {
    param,
    openaiCode: 'unsupported_parameter',
  });
}

type SamplingRequest = Pick<
  ChatCompletionRequest,
  | 'temperature'
  | 'top_p'
  | 'top_k'
  | 'min_p'
  | 'repetition_penalty'
  | 'stop'
  | 'seed'
  | 'ignore_eos'
  | 'skip_special_tokens'
  | 'presence_penalty'
  | 'frequency_penalty'
  | 'logit_bias'
>;

/** Rejects OpenAI features that would change the output but that the engine does not implement. */
function rejectUnsupportedSampling(req: SamplingRequest): void {
  if (req.presence_penalty) unsupported('presence_penalty', 'use repetition_penalty');
  if (req.frequency_penalty) unsupported('frequency_penalty', 'use repetition_penalty');
  if (req.logit_bias && Object.keys(req.logit_bias).length > 0)
    unsupported('logit_bias', 'no logit processors');
}

function baseGeneration(
  req: SamplingRequest,
  maxNewTokens: number | null | undefined,
): GenerationConfigInput {
  const gen: GenerationConfigInput = {};
  if (maxNewTokens != null) gen.maxNewTokens = maxNewTokens;
  if (req.temperature != null) gen.temperature = req.temperature;
  if (req.top_p != null) gen.topP = req.top_p;
  if (req.top_k != null) gen.topK = Math.max(0, req.top_k);
  if (req.min_p != null) gen.minP = req.min_p;
  if (req.repetition_penalty != null) gen.repetitionPenalty = req.repetition_penalty;
  if (req.stop != null) gen.stop = req.stop;
  if (req.seed != null) gen.seed = req.seed;
  if (req.ignore_eos != null) gen.ignoreEos = req.ignore_eos;
  if (req.skip_special_tokens != null) gen.skipSpecialTokens = req.skip_special_tokens;
  return gen;
}

/** The generation config of each of the `n` choices: with a seed, choice i gets seed + i. */
export function choiceConfigs(gen: GenerationConfigInput, n: number): GenerationConfigInput[] {
  return Array.from({ length: n }, (_, i) => {
    if (gen.seed === undefined || i === 0) return gen;
    const seed = gen.seed + i <= Number.MAX_SAFE_INTEGER ? gen.seed + i : gen.seed - i;
    return { ...gen, seed };
  });
}

export function chatGeneration(req: ChatCompletionRequest): GenerationConfigInput {
  rejectUnsupportedSampling(req);
  if (req.top_logprobs && !req.logprobs) {
    throw new HttpError(400, 'top_logprobs needs logprobs: true', { param: 'top_logprobs' });
  }
  const gen = { ...baseGeneration(req, req.max_completion_tokens ?? req.max_tokens), ...toolOptions(req) };
  const format = responseFormat(req);
  if (format) gen.responseFormat = format;
  if (req.logprobs) {
    gen.logprobs = true;
    gen.topLogprobs = req.top_logprobs ?? 0;
  }
  return gen;
}

/** OpenAI's legacy default length is 16 tokens (LMDeploy keeps it). */
export const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;

export function completionGeneration(req: CompletionRequest): GenerationConfigInput {
  rejectUnsupportedSampling(req);
  if (req.echo) unsupported('echo', 'the prompt is not returned');
  if (req.suffix) unsupported('suffix', 'no fill-in-the-middle');
  if (req.best_of != null && req.best_of !== (req.n ?? 1)) unsupported('best_of', 'use n');
  const gen = baseGeneration(req, req.max_tokens ?? COMPLETIONS_DEFAULT_MAX_TOKENS);
  const format = responseFormat(req);
  if (format) gen.responseFormat = format;
  if (req.logprobs != null) {
    gen.logprobs = true;
    gen.topLogprobs = req.logprobs;
  }
  return gen;
}

export interface MediaLimits {
  policy: MediaPolicy;
  /** Tile budget of an image that names none (the checkpoint's max_dynamic_patch or the pipeline's). */
  defaultTiles: number;
  /** Largest tile budget one image may have. */
  maxTilesPerImage: number;
  maxImages: number;
  maxVideoFrames: number;
  /** Frames sampled from a video whose part names no `num_segments`. */
  defaultVideoFrames: number;
}

/** The tile budget of one image part (see the module comment). */
export function imageTileBudget(
  spec: { detail?: string | null; max_dynamic_patch?: number | null },
  limits: Pick<MediaLimits, 'defaultTiles' | 'maxTilesPerImage'>,
  param: string,
): number {
  if (spec.max_dynamic_patch != null) {
    if (spec.max_dynamic_patch > limits.maxTilesPerImage) {
      throw new HttpError(
        400,
        `${param}.max_dynamic_patch is ${spec.max_dynamic_patch}, above the server's limit of ${limits.maxTilesPerImage} tiles per image`,
        { param: `${param}.max_dynamic_patch`, openaiCode: 'too_many_tiles' },
      );
    }
    return spec.max_dynamic_patch;
  }
  const byDetail = spec.detail ? DETAIL_TILES[spec.detail] : undefined;
  return Math.min(byDetail ?? limits.defaultTiles, limits.maxTilesPerImage);
}

export interface PreparedMessages {
  messages: ChatMessage[];
  /** Removes downloaded videos; call when generation is over. */
  release(): Promise<void>;
  /** `message` with each video's file path replaced by the request field it came from. */
  hidePaths(message: string): string;
}

/**
 * Turns validated messages into pipeline messages: images fetched under the media policy and
 * decoded (so a bad image is a 400 before any compute), videos on local disk, tile budgets fixed.
 */
export async function prepareMessages(
  req: ChatCompletionRequest,
  limits: MediaLimits,
  signal: AbortSignal,
): Promise<PreparedMessages> {
  const images = req.messages.flatMap((m) =>
    Array.isArray(m.content) ? m.content.filter((p) => p.type === 'image_url') : [],
  ).length;
  if (images > limits.maxImages) {
    throw new HttpError(
      400,
      `the request has ${images} images, above the server's limit of ${limits.maxImages}`,
      {
        param: 'messages',
        openaiCode: 'too_many_images',
      },
    );
  }
  const videos: LocalVideo[] = [];
  const release = async () => {
    await Promise.all(videos.map((v) => v.release()));
  };
  const fields = new Map<string, string>();
  const hidePaths = (message: string) => {
    let out = message;
    for (const [file, field] of fields) out = out.replaceAll(file, field);
    return out;
  };
  // One failure stops the other fetches.
  const failed = new AbortController();
  const fetchSignal = AbortSignal.any([signal, failed.signal]);
  const convertPart = async (part: RequestContentPart, param: string): Promise<ContentPart> => {
    switch (part.type) {
      case 'text':
        return part;
      case 'image_url': {
        const spec = typeof part.image_url === 'string' ? { url: part.image_url } : part.image_url;
        const maxTiles = imageTileBudget(spec, limits, `${param}.image_url`);
        const image = await loadRequestImage(spec.url, limits.policy, `${param}.image_url.url`, fetchSignal);
        return { type: 'image', image, maxTiles };
      }
      case 'video_url': {
        const spec = typeof part.video_url === 'string' ? { url: part.video_url } : part.video_url;
        const frames = spec.num_segments ?? limits.defaultVideoFrames;
        if (frames > limits.maxVideoFrames) {
          throw new HttpError(
            400,
            `${param}.video_url.num_segments is ${frames}, above the server's limit of ${limits.maxVideoFrames} frames`,
            { param: `${param}.video_url.num_segments`, openaiCode: 'too_many_frames' },
          );
        }
        const video = await materializeVideo(spec.url, limits.policy, `${param}.video_url.url`, fetchSignal);
        videos.push(video);
        fields.set(video.path, `${param}.video_url.url`);
        return { type: 'video_url', video_url: { url: video.path, num_segments: frames } };
      }
    }
  };
  try {
    const messages = await Promise.all(
      req.messages.map(async (m, i): Promise<ChatMessage> => {
        const role = m.role === 'developer' ? 'system' : m.role;
        const tools = messageToolCalls(m);
        if (m.content == null || typeof m.content === 'string')
          return { role, content: m.content ?? '', ...tools };
        const content = await Promise.all(
          m.content.map((p, j) =>
            convertPart(p, `messages[${i}].content[${j}]`).catch((err: unknown) => {
              failed.abort();
              throw err;
            }),
          ),
        );
        return { role, content, ...tools };
      }),
    );
    return { messages, release, hidePaths };
  } catch (err) {
    await release();
    throw err;
  }
}
