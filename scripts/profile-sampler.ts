/**
 * Time per token of the engine's sampler (src/engine/sampler.ts) on one row of logits at a real
 * vocabulary size, for common settings. In a batched decode step the engine samples each sequence in
 * turn on its own thread, so this adds to every step once per sequence.
 *   node --import tsx scripts/profile-sampler.ts [--vocab 151674] [--runs 300] [--only SETTING]
 */
import { parseArgs } from 'node:util';
import { GREEDY_SAMPLING, Sampler, type SamplingParams } from '../src/engine/sampler.js';

const { values } = parseArgs({
  options: {
    vocab: { type: 'string', default: '151674' },
    runs: { type: 'string', default: '300' },
    only: { type: 'string' },
  },
});
const vocab = Number(values.vocab);
const runs = Number(values.runs);
// Logits spread like a model's: most far below the top few.
const logits = Float32Array.from({ length: vocab }, (_, i) => Math.sin(i * 12.9898) * 4 - (i % 97) / 10);
const settings: Record<string, Partial<SamplingParams>> = {
  greedy: {},
  'temperature 0.8': { temperature: 0.8 },
  'temperature 0.8 + logprobs': { temperature: 0.8, logprobs: true },
  'temperature 1 + logprobs': { temperature: 1, logprobs: true },
  'temperature 0.8, top_k 40, top_p 0.8': { temperature: 0.8, topK: 40, topP: 0.8 },
  'temperature 0.8, top_p 0.9': { temperature: 0.8, topP: 0.9 },
  'temperature 0.8, repetition_penalty 1.1': { temperature: 0.8, repetitionPenalty: 1.1 },
};
const history = Array.from({ length: 500 }, (_, i) => (i * 7919) % vocab);
const rows: Record<string, number> = {};
// --only NAME runs one setting (each in a fresh process avoids one setting's JIT state affecting another's).
const only = values.only;
for (const [name, overrides] of Object.entries(settings)) {
  if (only !== undefined && name !== only) continue;
  const sampler = new Sampler({ ...GREEDY_SAMPLING, seed: 1, ...overrides }, vocab);
  const row = new Float32Array(vocab);
  for (let i = 0; i < 20; i++) {
    row.set(logits);
    sampler.next(row, history);
  }
  let spent = 0;
  for (let i = 0; i < runs; i++) {
    row.set(logits);
    const t0 = performance.now();
    sampler.next(row, history);
    spent += performance.now() - t0;
  }
  rows[name] = +(spent / runs).toFixed(3);
}
console.log(JSON.stringify({ vocab, runs, ms_per_token: rows }, null, 1));
