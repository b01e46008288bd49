/**
 * Profiles int4 decode steps op by op with ORT's profiler:
 *   node --import tsx scripts/profile-decode.ts MODEL_DIR [PAST]
 * With --greedy (no profiler): the engine's greedy batch path (decodeBatchArgmax) split into the time
 * inside session.run and the JS around it, per KV capacity step (--capacity-steps 256,64):
 *   node --import tsx scripts/profile-decode.ts MODEL_DIR [PAST] --greedy [--capacity-steps 256,64]
 * With --batch-sizes (no profiler): one decode step of B sequences at once (continuous batching's step,
 * decodeBatchArgmax), each after a prompt of PAST + b tokens, per B; each list entry is one measurement:
 *   node --import tsx scripts/profile-decode.ts MODEL_DIR [PAST] --batch-sizes 1,2,4,8,1,8
 * --prefill-dtype int8: profile the decode graph of an int4 + int8-prefill engine (attention by matmuls over
 * the KV buffers, models/cache-attention.ts) instead of the single int4 graph (GroupQueryAttention); the
 * prompt then runs on that decode graph too.
 */
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { checkpointWeights } from '../src/engine/core.js';
import { argmax, DecoderRunner, decoderDimsFromConfig } from '../src/engine/decoder.js';
import { cachedGraph, defaultGraphCacheDir, graphCacheKey } from '../src/engine/graph-cache.js';
import { decoderGraphOptions, llmCacheTag, resolveLlmPrecision } from '../src/engine/precision.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadModelConfig } from '../src/models/model-config.js';
import { buildDecoderGraph } from '../src/models/registry.js';
import { checkWeightDtype } from '../src/onnx/quantize.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    greedy: { type: 'boolean', default: false },
    'capacity-steps': { type: 'string', default: '256,64' },
    'batch-sizes': { type: 'string' },
    'prefill-dtype': { type: 'string', default: 'int4' },
  },
});
const dir = positionals[0];
const past = Number(positionals[1] ?? 300);
const config = await loadModelConfig(dir);
const ckpt = await Checkpoint.open(dir);
const weights = checkpointWeights(ckpt, config);
// With --prefill-dtype int8 the int4 graph is the engine's decode-only graph (matmul attention).
const precision = resolveLlmPrecision({
  llmDtype: 'int4',
  prefillDtype: checkWeightDtype('--prefill-dtype', values['prefill-dtype']),
});
const dims = decoderDimsFromConfig(config);
const key = graphCacheKey(ckpt.files(), { component: 'decoder', dims, ...llmCacheTag(precision, 'int4') });
// Built (and cached) first when missing, as the engine would.
const { modelPath } = await cachedGraph(defaultGraphCacheDir(), key, () =>
  buildDecoderGraph(dims, weights, decoderGraphOptions(precision, 'int4')),
);
/** A CPU session on the cached int4 decoder graph, 2 threads, as the engine opens it. */
const openSession = (extra: ort.InferenceSession.SessionOptions = {}) =>
  ort.InferenceSession.create(modelPath, {
    executionProviders: ['cpu'],
    intraOpNumThreads: 2,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    ...extra,
  });
const embeddings = (await weights.bfloat16!('language_model.model.embed_tokens.weight'))!;
if (values['batch-sizes']) {
  const session = await openSession();
  const runner = DecoderRunner.fromSessions(dims, { decoder: session }, embeddings);
  const steps = 24;
  const rows = [];
  for (const batch of values['batch-sizes'].split(',').map(Number)) {
    const seqs = [];
    let next: number[] = [];
    for (let b = 0; b < batch; b++) {
      const seq = runner.newSequence();
      const ids = Array.from({ length: past + b }, (_, i) => (i * 7919 + b * 13) % 150000);
      next.push(await runner.forwardArgmax(seq, runner.embed(ids), ids.length));
      runner.joinBatch(seq);
      seqs.push(seq);
    }
    next = await runner.decodeBatchArgmax(next);
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) next = await runner.decodeBatchArgmax(next);
    const stepMs = (performance.now() - t0) / steps;
    rows.push({ batch, step_ms: +stepMs.toFixed(2), tok_s: +((1000 * batch) / stepMs).toFixed(1) });
    for (const seq of seqs) runner.leaveBatch(seq, { keepCache: false });
  }
  console.log(JSON.stringify({ past, steps, rows }, null, 1));
  await session.release();
  await ckpt.close();
  process.exit(0);
}
if (values.greedy) {
  const session = await openSession();
  // session.run timed from the JS side: the native run plus the binding's input/output conversion.
  let inRun = 0;
  const timed = new Proxy(session, {
    get(target, key, receiver) {
      if (key !== 'run') return Reflect.get(target, key, receiver);
      return async (...args: Parameters<typeof session.run>) => {
        const t0 = performance.now();
        try {
          return await target.run(...args);
        } finally {
          inRun += performance.now() - t0;
        }
      };
    },
  });
  const steps = 64;
  const rows = [];
  for (const capacityStep of values['capacity-steps'].split(',').map(Number)) {
    for (let rep = 0; rep < 3; rep++) {
      const runner = DecoderRunner.fromSessions(dims, { decoder: timed }, embeddings, { capacityStep });
      const seq = runner.newSequence();
      const ids = Array.from({ length: past }, (_, i) => (i * 7919) % 150000);
      let next = await runner.forwardArgmax(seq, runner.embed(ids), ids.length);
      runner.joinBatch(seq);
      [next] = await runner.decodeBatchArgmax([next]);
      inRun = 0;
      const t0 = performance.now();
      for (let i = 0; i < steps; i++) [next] = await runner.decodeBatchArgmax([next]);
      const wall = (performance.now() - t0) / steps;
      const run = inRun / steps;
      rows.push({
        capacity_step: capacityStep,
        // The pool's token slots over the timed steps (reserveBatch rounds length + 1 up to the step).
        capacity_range: [past + 2, past + steps + 1].map((n) => Math.ceil(n / capacityStep) * capacityStep),
        tok_s: +(1000 / wall).toFixed(1),
        wall_ms: +wall.toFixed(2),
        session_run_ms: +run.toFixed(2),
        js_ms: +(wall - run).toFixed(2),
      });
      runner.leaveBatch(seq, { keepCache: false });
    }
  }
  console.log(JSON.stringify({ past, steps, rows }, null, 1));
  await session.release();
  await ckpt.close();
  process.exit(0);
}
const prefix = `/tmp/ivl-profile-${process.pid}`;
const session = await openSession({ enableProfiling: true, profileFilePrefix: prefix });
const runner = DecoderRunner.fromSessions(dims, { decoder: session }, embeddings);
const seq = runner.newSequence();
const ids = Array.from({ length: past }, (_, i) => (i * 7919) % 150000);
let logits = await runner.forward(seq, runner.embed(ids), ids.length);
const steps = 32;
const t0 = performance.now();
for (let i = 0; i < steps; i++) logits = await runner.forward(seq, runner.embed([argmax(logits)]), 1);
const wall = (performance.now() - t0) / steps;
await session.endProfiling();
const file = readdirSync('/tmp').find((f) => f.startsWith(path.basename(prefix)));
const events = JSON.parse(readFileSync(path.join('/tmp', file!), 'utf8')) as {
  cat: string;
  name: string;
  dur: number;
  args?: { op_name?: string };
}[];
rmSync(path.join('/tmp', file!));
// Only the decode steps: the last `steps` model runs.
const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run');
const lastRuns = runs.slice(-steps);
const runUs = lastRuns.reduce((a, e) => a + e.dur, 0) / steps;
const byOp = new Map<string, number>();
const nodes = events.filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time'));
const perRun = nodes.length / runs.length;
for (const e of nodes.slice(-Math.round(perRun * steps))) {
  const op = e.args?.op_name ?? '?';
  byOp.set(op, (byOp.get(op) ?? 0) + e.dur / steps);
}
const total = [...byOp.values()].reduce((a, b) => a + b, 0);
console.log(
  JSON.stringify({
    past,
    wall_ms_per_step: +wall.toFixed(2),
    ort_run_ms: +(runUs / 1000).toFixed(2),
    kernels_ms: +(total / 1000).toFixed(2),
  }),
);
for (const [op, us] of [...byOp].sort((a, b) => b[1] - a[1]).slice(0, 10)) {
  console.log(`${op.padEnd(28)} ${(us / 1000).toFixed(3)} ms  ${((100 * us) / total).toFixed(1)}%`);
}
