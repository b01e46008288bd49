import { InternVLError } from '../errors.js';
import { type ChatTurn, pythonStrip, renderConversation, type Template } from './templates.js';

/** The placeholder users write where an image goes; expanded into image tokens before tokenisation. */
export const IMAGE_PLACEHOLDER = '<image>';
export const IMG_START_TOKEN = '<img>';
export const IMG_END_TOKEN = '</img>';
export const IMG_CONTEXT_TOKEN = '<IMG_CONTEXT>';
/** Image tokens per 448×448 tile in InternVL 2.5: (448/14)² · 0.5². */
export const INTERNVL2_5_NUM_IMAGE_TOKEN = 256;

function checkCount(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new InternVLError('BAD_INPUT', `${what} must be a non-negative integer, got ${String(value)}`);
  }
  return value;
}

/** `<img>` + `<IMG_CONTEXT>` × (numImageToken · numPatches) + `</img>`: one image of `numPatches` tiles. */
export function imageTokenSpan(numPatches: number, numImageToken: number): string {
  checkCount(numPatches, 'number of patches');
  checkCount(numImageToken, 'numImageToken');
  return IMG_START_TOKEN + IMG_CONTEXT_TOKEN.repeat(numImageToken * numPatches) + IMG_END_TOKEN;
}

export function countImagePlaceholders(text: string): number {
  let count = 0;
  for (let at = text.indexOf(IMAGE_PLACEHOLDER); at !== -1; at = text.indexOf(IMAGE_PLACEHOLDER, at + 1))
    count++;
  return count;
}

/**
 * For each entry of `numPatchesList` in order, replaces the first remaining `<image>` in the whole prompt
 * (history and system prompt included) with its image token span. As in the official `chat()`, entries
 * without a placeholder do nothing and placeholders without an entry stay literal text.
 */
export function expandImagePlaceholders(
  prompt: string,
  numPatchesList: readonly number[],
  numImageToken: number,
): string {
  const pieces: string[] = [];
  let from = 0;
  for (const [i, numPatches] of numPatchesList.entries()) {
    const span = imageTokenSpan(checkCount(numPatches, `numPatchesList[${i}]`), numImageToken);
    const at = prompt.indexOf(IMAGE_PLACEHOLDER, from);
    if (at === -1) continue;
    pieces.push(prompt.slice(from, at), span);
    from = at + IMAGE_PLACEHOLDER.length;
  }
  pieces.push(prompt.slice(from));
  return pieces.join('');
}

/** `Image-1: <image>\nImage-2: <image>\n…`: the multi-image labels of the model card and eval scripts. */
export function imageLabels(count: number): string {
  checkCount(count, 'image count');
  let labels = '';
  for (let i = 1; i <= count; i++) labels += `Image-${i}: ${IMAGE_PLACEHOLDER}\n`;
  return labels;
}

/**
 * Video frame labels, one line per frame, each ending with `\n`.
 * `inference`: `Frame1: <image>\n…` (internvl_chat/README.md quick start, MVBench eval).
 * `training`: `Frame-1: <image>\n…` (`video_get_item` in internvl_chat_finetune.py; top-level README.md).
 */
export function frameLabels(count: number, style: 'inference' | 'training'): string {
  checkCount(count, 'frame count');
  const prefix = style === 'training' ? 'Frame-' : 'Frame';
  let labels = '';
  for (let i = 1; i <= count; i++) labels += `${prefix}${i}: ${IMAGE_PLACEHOLDER}\n`;
  return labels;
}

/** A past exchange as `chat()` stores it: [question (with its `<image>\n` if it had one), answer]. */
export type HistoryEntry = readonly [question: string, answer: string];

export interface ChatPromptOptions {
  template: Template;
  question: string;
  /** null/undefined: a fresh conversation (the only case where `<image>\n` is auto-prefixed). */
  history?: readonly HistoryEntry[] | null;
  /** Total tiles of all images (pixel_values.shape[0]); null/undefined or absent when there are no pixels. */
  numTiles?: number | null;
  /** Tiles per image, in placeholder order; defaults to [numTiles] (one image), or [] without pixels. */
  numPatchesList?: readonly number[] | null;
  /** Overrides the template's system message for this prompt. */
  systemMessage?: string;
  /** Image tokens per tile (default 256, InternVL 2.5). */
  numImageToken?: number;
}

export interface ChatPrompt {
  /** The question after the `<image>\n` rule: what `chat()` appends to the history. */
  question: string;
  /** The rendered prompt with `<image>` placeholders. */
  prompt: string;
  numPatchesList: number[];
  /** The prompt with placeholders expanded into image tokens: the text to tokenise. */
  expandedPrompt: string;
}

function checkQuestion(question: unknown, what: string): string {
  if (typeof question !== 'string') throw new InternVLError('BAD_PROMPT', `${what} must be a string`);
  return question;
}

/** The official `chat()` prompt rules (modeling_internvl_chat.py). */
export function buildChatPrompt(options: ChatPromptOptions): ChatPrompt {
  const { template, history } = options;
  const numImageToken = checkCount(options.numImageToken ?? INTERNVL2_5_NUM_IMAGE_TOKEN, 'numImageToken');
  const hasPixels = options.numTiles !== undefined && options.numTiles !== null;
  const numTiles = hasPixels ? checkCount(options.numTiles, 'numTiles') : 0;
  let numPatchesList: number[];
  if (options.numPatchesList === undefined || options.numPatchesList === null) {
    numPatchesList = hasPixels ? [numTiles] : [];
  } else {
    numPatchesList = options.numPatchesList.map((n, i) => checkCount(n, `numPatchesList[${i}]`));
    const total = numPatchesList.reduce((a, b) => a + b, 0);
    if (!hasPixels && total > 0) {
      throw new InternVLError(
        'BAD_INPUT',
        `numPatchesList ${JSON.stringify(numPatchesList)} was given without pixels`,
      );
    }
    if (hasPixels && total !== numTiles) {
      throw new InternVLError(
        'BAD_INPUT',
        `numPatchesList ${JSON.stringify(numPatchesList)} sums to ${total} tiles but the images have ${numTiles}`,
      );
    }
  }

  let question = checkQuestion(options.question, 'question');
  if ((history === undefined || history === null) && hasPixels && !question.includes(IMAGE_PLACEHOLDER)) {
    question = `${IMAGE_PLACEHOLDER}\n${question}`;
  }
  const turns: ChatTurn[] = [];
  for (const [i, entry] of (history ?? []).entries()) {
    if (!Array.isArray(entry) || entry.length !== 2) {
      throw new InternVLError('BAD_PROMPT', `history[${i}] must be a [question, answer] pair`);
    }
    turns.push(
      { role: 'user', content: checkQuestion(entry[0], `history[${i}][0]`) },
      { role: 'assistant', content: checkQuestion(entry[1], `history[${i}][1]`) },
    );
  }
  turns.push({ role: 'user', content: question });
  const prompt = renderConversation(template, turns, {
    systemMessage: options.systemMessage,
    openAssistant: true,
  });
  return {
    question,
    prompt,
    numPatchesList,
    expandedPrompt: expandImagePlaceholders(prompt, numPatchesList, numImageToken),
  };
}

export interface BatchChatPromptOptions {
  template: Template;
  questions: readonly string[];
  /** Tiles of each question's single image, one entry per question. */
  numPatchesList: readonly number[];
  systemMessage?: string;
  numImageToken?: number;
}

/**
 * The official `batch_chat()` rules: one single-turn prompt per question, each prefixed with `<image>\n`
 * when it lacks one, and only its first `<image>` expanded, with its own tile count.
 */
export function buildBatchChatPrompts(options: BatchChatPromptOptions): ChatPrompt[] {
  const { template, questions, numPatchesList } = options;
  if (questions.length !== numPatchesList.length) {
    throw new InternVLError(
      'BAD_INPUT',
      `batch chat got ${questions.length} questions but ${numPatchesList.length} numPatchesList entries`,
    );
  }
  const numImageToken = checkCount(options.numImageToken ?? INTERNVL2_5_NUM_IMAGE_TOKEN, 'numImageToken');
  return questions.map((raw, i) => {
    const numPatches = checkCount(numPatchesList[i], `numPatchesList[${i}]`);
    let question = checkQuestion(raw, `questions[${i}]`);
    if (!question.includes(IMAGE_PLACEHOLDER)) question = `${IMAGE_PLACEHOLDER}\n${question}`;
    const prompt = renderConversation(template, [{ role: 'user', content: question }], {
      systemMessage: options.systemMessage,
    });
    return {
      question,
      prompt,
      numPatchesList: [numPatches],
      expandedPrompt: expandImagePlaceholders(prompt, [numPatches], numImageToken),
    };
  });
}

/** `response.split(sep.strip())[0].strip()`, applied to text decoded with special tokens skipped. */
export function postprocessResponse(text: string, template: Template): string {
  const end = text.indexOf(template.eosToken);
  return pythonStrip(end === -1 ? text : text.slice(0, end));
}
