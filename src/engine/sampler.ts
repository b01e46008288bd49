import { InternVLError } from '../errors.js';
import { type GenerationConfig, parseGenerationConfigInput } from './generation-config.js';
import { kthLargestScaled, logSumExp, nucleusCut, topIds } from './sampling-select.js';

import { Xoshiro128 } from './xoshiro.js';

export { Xoshiro128 };

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
 * Per step the work is O(vocab) plus selection among the candidates: top-k finds its threshold in one
 * pass with a heap of k and top-p by a mass-weighted quickselect, so the vocabulary is never sorted.
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
  /** Candidate ids (ascending) and their unnormalised probabilities. */
  private readonly candIds: Int32Array;
  private readonly candWeights: Float64Array;
  /** Sum of candWeights over the survivors, in candidate order. */
  private total = 0;
  /** The largest logit of the step, and Σ exp(logit − it) when the filter computed it (else NaN). */
  private maxLogit = 0;
  private unscaledSum = Number.NaN;
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
      // The filter's sum over the whole vocabulary is this sum when it scaled nothing.
      const lse = Number.isNaN(this.unscaledSum)
        ? logSumExp(logits, this.maxLogit)
        : this.maxLogit + Math.log(this.unscaledSum);
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
    for (let j = 0; j < n; j++) probs[j] /= this.total;
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
    this.maxLogit = this.checkLogits(logits);
    this.unscaledSum = Number.NaN;
    const work = this.work;
    work.set(logits);
    let max = this.maxLogit;
    if (this.params.repetitionPenalty !== 1) {
      this.applyRepetitionPenalty(work, previousIds);
      max = -Infinity;
      for (let i = 0; i < work.length; i++) if (work[i] > max) max = work[i];
    }
    if (this.params.temperature === 0) {
      this.candIds[0] = argmax(work);
      this.candWeights[0] = 1;
      this.total = 1;
      return 1;
    }
    return this.filter(work, max);
  }

  /** One draw from the first n candidates, in proportion to their weights. */
  private draw(n: number): number {
    const weights = this.candWeights;
    const target = this.random.nextFloat() * this.total;
    let cumulative = 0;
    for (let j = 0; j < n; j++) {
      cumulative += weights[j];
      if (target < cumulative) return this.candIds[j];
    }
    return this.candIds[n - 1];
  }

  /** Throws on NaN, +Infinity or all −Infinity; returns the largest logit. */
  private checkLogits(logits: Float32Array): number {
    let anyFinite = false;
    let max = -Infinity;
    for (let i = 0; i < logits.length; i++) {
      const v = logits[i];
      if (v > -Infinity && v < Infinity) {
        anyFinite = true;
        if (v > max) max = v;
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
    return max;
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

  /**
   * Temperature, top-k, top-p and min-p over `work` (whose largest value is `max`); see `prepare`.
   * Sets `total` to the survivors' summed weight (in candidate order, as `draw` adds them up).
   */
  private filter(work: Float32Array, max: number): number {
    const { temperature, topK, topP, minP } = this.params;
    const ids = this.candIds;
    const weights = this.candWeights;
    // Scaled logits relative to the maximum (≤ 0, the top token at 0): no overflow for tiny temperatures.
    const top = topK > 0 ? kthLargestScaled(work, max, temperature, topK, this.scratch) : undefined;
    // Ties at the threshold are kept, as TopKLogitsWarper's `scores < kth` removal does.
    const threshold = top && topK < top.finite ? top.threshold : -Infinity;
    let n = 0;
    let total = 0;
    for (let i = 0; i < work.length; i++) {
      if (work[i] === -Infinity) continue;
      const v = (work[i] - max) / temperature;
      if (v < threshold) continue;
      ids[n] = i;
      weights[n] = Math.exp(v);
      total += weights[n];
      n++;
    }
    // Nothing cut, unscaled and unpenalised: this is the sum logprobs need.
    if (threshold === -Infinity && temperature === 1 && this.params.repetitionPenalty === 1) {
      this.unscaledSum = total;
    }

    if (topP < 1) {
      this.scratch.set(weights.subarray(0, n));
      const cut = nucleusCut(this.scratch, n, topP * total);
      let tiesLeft = cut.tiesKept;
      let kept = 0;
      total = 0;
      for (let j = 0; j < n; j++) {
        const w = weights[j];
        // Candidates are in ascending id order, so tied weights keep their lowest ids.
        if (w > cut.weight || (w === cut.weight && tiesLeft-- > 0)) {
          ids[kept] = ids[j];
          weights[kept] = w;
          total += w;
          kept++;
        }
      }
      n = kept;
    }

    if (minP > 0) {
      // The top token has weight exp(0) = 1, so "prob < minP·top prob" is "weight < minP".
      let kept = 0;
      total = 0;
      for (let j = 0; j < n; j++) {
        if (weights[j] >= minP) {
          ids[kept] = ids[j];
          weights[kept] = weights[j];
          total += weights[j];
          kept++;
        }
      }
      n = kept;
    }
    this.total = total;
    return n;
  }
}

/** Index of the largest value; ties go to the lowest index (as torch.argmax). */
export function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}
