/**
 * What a user passes to the pipeline, normalised into one conversation: turns whose content is text
 * and media in order. Then the prompt text: each image becomes `<image>` where the user marked it
 * with IMAGE_TOKEN, or goes first as the official chat does ('<image>\n', or 'Image-1: <image>\n'…
 * for several); a video becomes 'Frame1: <image>\n'… with one tile per frame.
 */
import { InternVLError } from '../errors.js';
import type { RgbImage } from '../preprocess/image.js';
import { frameLabels, IMAGE_PLACEHOLDER, imageLabels } from '../text/prompt.js';
import type { ToolCall, ToolTurn } from '../text/tool-prompts.js';
import { isToolCall } from './tool-calls.js';

/** Marks where an image goes in a prompt (as LMDeploy's IMAGE_TOKEN does). */
export const IMAGE_TOKEN = '<IMAGE_TOKEN>';

/** An image as a path, http(s)/data URL, encoded bytes, or decoded RGB pixels. */
export type ImageLike = string | URL | Uint8Array | RgbImage;

export interface VideoInput {
  path: string;
  /** Frames sampled uniformly (the official get_index); default 8. */
  numSegments?: number;
  /** [start, end] seconds. */
  bound?: [number, number];
}

/** One prompt with optional images or a video. */
export interface PromptInput {
  prompt: string;
  images?: ImageLike[];
  video?: string | VideoInput;
  /** Tile budget per image (n_max) for this input. */
  maxTiles?: number;
  /** Replaces the template's system message. */
  system?: string;
}

export type ContentPart =
  | { type: 'text'; text: string }
  | { type: 'image_url'; image_url: string | { url: string; max_dynamic_patch?: number; detail?: string } }
  | { type: 'image'; image: ImageLike; maxTiles?: number }
  | { type: 'video_url'; video_url: string | { url: string; num_segments?: number } };

export interface ChatMessage {
  /** `tool`: a tool's answer to a call of the assistant's previous message. */
  role: 'system' | 'user' | 'assistant' | 'tool';
  /** An assistant message that only calls tools may have content ''. */
  content: string | ContentPart[];
  /** The calls an assistant message made (OpenAI's shape). */
  toolCalls?: ToolCall[];
  /** The call a `tool` message answers (kept for the caller; the prompt formats do not show it). */
  toolCallId?: string;
}

/** Everything `infer` / `stream` / `chat` accept for one request. */
export type Input = string | PromptInput | ChatMessage[];

export interface MediaImage {
  kind: 'image';
  source: ImageLike;
  maxTiles?: number;
}

export interface MediaVideo {
  kind: 'video';
  video: VideoInput;
}

export type Media = MediaImage | MediaVideo;

/** A turn: its role and its pieces in order (text, and media where they appear). */
export interface Turn {
  role: 'system' | 'user' | 'assistant' | 'tool';
  parts: (string | Media)[];
  /** An assistant turn's tool calls. */
  toolCalls?: ToolCall[];
}

function badInput(message: string): never {
  throw new InternVLError('BAD_INPUT', message);
}

function isChatMessages(input: unknown): input is ChatMessage[] {
  return (
    Array.isArray(input) && input.every((m) => m && typeof m === 'object' && 'role' in m && 'content' in m)
  );
}

/** True for a batch (an array of inputs) as opposed to one message list. */
export function isBatch(input: Input | Input[]): input is Input[] {
  return Array.isArray(input) && !isChatMessages(input);
}

function textOf(part: string | Media): string | undefined {
  return typeof part === 'string' ? part : undefined;
}

function partFromContent(part: ContentPart, index: number, role: string): string | Media {
  if (!part || typeof part !== 'object') badInput(`${role} message content[${index}] must be an object`);
  switch (part.type) {
    case 'text':
      if (typeof part.text !== 'string') badInput(`${role} message content[${index}].text must be a string`);
      return part.text;
    case 'image_url': {
      const spec = typeof part.image_url === 'string' ? { url: part.image_url } : part.image_url;
      if (!spec || typeof spec.url !== 'string' || !spec.url) {
        badInput(`${role} message content[${index}].image_url.url must be a non-empty string`);
      }
      const maxTiles = 'max_dynamic_patch' in spec ? spec.max_dynamic_patch : undefined;
      return { kind: 'image', source: spec.url, maxTiles };
    }
    case 'image':
      return { kind: 'image', source: part.image, maxTiles: part.maxTiles };
    case 'video_url': {
      const spec = typeof part.video_url === 'string' ? { url: part.video_url } : part.video_url;
      if (!spec || typeof spec.url !== 'string' || !spec.url) {
        badInput(`${role} message content[${index}].video_url.url must be a non-empty string`);
      }
      return { kind: 'video', video: { path: spec.url, numSegments: spec.num_segments } };
    }
    default:
      return badInput(
        `${role} message content[${index}] has unknown type ${JSON.stringify((part as { type?: unknown }).type)} ` +
          '(expected text, image_url, image or video_url)',
      );
  }
}

function messageToolCalls(m: ChatMessage, i: number): { toolCalls?: ToolCall[] } {
  if (m.toolCalls === undefined) return {};
  if (m.role !== 'assistant') badInput(`messages[${i}].toolCalls: only assistant messages make tool calls`);
  if (!Array.isArray(m.toolCalls) || !m.toolCalls.every(isToolCall)) {
    badInput(
      `messages[${i}].toolCalls must be a list of {id, type: 'function', function: {name, arguments}}`,
    );
  }
  return m.toolCalls.length > 0 ? { toolCalls: m.toolCalls } : {};
}

/** Normalises one input into turns (the last one a user turn). */
export function toTurns(input: Input): Turn[] {
  if (typeof input === 'string') return [{ role: 'user', parts: [input] }];
  if (isChatMessages(input)) {
    if (input.length === 0) badInput('messages must not be empty');
    const turns = input.map((m, i): Turn => {
      if (!['system', 'user', 'assistant', 'tool'].includes(m.role)) {
        badInput(
          `messages[${i}].role must be system, user, assistant or tool, got ${JSON.stringify(m.role)}`,
        );
      }
      const toolCalls = messageToolCalls(m, i);
      if (typeof m.content === 'string') return { role: m.role, parts: [m.content], ...toolCalls };
      if (!Array.isArray(m.content)) badInput(`messages[${i}].content must be a string or a list of parts`);
      const parts = m.content.map((p, j) => partFromContent(p, j, `messages[${i}]`));
      return { role: m.role, parts, ...toolCalls };
    });
    const last = turns[turns.length - 1].role;
    if (last !== 'user' && last !== 'tool') badInput('the last message must be from the user or a tool');
    return turns;
  }
  if (!input || typeof input !== 'object' || typeof input.prompt !== 'string') {
    badInput('an input is a string, {prompt, images?, video?}, or a list of chat messages');
  }
  const parts: (string | Media)[] = [];
  for (const image of input.images ?? [])
    parts.push({ kind: 'image', source: image, maxTiles: input.maxTiles });
  if (input.video !== undefined) {
    parts.push({
      kind: 'video',
      video: typeof input.video === 'string' ? { path: input.video } : input.video,
    });
  }
  parts.push(input.prompt);
  const turns: Turn[] = [{ role: 'user', parts }];
  if (input.system !== undefined) turns.unshift({ role: 'system', parts: [input.system] });
  return turns;
}

/**
 * The text of a user turn with `<image>` placeholders, and its media in placeholder order (a video
 * counts one placeholder per frame, `numFrames(video)` of them).
 */
export function renderUserTurn(
  turn: Turn,
  numFrames: (video: MediaVideo) => number,
): { text: string; media: Media[] } {
  const media = turn.parts.filter((p): p is Media => typeof p !== 'string');
  // IMAGE_TOKEN and a literal '<image>' (the official chat's marker) both place the next image.
  const text = turn.parts
    .map(textOf)
    .filter((t) => t !== undefined)
    .join('')
    .split(IMAGE_TOKEN)
    .join(IMAGE_PLACEHOLDER);
  const marked = text.split(IMAGE_PLACEHOLDER).length - 1;
  if (marked > 0 && media.length > 0) {
    const images = media.filter((m) => m.kind === 'image');
    if (images.length < media.length)
      badInput(`${IMAGE_TOKEN} cannot be combined with a video in one message`);
    if (marked !== images.length) {
      badInput(
        `the prompt marks ${marked} image position(s) with ${IMAGE_TOKEN} but has ${images.length} image(s)`,
      );
    }
    return { text, media: images };
  }
  // Pieces in order: texts stay where they are, media go to the front, as the official chat does.
  const images = media.filter((m) => m.kind === 'image');
  const videos = media.filter((m): m is MediaVideo => m.kind === 'video');
  if (videos.length > 1) badInput('one message can hold at most one video');
  if (videos.length === 1 && images.length > 0) badInput('a message cannot hold both a video and images');
  let prefix = '';
  if (videos.length === 1) prefix = frameLabels(numFrames(videos[0]), 'inference');
  else if (images.length === 1) prefix = `${IMAGE_PLACEHOLDER}\n`;
  else if (images.length > 1) prefix = imageLabels(images.length);
  return { text: prefix + text, media };
}

/**
 * Turns for the template: text with `<image>` placeholders, tool calls and tool answers as they are
 * (the tool format writes them); media of all turns in prompt order.
 */
export function renderTurns(
  turns: Turn[],
  numFrames: (video: MediaVideo) => number,
): { chatTurns: ToolTurn[]; media: Media[] } {
  const media: Media[] = [];
  const chatTurns = turns.map((turn): ToolTurn => {
    if (turn.role !== 'user') {
      if (turn.parts.some((p) => typeof p !== 'string')) badInput(`${turn.role} messages can only hold text`);
      const content = turn.parts.join('');
      return turn.toolCalls
        ? { role: turn.role, content, toolCalls: turn.toolCalls }
        : { role: turn.role, content };
    }
    const rendered = renderUserTurn(turn, numFrames);
    media.push(...rendered.media);
    return { role: 'user', content: rendered.text };
  });
  return { chatTurns, media };
}
