import { InternVLError } from '../errors.js';

/** JPEG qualities of the training augmentation: 75..100 inclusive (`dataset.py`, `build_transform`). */
export const JPEG_QUALITY_MIN = 75;
export const JPEG_QUALITY_MAX = 100;
/** Frames per training video sample: uniform in [min, max] (the 2.5 scripts' min/max_num_frame). */
export const DEFAULT_MIN_NUM_FRAME = 8;
export const DEFAULT_MAX_NUM_FRAME = 32;

/**
 * A seeded pseudo-random generator (SplitMix32-seeded xoshiro128**). Deterministic for a seed, but not
 * numpy's generator: results are reproducible within this project, not bit-identical to the official run.
 */
export interface Rng {
  /** Uniform float in [0, 1). */
  next(): number;
  /** Uniform integer in [0, n). */
  int(n: number): number;
  /** Uniform integer in [lo, hi], both inclusive. */
  between(lo: number, hi: number): number;
}

function splitmix32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/** A generator for `seed` and an optional stream number (e.g. the dataset index), independent per pair. */
export function createRng(seed: number, stream = 0): Rng {
  if (!Number.isSafeInteger(seed) || !Number.isSafeInteger(stream)) {
    throw new InternVLError('BAD_INPUT', `random seed must be an integer, got ${seed}/${stream}`);
  }
  const mix = splitmix32((seed ^ Math.imul(stream + 1, 0x27d4eb2f)) + Math.floor(seed / 2 ** 32));
  const s = [mix(), mix(), mix(), mix()];
  if ((s[0] | s[1] | s[2] | s[3]) === 0) s[0] = 1;
  const nextU32 = (): number => {
    const result = Math.imul(((Math.imul(s[1], 5) << 7) | (Math.imul(s[1], 5) >>> 25)) >>> 0, 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ((s[3] << 11) | (s[3] >>> 21)) >>> 0;
    return result;
  };
  const next = (): number => (nextU32() * 2 ** 21 + (nextU32() >>> 11)) / 2 ** 53;
  const int = (n: number): number => {
    if (!Number.isSafeInteger(n) || n <= 0)
      throw new InternVLError('BAD_INPUT', `rng.int needs n ≥ 1, got ${n}`);
    return Math.floor(next() * n);
  };
  return { next, int, between: (lo, hi) => lo + int(hi - lo + 1) };
}

/** Fisher–Yates shuffle into a new array. */
export function shuffled<T>(items: readonly T[], rng: Rng): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/**
 * `repeat_time` as `internvl_chat_pretrain.py` applies it (the script of the 2.5 training stages): below 1 keeps
 * the first int(len·r) lines, unshuffled; otherwise the list is repeated int(r) times.
 */
export function applyRepeatTime<T>(items: readonly T[], repeatTime: number): T[] {
  if (!(repeatTime > 0) || !Number.isFinite(repeatTime)) {
    throw new InternVLError('BAD_INPUT', `repeat_time must be a positive number, got ${repeatTime}`);
  }
  if (repeatTime < 1) return items.slice(0, Math.floor(items.length * repeatTime));
  const times = Math.floor(repeatTime);
  const out: T[] = [];
  for (let r = 0; r < times; r++) out.push(...items);
  return out;
}

/** Tile budget of each image of a sample with `numImages` images: max(1, n_max // numImages). */
export function maxTilesPerImage(maxDynamicPatch: number, numImages: number): number {
  if (numImages <= 1) return maxDynamicPatch;
  return Math.max(1, Math.floor(maxDynamicPatch / numImages));
}

/** One JPEG quality per tile (thumbnail included), each independently uniform in 75..100 (`RandomChoice`). */
export function drawJpegQualities(rng: Rng, numTiles: number): number[] {
  return Array.from({ length: numTiles }, () => rng.between(JPEG_QUALITY_MIN, JPEG_QUALITY_MAX));
}

/** Frames of a training video sample: uniform in [min, max]; short videos repeat their last frame up to it. */
export function drawNumFrames(rng: Rng, min = DEFAULT_MIN_NUM_FRAME, max = DEFAULT_MAX_NUM_FRAME): number {
  if (!Number.isSafeInteger(min) || !Number.isSafeInteger(max) || min < 1 || max < min) {
    throw new InternVLError('BAD_INPUT', `frame range must be integers 1 ≤ min ≤ max, got [${min}, ${max}]`);
  }
  return rng.between(min, max);
}

/**
 * `get_frame_indices(sample='rand')` of `dataset.py`: split [0, vlen) into min(numFrames, vlen) intervals and pick
 * a random frame in each (falling back to a sorted random subset when an interval is empty), then pad with the
 * last index up to numFrames.
 */
export function trainingFrameIndices(rng: Rng, numFrames: number, vlen: number): number[] {
  if (!Number.isSafeInteger(vlen) || vlen < 1) {
    throw new InternVLError('BAD_VIDEO', `a video needs at least one frame, got ${vlen}`);
  }
  const acc = Math.min(numFrames, vlen);
  // np.linspace(0, vlen, acc + 1).astype(int): i·step, with the last point exactly vlen.
  const step = vlen / acc;
  const bounds = Array.from({ length: acc + 1 }, (_, i) => (i === acc ? vlen : Math.trunc(i * step)));
  const ranges = Array.from({ length: acc }, (_, i) => [bounds[i], bounds[i + 1] - 1] as const);
  let indices: number[];
  if (ranges.every(([start, end]) => end > start)) {
    // random.choice(range(start, end)): `end` itself is excluded, as in the reference.
    indices = ranges.map(([start, end]) => start + rng.int(end - start));
  } else {
    indices = shuffled(
      Array.from({ length: vlen }, (_, i) => i),
      rng,
    )
      .slice(0, acc)
      .sort((a, b) => a - b);
  }
  while (indices.length < numFrames) indices.push(indices[indices.length - 1]);
  return indices;
}

/** Index of a dataset picked with probability ∝ weights. */
export function weightedChoice(rng: Rng, weights: readonly number[]): number {
  const total = weights.reduce((a, b) => a + b, 0);
  if (!(total > 0)) throw new InternVLError('BAD_INPUT', 'weightedChoice needs a positive total weight');
  let x = rng.next() * total;
  for (let i = 0; i < weights.length; i++) {
    x -= weights[i];
    if (x < 0) return i;
  }
  return weights.length - 1;
}
