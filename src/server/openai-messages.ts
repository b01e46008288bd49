/**
 * OpenAI chat messages → pipeline messages: images fetched and decoded, videos on local disk, and
 * each image's tile budget: `image_url.max_dynamic_patch` when given; otherwise `detail` read as
 * LMDeploy reads it (low 6, medium 12, high 24 tiles, capped at the server's per-image limit);
 * otherwise the checkpoint's max_dynamic_patch.
 */
import type { ChatMessage, ContentPart } from '../pipeline/conversation.js';
import { HttpError } from './errors.js';
import { type LocalVideo, loadRequestImage, type MediaPolicy, materializeVideo } from './media.js';
import type { ChatCompletionRequest, RequestContentPart } from './openai-schemas.js';
import { messageToolCalls } from './tool-calls.js';

/** LMDeploy's reading of OpenAI's `detail` as a tile budget (`_preprocess_v1_5`). */
export const DETAIL_TILES: Readonly<Record<string, number>> = { low: 6, medium: 12, high: 24 };

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
