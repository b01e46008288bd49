import { InternVLError } from '../errors.js';
import { IMAGE_PLACEHOLDER, INTERNVL2_5_NUM_IMAGE_TOKEN, imageTokenSpan } from './prompt.js';
import { getTemplate } from './templates.js';
import type { Tokenizer } from './types.js';

/** Label of positions that carry no loss (`LabelSmoother.ignore_index`). */
export const IGNORE_TOKEN_ID = -100;
export const VIDEO_PLACEHOLDER = '<video>';

export type TrainingRole = 'system' | 'human' | 'gpt';

/** One turn of an annotation line's `conversations`. */
export interface TrainingTurn {
  from: TrainingRole;
  value: string;
}

export type CharSpan = [start: number, end: number];

export interface TrainingSegment {
  role: TrainingRole;
  /** `<|im_start|>{role}\n{value}<|im_end|>\n`, image placeholders already expanded. */
  text: string;
  /** [charStart, charEnd) of `text` in the rendered conversation. */
  charStart: number;
  charEnd: number;
  /** gpt segments: the answer plus its `<|im_end|>`, the characters that carry loss. */
  supervisedCharSpan: CharSpan | null;
}

export interface TrainingText {
  /** All segments concatenated. */
  text: string;
  segments: TrainingSegment[];
  supervisedCharSpans: CharSpan[];
}

export interface TrainingTextOptions {
  /** Tiles of each image of the sample, in placeholder order; empty for text-only and video-less samples. */
  numPatchesPerImage?: readonly number[];
  /** Image tokens per tile (default 256, InternVL 2.5). */
  numImageToken?: number;
  /** Leave `<image>` as literal text (the pure-text path). */
  textOnly?: boolean;
  /** System prompt when the conversation has no leading system turn (default: the internvl2_5 template's). */
  systemMessage?: string;
}

const SEGMENT_PREFIX: Record<TrainingRole, string> = {
  system: '<|im_start|>system\n',
  human: '<|im_start|>user\n',
  gpt: '<|im_start|>assistant\n',
};
const SEGMENT_SUFFIX = '<|im_end|>\n';

function checkConversations(conversations: readonly TrainingTurn[]): void {
  if (!Array.isArray(conversations) || conversations.length === 0) {
    throw new InternVLError('BAD_INPUT', 'a training sample needs a non-empty conversations list');
  }
  conversations.forEach((turn, i) => {
    if (turn === null || typeof turn !== 'object' || typeof turn.value !== 'string') {
      throw new InternVLError('BAD_INPUT', `conversations[${i}] must be an object with a string 'value'`);
    }
    const allowed = i === 0 ? ['system', 'human', 'gpt'] : ['human', 'gpt'];
    if (!allowed.includes(turn.from)) {
      throw new InternVLError(
        'BAD_INPUT',
        `conversations[${i}] has from='${String(turn.from)}'; expected ${allowed.join(' or ')}` +
          (i > 0 && turn.from === 'system' ? ' (a system turn is only allowed first)' : ''),
      );
    }
  });
}

function firstNonSystemIndex(conversations: readonly TrainingTurn[]): number {
  const index = conversations.findIndex((turn) => turn.from !== 'system');
  if (index === -1) throw new InternVLError('BAD_INPUT', 'the conversation has no human or gpt turn');
  return index;
}

/**
 * Single-image samples: prefix `<image>\n` to the first turn when it lacks `<image>` (`multi_modal_get_item`).
 * The reference checks `conversations[0]`, which is the system turn when there is one; this checks the first
 * non-system turn instead, the same whenever the sample has no system turn.
 */
export function addImagePlaceholder(conversations: readonly TrainingTurn[]): TrainingTurn[] {
  checkConversations(conversations);
  const target = firstNonSystemIndex(conversations);
  return conversations.map((turn, i) =>
    i === target && !turn.value.includes(IMAGE_PLACEHOLDER)
      ? { ...turn, value: `${IMAGE_PLACEHOLDER}\n${turn.value}` }
      : { ...turn },
  );
}

/**
 * Video samples (`video_get_item`): prefix `<video>\n` to the first turn when it lacks `<video>`, then replace
 * every `<video>\n` there with `Frame-1: <image>\n…Frame-K: <image>\n`. The first turn is chosen as in
 * {@link addImagePlaceholder}.
 */
export function addVideoFrames(conversations: readonly TrainingTurn[], numFrames: number): TrainingTurn[] {
  checkConversations(conversations);
  if (!Number.isSafeInteger(numFrames) || numFrames < 1) {
    throw new InternVLError(
      'BAD_INPUT',
      `a video sample needs a positive frame count, got ${String(numFrames)}`,
    );
  }
  const target = firstNonSystemIndex(conversations);
  const labels = Array.from({ length: numFrames }, (_, i) => `Frame-${i + 1}: ${IMAGE_PLACEHOLDER}`).join(
    '\n',
  );
  return conversations.map((turn, i) => {
    if (i !== target) return { ...turn };
    const value = turn.value.includes(VIDEO_PLACEHOLDER) ? turn.value : `${VIDEO_PLACEHOLDER}\n${turn.value}`;
    return { ...turn, value: value.split(`${VIDEO_PLACEHOLDER}\n`).join(`${labels}\n`) };
  });
}

/**
 * The text of `preprocess_internvl2_5` (dataset.py): a system segment, then one segment per turn, with the
 * `<image>` placeholders of human turns expanded in order, one per entry of `numPatchesPerImage`.
 */
export function renderTrainingText(
  conversations: readonly TrainingTurn[],
  options: TrainingTextOptions = {},
): TrainingText {
  checkConversations(conversations);
  let systemMessage = options.systemMessage ?? getTemplate('internvl2_5').systemMessage;
  let turns = conversations;
  if (turns[0].from === 'system') {
    systemMessage = turns[0].value;
    turns = turns.slice(1);
  }

  const numPatchesPerImage = options.numPatchesPerImage ?? [];
  const numImageToken = options.numImageToken ?? INTERNVL2_5_NUM_IMAGE_TOKEN;
  const values = turns.map((turn) => turn.value);
  if (!options.textOnly) {
    let imageIndex = 0;
    values.forEach((value, t) => {
      if (turns[t].from !== 'human') return;
      let expanded = value;
      let from = 0;
      while (imageIndex < numPatchesPerImage.length) {
        const at = expanded.indexOf(IMAGE_PLACEHOLDER, from);
        if (at === -1) break;
        const span = imageTokenSpan(numPatchesPerImage[imageIndex], numImageToken);
        expanded = expanded.slice(0, at) + span + expanded.slice(at + IMAGE_PLACEHOLDER.length);
        from = at + span.length;
        imageIndex++;
      }
      values[t] = expanded;
    });
    if (imageIndex !== numPatchesPerImage.length) {
      throw new InternVLError(
        'BAD_INPUT',
        `the sample has ${numPatchesPerImage.length} images but its human turns hold only ${imageIndex} ` +
          `'${IMAGE_PLACEHOLDER}' placeholders`,
      );
    }
  }

  const pieces: { role: TrainingRole; value: string }[] = [{ role: 'system', value: systemMessage }];
  turns.forEach((turn, t) => {
    pieces.push({ role: turn.from, value: values[t] });
  });

  const segments: TrainingSegment[] = [];
  let offset = 0;
  for (const { role, value } of pieces) {
    const text = SEGMENT_PREFIX[role] + value + SEGMENT_SUFFIX;
    const charStart = offset;
    const charEnd = offset + text.length;
    const supervisedCharSpan: CharSpan | null =
      role === 'gpt' ? [charStart + SEGMENT_PREFIX.gpt.length, charEnd - 1] : null;
    segments.push({ role, text, charStart, charEnd, supervisedCharSpan });
    offset = charEnd;
  }
  return {
    text: segments.map((segment) => segment.text).join(''),
    segments,
    supervisedCharSpans: segments.flatMap((segment) =>
      segment.supervisedCharSpan ? [segment.supervisedCharSpan] : [],
    ),
  };
}

export interface TokenizedSegment extends TrainingSegment {
  /** [tokenStart, tokenEnd) of this segment in `inputIds` (clipped by `maxLength`). */
  tokenStart: number;
  tokenEnd: number;
}

export interface TokenizedTrainingSample {
  text: string;
  inputIds: Int32Array;
  /** The token id where the position carries loss, else IGNORE_TOKEN_ID. */
  labels: Int32Array;
  segments: TokenizedSegment[];
  supervisedCharSpans: CharSpan[];
}

/**
 * `preprocess_internvl2_5` token side: each segment tokenised on its own and concatenated. Labels are ignored
 * except in gpt segments, where the `<|im_start|>assistant\n` tokens and the final `\n` token are ignored too.
 * With `tokenizer.addBosToken` (InternLM2) a single BOS starts the sequence. Truncated to `maxLength` when
 * given; padding is the collator's business.
 */
export function tokenizeTrainingSample(
  tokenizer: Tokenizer,
  conversations: readonly TrainingTurn[],
  options: TrainingTextOptions & { maxLength?: number } = {},
): TokenizedTrainingSample {
  const rendered = renderTrainingText(conversations, options);
  const texts = rendered.segments.map((segment) => segment.text);
  let bosToken: string | undefined;
  if (tokenizer.addBosToken) {
    bosToken = tokenizer.bosTokenId === undefined ? undefined : tokenizer.idToToken(tokenizer.bosTokenId);
    if (bosToken === undefined) {
      throw new InternVLError('BAD_TOKENIZER', 'the tokenizer adds a BOS token but has no BOS token string');
    }
    texts[0] = bosToken + texts[0];
  }
  // Every segment got its own BOS from the tokenizer; dropping it leaves only the literal one of segment 0.
  const segmentIds = texts.map((text) => {
    const ids = tokenizer.encode(text);
    return bosToken === undefined ? ids : ids.slice(1);
  });
  const assistantPrefixLength =
    tokenizer.encode(SEGMENT_PREFIX.gpt).length - (bosToken === undefined ? 0 : 1);

  const total = segmentIds.reduce((sum, ids) => sum + ids.length, 0);
  const length = options.maxLength === undefined ? total : Math.min(total, Math.max(0, options.maxLength));
  const inputIds = new Int32Array(length);
  const labels = new Int32Array(length).fill(IGNORE_TOKEN_ID);
  const segments: TokenizedSegment[] = [];
  let position = 0;
  rendered.segments.forEach((segment, s) => {
    const ids = segmentIds[s];
    const start = position;
    for (let i = 0; i < ids.length; i++, position++) {
      if (position >= length) continue;
      inputIds[position] = ids[i];
      if (segment.role === 'gpt' && i >= assistantPrefixLength && i < ids.length - 1)
        labels[position] = ids[i];
    }
    segments.push({ ...segment, tokenStart: Math.min(start, length), tokenEnd: Math.min(position, length) });
  });
  return {
    text: rendered.text,
    inputIds,
    labels,
    segments,
    supervisedCharSpans: rendered.supervisedCharSpans,
  };
}

export type LossReduction = 'token' | 'sample' | 'square';

/** `len2weight`: the per-token weight of a sample with n supervised tokens. */
export function len2weight(n: number, mode: LossReduction): number {
  if (n === 0) return 0;
  switch (mode) {
    case 'token':
      return 1;
    case 'sample':
      return 1 / n;
    case 'square':
      return 1 / Math.sqrt(n);
    default:
      throw new InternVLError(
        'BAD_INPUT',
        `unknown loss reduction '${String(mode)}'; expected token, sample or square`,
      );
  }
}

/** Where the packed samples start and end: per-sample lengths, or cumulative offsets starting at 0. */
export type SampleBoundaries = { sampleLengths: ArrayLike<number> } | { cuSeqlens: ArrayLike<number> };

function sampleLengthsOf(boundaries: SampleBoundaries, total: number): number[] {
  let lengths: number[];
  if ('cuSeqlens' in boundaries) {
    const cu = Array.from(boundaries.cuSeqlens);
    if (cu.length === 0 || cu[0] !== 0) throw new InternVLError('BAD_INPUT', 'cuSeqlens must start with 0');
    lengths = cu.slice(1).map((end, i) => end - cu[i]);
  } else {
    lengths = Array.from(boundaries.sampleLengths);
  }
  let sum = 0;
  for (const [i, n] of lengths.entries()) {
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new InternVLError(
        'BAD_INPUT',
        `sample ${i} has length ${n}; lengths must be non-negative integers`,
      );
    }
    sum += n;
  }
  if (sum !== total) {
    throw new InternVLError(
      'BAD_INPUT',
      `sample lengths cover ${sum} positions but there are ${total} labels`,
    );
  }
  return lengths;
}

/**
 * Per-position loss weights of a packed sequence (`packed_collate_fn`): every position of a sample gets
 * len2weight(n) for that sample's n supervised labels, and ignored positions get 0.
 */
export function lossWeights(
  labels: ArrayLike<number>,
  boundaries: SampleBoundaries,
  mode: LossReduction,
): Float32Array {
  len2weight(1, mode);
  const lengths = sampleLengthsOf(boundaries, labels.length);
  const weights = new Float32Array(labels.length);
  let start = 0;
  for (const length of lengths) {
    const end = start + length;
    let supervised = 0;
    for (let i = start; i < end; i++) if (labels[i] !== IGNORE_TOKEN_ID) supervised++;
    const weight = len2weight(supervised, mode);
    for (let i = start; i < end; i++) weights[i] = labels[i] === IGNORE_TOKEN_ID ? 0 : weight;
    start = end;
  }
  return weights;
}

/**
 * Σ w·loss / Σ w over aligned (already causally shifted) per-token losses and weights; 0 when Σ w = 0
 * (the reference would divide by zero).
 */
export function weightedLoss(perTokenLoss: ArrayLike<number>, weights: ArrayLike<number>): number {
  if (perTokenLoss.length !== weights.length) {
    throw new InternVLError(
      'BAD_INPUT',
      `weightedLoss got ${perTokenLoss.length} losses but ${weights.length} weights`,
    );
  }
  let weighted = 0;
  let normalizer = 0;
  for (let i = 0; i < weights.length; i++) {
    if (weights[i] === 0) continue;
    weighted += weights[i] * perTokenLoss[i];
    normalizer += weights[i];
  }
  return normalizer === 0 ? 0 : weighted / normalizer;
}
