import { InternVLError } from '../errors.js';
import { type GenerationConfig, parseGenerationConfigInput } from './generation-config.js';

/**
 * xoshiro128** (Blackman & Vigna) on 32-bit integer arithmetic, so a seed gives the same stream on
 * every platform and JS engine.
 */
export class Xoshiro128 {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;

  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) {
      throw new InternVLError('BAD_INPUT', `seed must be a safe integer (got ${seed})`);
    }
    // Two splitmix64 outputs of the seed's 64-bit two's complement (the seeding Vigna recommends):
    // a bijection, so distinct seeds give distinct states.
    const mask = 0xffffffffffffffffn;
    let x = BigInt.asUintN(64, BigInt(seed));
    const splitmix64 = (): bigint => {
      x = (x + 0x9e3779b97f4a7c15n) & mask;
      let z = x;
      z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & mask;
      z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & mask;
      return z ^ (z >> 31n);
    };
    const first = splitmix64();
    const second = splitmix64();
    this.s0 = Number(first & 0xffffffffn);
    this.s1 = Number(first >> 32n);
    this.s2 = Number(second & 0xffffffffn);
    this.s3 = Number(second >> 32n);
    // The all-zero state is the one state xoshiro cannot leave.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** A random seed from the platform's CSPRNG (Web Crypto, in Node and browsers). */
  static randomSeed(): number {
    const words = globalThis.crypto.getRandomValues(new Uint32Array(2));
    return (words[0] & 0x1fffff) * 0x100000000 + words[1];
  }

  /** Next 32-bit unsigned integer. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform float in [0, 1) with 53 random bits. */
  nextFloat(): number {
    const high = this.nextUint32() >>> 5;
    const low = this.nextUint32() >>> 6;
    return (high * 67108864 + low) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

export type SamplingParams = Pick<
  GenerationConfig,
  'temperature' | 'topK' | 'topP' | 'minP' | 'repetitionPenalty' | 'logprobs' | 'topLogprobs'
> & { seed?: number };

/** Plain greedy decoding: the most likely token at every step, no penalties, no logprobs. */
export const GREEDY_SAMPLING: Readonly<SamplingParams> = {
  temperature: 0,
  topK: 0,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  logprobs: false,
  topLogprobs: 0,
};

/** The part of a generation config that the sampler uses. */
export function samplingParams(config: GenerationConfig): SamplingParams {
  const { temperature, topK, topP, minP, repetitionPenalty, logprobs, topLogprobs, seed } = config;
  return { temperature, topK, topP, minP, repetitionPenalty, logprobs, topLogprobs, seed };
}

export interface TokenLogprob {
  id: number;
  logprob: number;
}

export interface SampledToken {
  id: number;
  /** Present when `logprobs` is on. */
  logprob?: number;
  /** Present when `topLogprobs` > 0: the most likely ids, best first (ties: lower id first). */
  topLogprobs?: TokenLogprob[];
}

/**
 * Picks each next token from the model's logits, in the order Hugging Face and LMDeploy apply their
 * processors: repetition penalty → greedy argmax when temperature is 0 → temperature → top-k →
 * top-p → min-p → a draw from the renormalised survivors.
 *
 * Reported logprobs are the log-softmax of the model's logits as given, before the repetition
 * penalty, temperature and filters (vLLM's default `raw_logprobs`), so they describe the model and not
 * the sampling settings, and greedy and sampled runs report the same numbers for the same token.
 *
 * Per step the work is O(vocab) plus selection among the candidates: top-k finds its threshold by
 * quickselect and top-p by a mass-weighted quickselect, so the vocabulary is never sorted.
 * A NaN or +Infinity logit, or a step where every logit is -Infinity, throws INTERNAL: it means the
 * model's numerics failed, and sampling on would hide that.
 */
export class Sampler {
  private readonly params: SamplingParams;
  private readonly vocabSize: number;
  private readonly random: Xoshiro128;
  private step = 0;
  private stamp = 0;
  private readonly work: Float32Array;
  /** Candidate ids (ascending), their scaled logits and their unnormalised probabilities. */
  private readonly candIds: Int32Array;
  private readonly candVals: Float64Array;
  private readonly candWeights: Float64Array;
  private readonly scratch: Float64Array;
  /** Marks ids already penalised in this step: seenStamp[id] === stamp. */
  private readonly seenStamp: Uint32Array;

  constructor(config: SamplingParams, vocabSize: number) {
    const { temperature, topK, topP, minP, repetitionPenalty, logprobs, topLogprobs, seed } = config;
    parseGenerationConfigInput({
      temperature,
      topK,
      topP,
      minP,
      repetitionPenalty,
      logprobs,
      topLogprobs,
      ...(seed === undefined ? {} : { seed }),
    });
    if (!Number.isSafeInteger(vocabSize) || vocabSize < 1) {
      throw new InternVLError('BAD_INPUT', `vocabSize must be a positive integer (got ${vocabSize})`);
    }
    this.params = { temperature, topK, topP, minP, repetitionPenalty, logprobs, topLogprobs, seed };
    this.vocabSize = vocabSize;
    this.random = new Xoshiro128(seed ?? Xoshiro128.randomSeed());
    this.work = new Float32Array(vocabSize);
    this.candIds = new Int32Array(vocabSize);
    this.candVals = new Float64Array(vocabSize);
    this.candWeights = new Float64Array(vocabSize);
    this.scratch = new Float64Array(vocabSize);
    this.seenStamp = new Uint32Array(vocabSize);
  }

  /** The next token for `logits` (one row, [vocabSize]); `previousIds` are prompt + generated ids. */
  next(logits: Float32Array, previousIds: ArrayLike<number>): SampledToken {
    const n = this.prepare(logits, previousIds);
    const id = n === 1 ? this.candIds[0] : this.draw(n);
    const result: SampledToken = { id };
    if (this.params.logprobs || this.params.topLogprobs > 0) {
      const lse = logSumExp(logits);
      result.logprob = logits[id] - lse;
      if (this.params.topLogprobs > 0) {
        result.topLogprobs = topIds(logits, this.params.topLogprobs).map((best) => ({
          id: best,
          logprob: logits[best] - lse,
        }));
      }
    }
    return result;
  }

  /**
   * The distribution `next` would draw from for these inputs, without drawing: the surviving ids in
   * ascending order and their renormalised probabilities (greedy: the argmax with probability 1).
   */
  distribution(
    logits: Float32Array,
    previousIds: ArrayLike<number>,
  ): { ids: Int32Array; probs: Float64Array } {
    const n = this.prepare(logits, previousIds);
    const ids = this.candIds.slice(0, n);
    const probs = this.candWeights.slice(0, n);
    let total = 0;
    for (let j = 0; j < n; j++) total += probs[j];
    for (let j = 0; j < n; j++) probs[j] /= total;
    return { ids, probs };
  }

  /**
   * Checks the logits, applies the penalty and the filters; leaves the survivors (ascending ids) with
   * unnormalised probabilities in candIds/candWeights and returns how many there are.
   */
  private prepare(logits: Float32Array, previousIds: ArrayLike<number>): number {
    this.step++;
    if (logits.length !== this.vocabSize) {
      throw new InternVLError(
        'INTERNAL',
        `sampling step ${this.step}: got ${logits.length} logits, expected vocabSize ${this.vocabSize}`,
      );
    }
    this.checkLogits(logits);
    const work = this.work;
    work.set(logits);
    if (this.params.repetitionPenalty !== 1) this.applyRepetitionPenalty(work, previousIds);
    if (this.params.temperature === 0) {
      this.candIds[0] = argmax(work);
      this.candWeights[0] = 1;
      return 1;
    }
    return this.filter(work);
  }

  /** One draw from the first n candidates, in proportion to their weights. */
  private draw(n: number): number {
    const weights = this.candWeights;
    let total = 0;
    for (let j = 0; j < n; j++) total += weights[j];
    const target = this.random.nextFloat() * total;
    let cumulative = 0;
    for (let j = 0; j < n; j++) {
      cumulative += weights[j];
      if (target < cumulative) return this.candIds[j];
    }
    return this.candIds[n - 1];
  }

  private checkLogits(logits: Float32Array): void {
    let anyFinite = false;
    for (let i = 0; i < logits.length; i++) {
      const v = logits[i];
      if (v > -Infinity && v < Infinity) {
        anyFinite = true;
      } else if (v !== -Infinity) {
        throw new InternVLError(
          'INTERNAL',
          `sampling step ${this.step}: logit of token ${i} is ${v} (the model produced non-finite values)`,
        );
      }
    }
    if (!anyFinite) {
      throw new InternVLError(
        'INTERNAL',
        `sampling step ${this.step}: every logit is -Infinity, no token can be chosen`,
      );
    }
  }

  /** Hugging Face RepetitionPenaltyLogitsProcessor: once per distinct id, x < 0 ? x·p : x/p. */
  private applyRepetitionPenalty(work: Float32Array, previousIds: ArrayLike<number>): void {
    const penalty = this.params.repetitionPenalty;
    const stamp = ++this.stamp;
    for (let i = 0; i < previousIds.length; i++) {
      const id = previousIds[i];
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new InternVLError(
          'INTERNAL',
          `sampling step ${this.step}: previous token id ${id} at position ${i} is outside the vocabulary [0, ${this.vocabSize})`,
        );
      }
      if (this.seenStamp[id] === stamp) continue;
      this.seenStamp[id] = stamp;
      const x = work[id];
      work[id] = x < 0 ? x * penalty : x / penalty;
    }
  }

  /** Temperature, top-k, top-p and min-p; see `prepare`. */
  private filter(work: Float32Array): number {
    const { temperature, topK, topP, minP } = this.params;
    const ids = this.candIds;
    const vals = this.candVals;
    const weights = this.candWeights;
    let max = -Infinity;
    for (let i = 0; i < work.length; i++) if (work[i] > max) max = work[i];
    // Scaled logits relative to the maximum (≤ 0, the top token at 0): no overflow for tiny temperatures.
    let n = 0;
    for (let i = 0; i < work.length; i++) {
      if (work[i] === -Infinity) continue;
      ids[n] = i;
      vals[n] = (work[i] - max) / temperature;
      n++;
    }

    if (topK > 0 && topK < n) {
      this.scratch.set(vals.subarray(0, n));
      const threshold = kthLargest(this.scratch, n, topK);
      // Ties at the threshold are kept, as TopKLogitsWarper's `scores < kth` removal does.
      let kept = 0;
      for (let j = 0; j < n; j++) {
        if (vals[j] >= threshold) {
          ids[kept] = ids[j];
          vals[kept] = vals[j];
          kept++;
        }
      }
      n = kept;
    }

    let total = 0;
    for (let j = 0; j < n; j++) {
      weights[j] = Math.exp(vals[j]);
      total += weights[j];
    }

    if (topP < 1) {
      this.scratch.set(weights.subarray(0, n));
      const cut = nucleusCut(this.scratch, n, topP * total);
      let tiesLeft = cut.tiesKept;
      let kept = 0;
      for (let j = 0; j < n; j++) {
        const w = weights[j];
        // Candidates are in ascending id order, so tied weights keep their lowest ids.
        if (w > cut.weight || (w === cut.weight && tiesLeft-- > 0)) {
          ids[kept] = ids[j];
          weights[kept] = w;
          kept++;
        }
      }
      n = kept;
    }

    if (minP > 0) {
      // The top token has weight exp(0) = 1, so "prob < minP·top prob" is "weight < minP".
      let kept = 0;
      for (let j = 0; j < n; j++) {
        if (weights[j] >= minP) {
          ids[kept] = ids[j];
          weights[kept] = weights[j];
          kept++;
        }
      }
      n = kept;
    }
    return n;
  }
}

/** Index of the largest value; ties go to the lowest index (as torch.argmax). */
export function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function logSumExp(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

/** The k ids with the largest logits, best first; ties keep the lower id first. */
function topIds(logits: Float32Array, k: number): number[] {
  const best: number[] = [];
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i];
    if (best.length === k && !(v > logits[best[k - 1]])) continue;
    let at = best.length === k ? k - 1 : best.length;
    while (at > 0 && v > logits[best[at - 1]]) {
      if (at < best.length) best[at] = best[at - 1];
      else best.push(best[at - 1]);
      at--;
    }
    if (at < best.length) best[at] = i;
    else best.push(i);
  }
  return best;
}

/**
 * Rearranges values[lo, hi) into [> pivot | == pivot | < pivot]; returns the ends of the first two
 * parts. Three-way, so runs of equal values cost one pass.
 */
function partitionDescending(values: Float64Array, lo: number, hi: number, pivot: number): [number, number] {
  let gtEnd = lo;
  let i = lo;
  let ltStart = hi;
  while (i < ltStart) {
    const v = values[i];
    if (v > pivot) {
      values[i] = values[gtEnd];
      values[gtEnd] = v;
      gtEnd++;
      i++;
    } else if (v < pivot) {
      ltStart--;
      values[i] = values[ltStart];
      values[ltStart] = v;
    } else {
      i++;
    }
  }
  return [gtEnd, ltStart];
}

function medianOfThree(values: Float64Array, lo: number, hi: number): number {
  const a = values[lo];
  const b = values[(lo + hi) >>> 1];
  const c = values[hi - 1];
  return Math.max(Math.min(a, b), Math.min(Math.max(a, b), c));
}

/** The k-th largest of values[0, n) (1-based k ≤ n); reorders `values`. */
function kthLargest(values: Float64Array, n: number, k: number): number {
  let lo = 0;
  let hi = n;
  let rank = k;
  for (;;) {
    const pivot = medianOfThree(values, lo, hi);
    const [gtEnd, ltStart] = partitionDescending(values, lo, hi, pivot);
    const greater = gtEnd - lo;
    const equal = ltStart - gtEnd;
    if (rank <= greater) {
      hi = gtEnd;
    } else if (rank <= greater + equal) {
      return pivot;
    } else {
      rank -= greater + equal;
      lo = ltStart;
    }
  }
}

/**
 * Top-p cut without sorting. In descending order of weight (ties: ascending id), a candidate is kept
 * while the weight before it is below `target` (TopPLogitsWarper's rule, which always keeps the top
 * token). Returns the smallest kept weight and how many candidates of exactly that weight are kept;
 * every larger weight is kept. Reorders `weights`.
 */
function nucleusCut(weights: Float64Array, n: number, target: number): { weight: number; tiesKept: number } {
  let lo = 0;
  let hi = n;
  let before = 0;
  for (;;) {
    const pivot = medianOfThree(weights, lo, hi);
    const [gtEnd, ltStart] = partitionDescending(weights, lo, hi, pivot);
    let greaterMass = 0;
    for (let j = lo; j < gtEnd; j++) greaterMass += weights[j];
    if (before + greaterMass >= target && gtEnd > lo) {
      hi = gtEnd;
      continue;
    }
    before += greaterMass;
    const equal = ltStart - gtEnd;
    let tiesKept = 0;
    while (tiesKept < equal && before < target) {
      before += pivot;
      tiesKept++;
    }
    if (tiesKept < equal || ltStart === hi || before >= target) {
      return { weight: pivot, tiesKept };
    }
    lo = ltStart;
  }
}
