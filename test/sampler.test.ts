import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GREEDY_SAMPLING, Sampler, type SamplingParams, Xoshiro128 } from '../src/engine/sampler.js';
import { kthLargestScaled } from '../src/engine/sampling-select.js';
import { InternVLError } from '../src/errors.js';

const sampling = (overrides: Partial<SamplingParams>): SamplingParams => ({
  ...GREEDY_SAMPLING,
  temperature: 1,
  seed: 1234,
  ...overrides,
});

function softmax(values: ArrayLike<number>): number[] {
  const max = Math.max(...Array.from(values));
  const exps = Array.from(values, (v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}

/** Reference filter with full sorts, written from the Hugging Face warpers. */
function referenceDistribution(logits: Float32Array, p: SamplingParams): Map<number, number> {
  const max = logits.reduce((a, b) => Math.max(a, b), -Infinity);
  let cands = Array.from(logits, (l, id) => ({ id, v: (l - max) / p.temperature })).filter(
    (c) => c.v > -Infinity,
  );
  cands.sort((a, b) => b.v - a.v || a.id - b.id);
  if (p.topK > 0 && p.topK < cands.length) {
    const kth = cands[p.topK - 1].v;
    cands = cands.filter((c) => c.v >= kth);
  }
  let weighted = cands.map((c) => ({ id: c.id, w: Math.exp(c.v) }));
  const total = weighted.reduce((a, c) => a + c.w, 0);
  if (p.topP < 1) {
    let before = 0;
    weighted = weighted.filter((c) => {
      const keep = before < p.topP * total;
      before += c.w;
      return keep;
    });
  }
  if (p.minP > 0) weighted = weighted.filter((c) => c.w >= p.minP);
  const sum = weighted.reduce((a, c) => a + c.w, 0);
  return new Map(weighted.map((c) => [c.id, c.w / sum]));
}

function assertSameDistribution(sampler: Sampler, logits: Float32Array, p: SamplingParams): void {
  const got = sampler.distribution(logits, []);
  const want = referenceDistribution(logits, p);
  assert.deepEqual(
    Array.from(got.ids),
    [...want.keys()].sort((a, b) => a - b),
    JSON.stringify(p),
  );
  got.ids.forEach((id, j) => {
    assert.ok(Math.abs(got.probs[j] - (want.get(id) ?? Number.NaN)) < 1e-9);
  });
}

function draws(sampler: Sampler, logits: Float32Array, count: number): number[] {
  return Array.from({ length: count }, () => sampler.next(logits, []).id);
}

describe('Xoshiro128', () => {
  it('gives the reference xoshiro128** stream for splitmix64-seeded states', () => {
    // Values from an independent Python implementation of splitmix64 + xoshiro128**.
    const expected: Record<number, number[]> = {
      0: [3737715805, 2584255861, 2876756834, 3286328325],
      42: [1776835114, 4165204688, 17111135, 2317295270],
      [-1]: [477689756, 2493998634, 555695776, 607808419],
      [2 ** 40 + 7]: [731018183, 1433462173, 2492519422, 1115521196],
    };
    for (const [seed, values] of Object.entries(expected)) {
      const random = new Xoshiro128(Number(seed));
      assert.deepEqual(
        values.map(() => random.nextUint32()),
        values,
        `seed ${seed}`,
      );
    }
  });

  it('gives floats in [0, 1) and rejects non-integer seeds', () => {
    const random = new Xoshiro128(7);
    for (let i = 0; i < 1000; i++) {
      const x = random.nextFloat();
      assert.ok(x >= 0 && x < 1);
    }
    assert.throws(() => new Xoshiro128(1.5), InternVLError);
    assert.ok(Number.isSafeInteger(Xoshiro128.randomSeed()));
  });
});

describe('Sampler', () => {
  it('greedy picks the argmax, ties to the lowest id, ignoring filters', () => {
    const sampler = new Sampler({ ...GREEDY_SAMPLING, topK: 1, topP: 0.1, minP: 0.5 }, 5);
    assert.equal(sampler.next(new Float32Array([0.1, 3, -1, 2.9, 0]), []).id, 1);
    assert.equal(sampler.next(new Float32Array([1, 2, 2, -Infinity, 2]), []).id, 1);
    assert.equal(sampler.next(new Float32Array([-5, -Infinity, -4, -4.5, -6]), []).id, 2);
  });

  it('is reproducible for a seed, and another seed gives another sequence', () => {
    const logits = new Float32Array(Array.from({ length: 50 }, (_, i) => Math.sin(i) * 2));
    const run = (seed: number) => draws(new Sampler(sampling({ seed }), 50), logits, 40);
    assert.deepEqual(run(7), run(7));
    assert.notDeepEqual(run(7), run(8));
  });

  it('draws in proportion to softmax(logits / T)', () => {
    const logits = new Float32Array([1.2, 0.3, -0.5, 2.0, 0.0, -1.5]);
    const temperature = 0.7;
    const count = 20000;
    const sampler = new Sampler(sampling({ temperature, seed: 99 }), logits.length);
    const observed = new Array(logits.length).fill(0);
    for (const id of draws(sampler, logits, count)) observed[id]++;
    const probs = softmax(Array.from(logits, (l) => l / temperature));
    let chiSquare = 0;
    probs.forEach((p, i) => {
      chiSquare += (observed[i] - count * p) ** 2 / (count * p);
    });
    // 5 degrees of freedom: P(chi² > 25) ≈ 1e-4; the seed is fixed, so this cannot flake.
    assert.ok(chiSquare < 25, `chi-square ${chiSquare}, observed ${observed}`);
  });

  it('top-k keeps exactly the k best (and ties at the k-th)', () => {
    const logits = new Float32Array([0.5, 3, 1, 2, 1, -1, 2.5]);
    const sampler = new Sampler(sampling({ topK: 3 }), logits.length);
    assert.deepEqual(Array.from(sampler.distribution(logits, []).ids), [1, 3, 6]);
    const tied = new Sampler(sampling({ topK: 4 }), logits.length);
    assert.deepEqual(Array.from(tied.distribution(logits, []).ids), [1, 2, 3, 4, 6]);
    const seen = new Set(draws(sampler, logits, 500));
    assert.deepEqual([...seen].sort(), [1, 3, 6]);
  });

  it('top-p keeps the smallest most likely set reaching p, always the top token', () => {
    // probabilities 0.4, 0.3, 0.2, 0.1 at ids 2, 0, 3, 1
    const logits = new Float32Array([Math.log(0.3), Math.log(0.1), Math.log(0.4), Math.log(0.2)]);
    const ids = (topP: number) => Array.from(new Sampler(sampling({ topP }), 4).distribution(logits, []).ids);
    assert.deepEqual(ids(0.65), [0, 2]);
    assert.deepEqual(ids(0.75), [0, 2, 3]);
    assert.deepEqual(ids(0.95), [0, 1, 2, 3]);
    assert.deepEqual(ids(0.01), [2]);
    const { probs } = new Sampler(sampling({ topP: 0.65 }), 4).distribution(logits, []);
    assert.ok(Math.abs(probs[0] - 3 / 7) < 1e-6 && Math.abs(probs[1] - 4 / 7) < 1e-6);
    // Equal probabilities: the cut keeps the lowest ids.
    const flat = new Float32Array(10);
    const kept = new Sampler(sampling({ topP: 0.35 }), 10).distribution(flat, []).ids;
    assert.deepEqual(Array.from(kept), [0, 1, 2, 3]);
  });

  it('min-p drops tokens below minP × the top probability', () => {
    // probabilities relative to the top: 1, 0.5, 0.2, 0.05
    const logits = new Float32Array([0, Math.log(0.5), Math.log(0.05), Math.log(0.2)]);
    const ids = (minP: number, temperature = 1) =>
      Array.from(new Sampler(sampling({ minP, temperature }), 4).distribution(logits, []).ids);
    assert.deepEqual(ids(0.3), [0, 1]);
    assert.deepEqual(ids(0.1), [0, 1, 3]);
    assert.deepEqual(ids(0.01), [0, 1, 2, 3]);
    // Temperature applies first: at T = 0.5 the ratios are squared (1, 0.25, 0.04, 0.0025).
    assert.deepEqual(ids(0.1, 0.5), [0, 1]);
  });

  it('matches a sort-based reference on a large vocabulary with ties', () => {
    const n = 3000;
    const random = new Xoshiro128(5);
    // Quantised values make many exact ties; some tokens are masked.
    const logits = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      logits[i] = i % 97 === 0 ? -Infinity : Math.round(random.nextFloat() * 40) / 4 - 5;
    }
    for (const p of [
      { topK: 0, topP: 0.9, minP: 0, temperature: 1 },
      { topK: 0, topP: 0.3, minP: 0, temperature: 0.5 },
      { topK: 40, topP: 0.8, minP: 0, temperature: 1.3 },
      { topK: 500, topP: 1, minP: 0.05, temperature: 2 },
      { topK: 0, topP: 0.5, minP: 0.2, temperature: 1 },
      { topK: 7, topP: 0.999, minP: 0, temperature: 0.8 },
    ]) {
      const params = sampling(p);
      assertSameDistribution(new Sampler(params, n), logits, params);
    }
  });

  it('applies the Hugging Face repetition penalty once per distinct previous id', () => {
    const logits = new Float32Array([2, -2, 1, 0.5]);
    const sampler = new Sampler(sampling({ repetitionPenalty: 2 }), 4);
    const { probs } = sampler.distribution(logits, [0, 1, 1, 1]);
    const want = softmax([1, -4, 1, 0.5]);
    probs.forEach((p, i) => {
      assert.ok(Math.abs(p - want[i]) < 1e-9);
    });
    // Greedy sees the penalised logits too: 2/2 = 1 ties with id 2, and the lower id wins.
    const greedy = new Sampler({ ...GREEDY_SAMPLING, repetitionPenalty: 2 }, 4);
    assert.equal(greedy.next(new Float32Array([2, -2, 1.5, 0.5]), [0]).id, 2);
    assert.equal(greedy.next(logits, [0]).id, 0);
    // The caller's logits are not modified.
    assert.deepEqual(Array.from(logits), [2, -2, 1, 0.5]);
    assert.throws(() => greedy.next(logits, [4]), /previous token id 4/);
  });

  it('reports log-softmax of the raw logits for the chosen id and the top alternatives', () => {
    const logits = new Float32Array([1, 3, 3, -Infinity, 0.5, 2]);
    const lse = Math.log(Array.from(logits).reduce((a, l) => a + Math.exp(l), 0));
    const sampler = new Sampler(
      sampling({ temperature: 0.3, repetitionPenalty: 1.5, topLogprobs: 3, logprobs: true }),
      6,
    );
    for (let step = 0; step < 20; step++) {
      const token = sampler.next(logits, [1]);
      assert.ok(Math.abs((token.logprob ?? Number.NaN) - (logits[token.id] - lse)) < 1e-6);
      assert.deepEqual(
        token.topLogprobs?.map((t) => t.id),
        [1, 2, 5],
      );
      token.topLogprobs?.forEach((t) => {
        assert.ok(Math.abs(t.logprob - (logits[t.id] - lse)) < 1e-6);
      });
    }
    const plain = new Sampler(GREEDY_SAMPLING, 6).next(logits, []);
    assert.equal(plain.logprob, undefined);
    assert.equal(plain.topLogprobs, undefined);
  });

  it('never picks a -Infinity token and rejects NaN / +Infinity / all -Infinity', () => {
    const logits = new Float32Array([-Infinity, 0, -Infinity, 0]);
    const seen = new Set(draws(new Sampler(sampling({}), 4), logits, 200));
    assert.deepEqual([...seen].sort(), [1, 3]);
    const sampler = new Sampler(sampling({}), 3);
    assert.throws(
      () => sampler.next(new Float32Array([0, Number.NaN, 1]), []),
      (e: unknown) =>
        e instanceof InternVLError && e.code === 'INTERNAL' && /step 1: logit of token 1/.test(e.message),
    );
    assert.throws(() => sampler.next(new Float32Array([0, Infinity, 1]), []), /token 1 is Infinity/);
    assert.throws(() => sampler.next(new Float32Array(3).fill(-Infinity), []), /every logit/);
    assert.throws(() => sampler.next(new Float32Array(4), []), /expected vocabSize 3/);
  });

  it('validates its parameters', () => {
    assert.throws(() => new Sampler(sampling({ topP: 0 }), 4), /topP must be a number in \(0, 1\]/);
    assert.throws(() => new Sampler(sampling({ temperature: -1 }), 4), /temperature/);
    assert.throws(() => new Sampler(sampling({}), 0), /vocabSize/);
  });

  it('runs steps over the full 151,674-token vocabulary', () => {
    const vocab = 151674;
    const random = new Xoshiro128(3);
    const logits = new Float32Array(vocab);
    for (let i = 0; i < vocab; i++) logits[i] = (random.nextFloat() - 0.5) * 20;
    const previous = Array.from({ length: 2000 }, (_, i) => (i * 7919) % vocab);
    for (const p of [
      GREEDY_SAMPLING,
      sampling({ topK: 50, topP: 0.8, temperature: 0.8, repetitionPenalty: 1.1 }),
      sampling({ topP: 0.95, topLogprobs: 5, logprobs: true }),
      sampling({ minP: 0.05 }),
      sampling({}),
    ]) {
      const sampler = new Sampler(p, vocab);
      for (let step = 0; step < 3; step++) {
        const { id } = sampler.next(logits, previous);
        assert.ok(Number.isInteger(id) && id >= 0 && id < vocab);
      }
    }
    const params = sampling({ topP: 0.9 });
    assertSameDistribution(new Sampler(params, vocab), logits, params);
  });
});

describe('kthLargestScaled', () => {
  it('equals the k-th entry of the sorted scaled values, repeats counted, −Infinity skipped', () => {
    const random = new Xoshiro128(11);
    for (let trial = 0; trial < 200; trial++) {
      const n = 1 + Math.floor(random.nextFloat() * 300);
      const work = Float32Array.from({ length: n }, () => {
        const r = random.nextFloat();
        // Few distinct values, so ties are common; some entries masked.
        return r < 0.1 ? -Infinity : Math.round(random.nextFloat() * 12) - 6;
      });
      const finite = [...work].filter((v) => v !== -Infinity);
      if (finite.length === 0) continue;
      const max = Math.max(...finite);
      const temperature = [0.3, 1, 1.7][trial % 3];
      const scaled = finite.map((v) => (v - max) / temperature).sort((a, b) => b - a);
      const k = 1 + Math.floor(random.nextFloat() * finite.length);
      const got = kthLargestScaled(work, max, temperature, k, new Float64Array(n));
      assert.equal(got.finite, finite.length);
      assert.equal(got.threshold, scaled[k - 1], `trial ${trial}, k ${k}`);
    }
  });
});
