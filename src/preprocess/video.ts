import { InternVLError } from '../errors.js';
import type { RgbImage } from './image.js';
import { resizeBicubic } from './resize.js';

export interface VideoFrameIndexOptions {
  /** Number of frames in the video (`len(vr)`); max_frame is numFrames − 1. */
  numFrames: number;
  /** Average frames per second of the video stream. */
  fps: number;
  /** How many frames to sample (the model card uses 8). */
  numSegments: number;
  /** Optional clip `[startSec, endSec]`; null/undefined means the whole video. */
  bound?: readonly [number, number] | null;
  /** Lowest frame index the clip may start at (official default 0). */
  firstIdx?: number;
}

/**
 * `np.round(x)` (and Python `round(x)`, up to the sign of zero) for doubles: ties go to the even integer. Only exact ties are ties:
 * 2.5000000000000004 rounds up. `x − floor(x)` is exact in double precision, so the comparison with 0.5 is too.
 */
export function roundHalfEven(x: number): number {
  if (!Number.isFinite(x)) return x;
  const floor = Math.floor(x);
  const fraction = x - floor;
  const rounded = fraction < 0.5 ? floor : fraction > 0.5 ? floor + 1 : floor % 2 === 0 ? floor : floor + 1;
  // Keeps the sign of zero, as np.round does (np.round(-0.4) is -0.0).
  return rounded === 0 && (x < 0 || Object.is(x, -0)) ? -0 : rounded;
}

/** Python `int(x)` for a double: truncation toward zero, never −0. */
const truncToInt = (x: number): number => Math.trunc(x) || 0;

/**
 * The frame indices the official `get_index` (model card `load_video`, `eval/mvbench`) samples.
 * Reproduces the reference exactly, including its quirks: with a bound that starts after the clip the
 * segment size is negative and indices run downward and may exceed numFrames − 1; indices may repeat
 * when numSegments > numFrames. Callers that decode frames must clamp.
 */
export function videoFrameIndices(options: VideoFrameIndexOptions): number[] {
  const { numFrames, fps, numSegments, bound = null, firstIdx = 0 } = options;
  if (!Number.isInteger(numFrames) || numFrames < 1) {
    throw new InternVLError('BAD_VIDEO', `numFrames must be an integer ≥ 1, got ${numFrames}`);
  }
  if (typeof fps !== 'number' || !Number.isFinite(fps) || fps <= 0) {
    throw new InternVLError('BAD_VIDEO', `fps must be a finite number > 0, got ${fps}`);
  }
  if (!Number.isInteger(numSegments) || numSegments < 1) {
    throw new InternVLError('BAD_VIDEO', `numSegments must be an integer ≥ 1, got ${numSegments}`);
  }
  if (!Number.isInteger(firstIdx) || firstIdx < 0) {
    throw new InternVLError('BAD_VIDEO', `firstIdx must be an integer ≥ 0, got ${firstIdx}`);
  }
  if (
    bound != null &&
    (!Array.isArray(bound) || bound.length !== 2 || !bound.every((v) => Number.isFinite(v)))
  ) {
    throw new InternVLError(
      'BAD_VIDEO',
      `bound must be [startSec, endSec] with two finite numbers, got ${JSON.stringify(bound)}`,
    );
  }

  const maxFrame = numFrames - 1;
  const [start, end] = bound ?? [-100000, 100000];
  const startIdx = Math.max(firstIdx, roundHalfEven(start * fps));
  const endIdx = Math.min(roundHalfEven(end * fps), maxFrame);
  const segSize = (endIdx - startIdx) / numSegments;
  const indices: number[] = [];
  for (let k = 0; k < numSegments; k++) {
    indices.push(truncToInt(startIdx + segSize / 2 + roundHalfEven(segSize * k)));
  }
  return indices;
}

/**
 * One tile per frame, as the model card's `load_video` does (dynamic_preprocess with max_num = 1):
 * each frame is resized directly to tileSize × tileSize, aspect ratio not preserved.
 */
export function videoToTiles(frames: readonly RgbImage[], tileSize = 448): RgbImage[] {
  if (!Number.isInteger(tileSize) || tileSize < 1) {
    throw new InternVLError('BAD_VIDEO', `tileSize must be an integer ≥ 1, got ${tileSize}`);
  }
  return frames.map((frame) => resizeBicubic(frame, tileSize, tileSize));
}
