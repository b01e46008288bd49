/** Selection over logits without sorting the vocabulary: top-k thresholds, top-p cuts, top ids, log-sum-exp. */

/**
 * The k-th largest (repeats counted) of the scaled values (work[i] − max) / temperature over the entries
 * that are not −Infinity, in one pass with a min-heap of the k largest held in `heap` (length ≥ k), and
 * how many entries are not −Infinity. The threshold is meaningful when k ≤ that count.
 */
export function kthLargestScaled(
  work: Float32Array,
  max: number,
  temperature: number,
  k: number,
  heap: Float64Array,
): { threshold: number; finite: number } {
  let size = 0;
  let finite = 0;
  for (let i = 0; i < work.length; i++) {
    if (work[i] === -Infinity) continue;
    finite++;
    const v = (work[i] - max) / temperature;
    if (size < k) {
      // Sift up.
      let at = size++;
      while (at > 0) {
        const parent = (at - 1) >> 1;
        if (heap[parent] <= v) break;
        heap[at] = heap[parent];
        at = parent;
      }
      heap[at] = v;
    } else if (v > heap[0]) {
      // Replace the smallest and sift down.
      let at = 0;
      for (;;) {
        const left = 2 * at + 1;
        if (left >= size) break;
        const right = left + 1;
        const child = right < size && heap[right] < heap[left] ? right : left;
        if (heap[child] >= v) break;
        heap[at] = heap[child];
        at = child;
      }
      heap[at] = v;
    }
  }
  return { threshold: heap[0], finite };
}

/** log Σ exp(logits) given their maximum `max`. */
export function logSumExp(logits: Float32Array, max: number): number {
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

/** The k ids with the largest logits, best first; ties keep the lower id first. */
export function topIds(logits: Float32Array, k: number): number[] {
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

/**
 * Top-p cut without sorting. In descending order of weight (ties: ascending id), a candidate is kept
 * while the weight before it is below `target` (TopPLogitsWarper's rule, which always keeps the top
 * token). Returns the smallest kept weight and how many candidates of exactly that weight are kept;
 * every larger weight is kept. Reorders `weights`.
 */
export function nucleusCut(
  weights: Float64Array,
  n: number,
  target: number,
): { weight: number; tiesKept: number } {
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
