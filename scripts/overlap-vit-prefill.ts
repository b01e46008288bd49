/**
 * Would encoding the image's tiles while the LLM prefills pay on this machine? (#20: "prefill chunks
 * overlapped with the next tile's encoding only if it measures faster".) Times, on MODEL_DIR:
 *   - each stage alone (7 tiles through the ViT; the 1852-token prompt of 7 tiles through prefill) with
 *     1 and with THREADS intra-op threads, in child processes that hold only their own session;
 *   - the sequential first turn (ViT then prefill, THREADS threads each), which is what the engine does;
 *   - both stages at once in two processes started together, with 1 thread each and with THREADS each.
 * Running both stages at once with no dependency between them is the best any overlap could do (a real
 * pipeline must wait for each tile before its chunk), so if it is not faster than sequential, no overlap is.
 *   node --import tsx scripts/overlap-vit-prefill.ts MODEL_DIR [--vit-dtype fp32|int8] [--threads 2] [--reps 2]
 */
import { fork } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { evalTokenIds, syntheticTile } from '../src/cli/eval-quant.js';
import { checkpointWeights } from '../src/engine/core.js';
import { resolvePrecision } from '../src/engine/graph-plan.js';
import { cpuReport } from '../src/engine/int8-probe.js';
import { createDecoderRunner, createVisionRunner, engineGraphCache } from '../src/engine/runners.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadModelConfig } from '../src/models/model-config.js';

type Stage = 'vit' | 'prefill';
const TILES = 7;

/** Child: builds one stage's session with `threads`, warms it up, then runs it on each 'go' and reports seconds. */
async function child(modelDir: string, stage: Stage, threads: number, vitDtype: 'fp32' | 'int8') {
  const config = await loadModelConfig(modelDir);
  const checkpoint = await Checkpoint.open(modelDir);
  const weights = checkpointWeights(checkpoint, config);
  const cache = engineGraphCache(checkpoint);
  const precision = await resolvePrecision({ llmDtype: 'int4', vitDtype }, config);
  let run: () => Promise<unknown>;
  let release: () => Promise<void>;
  if (stage === 'vit') {
    const vision = await createVisionRunner(config, weights, cache, { ...precision, threads });
    const tile = syntheticTile(vision.geometry.imageSize);
    const pixels = new Float32Array(tile.length * TILES);
    for (let i = 0; i < TILES; i++) pixels.set(tile, i * tile.length);
    run = () => vision.encode(pixels, TILES);
    release = () => vision.release();
  } else {
    const decoder = await createDecoderRunner(config, weights, cache, { precision, threads });
    const n = TILES * 256 + 40;
    const embeds = decoder.embed(evalTokenIds(n, Math.min(decoder.dims.vocabSize, 150000), n));
    run = () => decoder.forward(decoder.newSequence(), embeds, n);
    release = () => decoder.release();
  }
  await run();
  process.send?.('ready');
  process.on('message', async (message) => {
    if (message !== 'go') {
      await release();
      await checkpoint.close();
      return process.exit(0);
    }
    const t0 = performance.now();
    await run();
    process.send?.((performance.now() - t0) / 1000);
  });
}

interface Worker {
  ready: Promise<void>;
  go(): Promise<number>;
  stop(): void;
}

function startWorker(modelDir: string, stage: Stage, threads: number, vitDtype: string): Worker {
  const proc = fork(
    fileURLToPath(import.meta.url),
    [modelDir, '--child', stage, '--threads', `${threads}`, '--vit-dtype', vitDtype],
    {
      execArgv: process.execArgv,
    },
  );
  const ready = new Promise<void>((resolve, reject) => {
    proc.once('message', () => resolve());
    proc.once('exit', (code) => reject(new Error(`${stage} child exited with ${code} before it was ready`)));
  });
  return {
    ready,
    go: () =>
      new Promise<number>((resolve) => {
        proc.once('message', (seconds) => resolve(Number(seconds)));
        proc.send('go');
      }),
    stop: () => proc.send('stop'),
  };
}

/** Best of `reps` runs of `stages` started together in separate processes (each run's time is the slowest stage). */
async function timeTogether(modelDir: string, stages: [Stage, number][], vitDtype: string, reps: number) {
  const workers = stages.map(([stage, threads]) => startWorker(modelDir, stage, threads, vitDtype));
  try {
    await Promise.all(workers.map((w) => w.ready));
    let best: number[] = [];
    for (let r = 0; r < reps; r++) {
      const run = await Promise.all(workers.map((w) => w.go()));
      if (best.length === 0 || Math.max(...run) < Math.max(...best)) best = run;
    }
    return { wall_s: +Math.max(...best).toFixed(2), stage_s: best.map((s) => +s.toFixed(2)) };
  } finally {
    for (const w of workers) w.stop();
  }
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    child: { type: 'string' },
    threads: { type: 'string', default: '2' },
    'vit-dtype': { type: 'string', default: 'fp32' },
    reps: { type: 'string', default: '2' },
  },
});
const modelDir = positionals[0];
if (!modelDir)
  throw new Error('usage: overlap-vit-prefill.ts MODEL_DIR [--vit-dtype fp32|int8] [--threads 2] [--reps 2]');
const vitDtype = values['vit-dtype'];
if (vitDtype !== 'fp32' && vitDtype !== 'int8')
  throw new Error(`--vit-dtype must be fp32 or int8, got ${vitDtype}`);
const threads = Number(values.threads);
if (values.child) {
  await child(modelDir, values.child as Stage, threads, vitDtype);
} else {
  const reps = Number(values.reps);
  const vit1 = await timeTogether(modelDir, [['vit', 1]], vitDtype, reps);
  const vitN = await timeTogether(modelDir, [['vit', threads]], vitDtype, reps);
  const prefill1 = await timeTogether(modelDir, [['prefill', 1]], vitDtype, reps);
  const prefillN = await timeTogether(modelDir, [['prefill', threads]], vitDtype, reps);
  const together1 = await timeTogether(
    modelDir,
    [
      ['vit', 1],
      ['prefill', 1],
    ],
    vitDtype,
    reps,
  );
  const togetherN = await timeTogether(
    modelDir,
    [
      ['vit', threads],
      ['prefill', threads],
    ],
    vitDtype,
    reps,
  );
  const sequential = vitN.wall_s + prefillN.wall_s;
  console.log(
    JSON.stringify({
      vit_dtype: vitDtype,
      tiles: TILES,
      prompt_tokens: TILES * 256 + 40,
      threads,
      vit_s: { 1: vit1.wall_s, [threads]: vitN.wall_s, scaling: +(vit1.wall_s / vitN.wall_s).toFixed(2) },
      prefill_s: {
        1: prefill1.wall_s,
        [threads]: prefillN.wall_s,
        scaling: +(prefill1.wall_s / prefillN.wall_s).toFixed(2),
      },
      sequential_s: +sequential.toFixed(2),
      together_1_thread_each: together1,
      together_all_threads_each: togetherN,
      best_overlap_vs_sequential: +(Math.min(together1.wall_s, togetherN.wall_s) / sequential).toFixed(3),
      cpus: os.availableParallelism(),
      cpu: await cpuReport(),
    }),
  );
}
