/**
 * `internvl bench` / `npm run bench`: engine speed on a random-weight checkpoint at a real shape,
 * next to this machine's limits measured through ORT in the same run (fp32 GEMM roofline, weight-
 * streaming bandwidth). Load time, time to first token and peak RSS come from child processes that
 * load the model as a user would (cold: an empty graph cache; cached: the graphs just written), so
 * the peak RSS is that of a process holding only the model.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { checkpointWeights } from '../engine/core.js';
import { type DecoderRunner, decoderDimsFromConfig } from '../engine/decoder.js';
import { defaultGraphCacheDir } from '../engine/graph-cache.js';
import { type ResolvedPrecision, resolvePrecision } from '../engine/graph-plan.js';
import { cpuReport } from '../engine/int8-probe.js';
import type { WeightDtype } from '../engine/precision.js';
import { createDecoderRunner, createVisionRunner, engineGraphCache } from '../engine/runners.js';
import { defaultThreads } from '../engine/session.js';
import { Checkpoint } from '../io/safetensors.js';
import { loadModelConfig } from '../models/model-config.js';
import { createRandomCheckpoint, hasWeights } from '../tools/random-checkpoint.js';
import { integerOption } from './args.js';
import { type ChildResult, runChild } from './bench-child.js';
import {
  decodeWeightBytes,
  measureGemm,
  measureStream,
  median,
  round,
  seconds,
  timeRuns,
  vitFlopsPerTile,
} from './bench-limits.js';
import { runStructuredBench } from './bench-structured.js';
import { defineCommand } from './command.js';
import { PRECISION_FLAGS, precisionFromFlags } from './convert.js';
import { evalTokenIds, syntheticTile } from './eval-quant.js';

const USAGE = `Usage: internvl bench [--shape InternVL2_5-1B] [--model DIR] [--llm-dtype int4]
                      [--prefill-dtype int4] [--vit-dtype fp32] [--block-size 32] [--accuracy-level 4]
                      [--int8-kernel auto|u8s8|u8u8] [--threads N] [--reps 3] [--json FILE]
                      [--structured]

Measures in one run: the fp32 GEMM roofline and weight-streaming bandwidth through ORT; ViT s/tile
(batches of 1 and 7; fp32 and int8); prefill tok/s at 300 and 1800 tokens (fp32, int8 and the chosen
LLM precision); decode tok/s at past 300 and 1500; and, in child processes, load time (cold and from
the graph cache), time to first token for one image of 6 tiles + thumbnail, and peak RSS. Without
--model a random checkpoint of --shape is created once under the cache folder. Prints JSON.

--structured measures constrained decoding instead, through pipeline(): XGrammar's setup on the
vocabulary, a JSON Schema's compile time (cold and cached), and greedy decode tok/s with and
without the schema (from streamed token times, so prefill and compile are not in it).

Examples:
  npx internvl bench --reps 3                                  # random weights at the InternVL2_5-1B shape
  npx internvl bench --model ./InternVL2_5-1B --llm-dtype int8 --json bench.json
  npx internvl bench --structured --reps 5                     # JSON-schema decoding vs plain
`;

interface DecoderTimes {
  prefill300: number;
  prefill1800: number;
  decode300?: number;
  decode1500?: number;
}

/** Prefill tok/s of an `n`-token prompt into a new sequence (median of `reps` after a warm-up). */
export async function measurePrefill(decoder: DecoderRunner, n: number, reps: number): Promise<number> {
  const ids = evalTokenIds(n, Math.min(decoder.dims.vocabSize, 150000), n);
  const embeds = decoder.embed(ids);
  const t = await timeRuns(reps, () => decoder.forward(decoder.newSequence(), embeds, n));
  return n / t;
}

/**
 * Decode tok/s after a `past`-token prompt, through the engine's own greedy path (the sequence in
 * the decode batch, argmax inside the graph): `steps` timed steps after one untimed, median of `reps`.
 */
export async function measureDecode(
  decoder: DecoderRunner,
  past: number,
  steps: number,
  reps: number,
): Promise<number> {
  const vocab = Math.min(decoder.dims.vocabSize, 150000);
  const rates: number[] = [];
  for (let r = 0; r < reps; r++) {
    const seq = decoder.newSequence();
    let next = await decoder.forwardArgmax(seq, decoder.embed(evalTokenIds(past, vocab, past)), past);
    decoder.joinBatch(seq);
    [next] = await decoder.decodeBatchArgmax([next]);
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) [next] = await decoder.decodeBatchArgmax([next]);
    rates.push(steps / seconds(t0));
    decoder.leaveBatch(seq, { keepCache: false });
  }
  return median(rates);
}

async function benchDecoder(
  decoder: DecoderRunner,
  reps: number,
  withDecode: boolean,
  decodeSteps: number,
): Promise<DecoderTimes> {
  const out: DecoderTimes = {
    prefill300: await measurePrefill(decoder, 300, reps),
    prefill1800: await measurePrefill(decoder, 1800, reps),
  };
  if (withDecode) {
    out.decode300 = await measureDecode(decoder, 300, decodeSteps, reps);
    out.decode1500 = await measureDecode(decoder, 1500, decodeSteps, reps);
  }
  return out;
}

export interface BenchOptions {
  shape?: string;
  model?: string;
  threads?: number;
  reps?: number;
  precision: ResolvedPrecision;
  log?: (line: string) => void;
}

/** `model`, or the random checkpoint of `shape` under the cache folder (created on first use). */
export async function benchModel(
  shape: string,
  model: string | undefined,
  log: (line: string) => void,
): Promise<string> {
  if (model) return model;
  const modelDir = path.join(path.dirname(defaultGraphCacheDir()), 'random-models', `${shape}-seed0`);
  if (!hasWeights(modelDir)) {
    log(`creating random ${shape} checkpoint in ${modelDir}`);
    await createRandomCheckpoint({ shape, out: modelDir, seed: 0 });
  }
  return modelDir;
}

export async function runBench(options: BenchOptions): Promise<Record<string, unknown>> {
  const log = options.log ?? (() => {});
  const shape = options.shape ?? 'InternVL2_5-1B';
  const reps = options.reps ?? 3;
  const threads = options.threads ?? defaultThreads();
  const precision = options.precision;
  const modelDir = await benchModel(shape, options.model, log);

  log('machine limits');
  const gemm = await measureGemm(threads, reps);
  const stream = await measureStream(threads, reps);

  log('cold load (empty graph cache) and cached load, in child processes');
  const coldCache = mkdtempSync(path.join(os.tmpdir(), 'internvl-bench-'));
  let cold: ChildResult;
  let cached: ChildResult;
  try {
    const childArgs = { model: modelDir, cacheDir: coldCache, precision, threads };
    cold = await runChild(childArgs);
    cached = await runChild(childArgs);
  } finally {
    rmSync(coldCache, { recursive: true, force: true });
  }

  const config = await loadModelConfig(modelDir);
  const checkpoint = await Checkpoint.open(modelDir);
  const weights = checkpointWeights(checkpoint, config);
  const cache = engineGraphCache(checkpoint);
  const result: Record<string, unknown> = {};
  try {
    const vit = async (dtype: 'fp32' | 'int8', tilesPerRun: number) => {
      log(`ViT ${dtype}, ${tilesPerRun} tile(s) per run`);
      const encoder = await createVisionRunner(config, weights, cache, {
        vitDtype: dtype,
        int8Kernel: precision.int8Kernel,
        threads,
        tilesPerRun,
      });
      const tile = syntheticTile(encoder.geometry.imageSize);
      const pixels = new Float32Array(tile.length * tilesPerRun);
      for (let i = 0; i < tilesPerRun; i++) pixels.set(tile, i * tile.length);
      const t = await timeRuns(tilesPerRun === 1 ? reps : 1, () => encoder.encode(pixels, tilesPerRun));
      await encoder.release();
      return t / tilesPerRun;
    };
    const vitFp32 = await vit('fp32', 1);
    const vitFp32Batch7 = await vit('fp32', 7);
    const vitInt8 = await vit('int8', 1);
    const vitFlops = vitFlopsPerTile(config);

    const dims = decoderDimsFromConfig(config);
    const llm = async (llmDtype: WeightDtype, prefillDtype: WeightDtype, withDecode: boolean) => {
      log(`LLM ${llmDtype}${prefillDtype !== llmDtype ? ` (prefill ${prefillDtype})` : ''}`);
      const decoder = await createDecoderRunner(config, weights, cache, {
        precision: { ...precision, llmDtype, prefillDtype },
        threads,
      });
      try {
        return await benchDecoder(decoder, reps, withDecode, 32);
      } finally {
        await decoder.release();
      }
    };
    const fp32 = await llm('fp32', 'fp32', false);
    const int8 = await llm('int8', 'int8', false);
    const chosen = await llm(precision.llmDtype, precision.prefillDtype, true);
    const weightBytes = decodeWeightBytes(dims, precision);
    // Measured decode speed ÷ the speed at which `bytes` per token stream at the measured bandwidth.
    const boundRatio = (bytes: number) => round(((chosen.decode300 ?? 0) * bytes) / (stream * 1e9), 3);

    const vitDtypeTime = precision.vitDtype === 'int8' ? vitInt8 : vitFp32;
    Object.assign(result, {
      shape: options.model ? path.basename(modelDir) : shape,
      llm_dtype: precision.llmDtype,
      prefill_dtype: precision.prefillDtype,
      vit_dtype: precision.vitDtype,
      block_size: precision.blockSize,
      accuracy_level: precision.accuracyLevel,
      gemm_gflops: round(gemm, 1),
      stream_gbps: round(stream, 1),
      vit_s_per_tile: round(vitDtypeTime, 3),
      vit_s_per_tile_batch7: round(vitFp32Batch7, 3),
      vit_fp32_s_per_tile: round(vitFp32, 3),
      vit_int8_s_per_tile: round(vitInt8, 3),
      vit_int8_speedup: round(vitFp32 / vitInt8, 2),
      vit_gflop_per_tile: round(vitFlops / 1e9, 1),
      vit_roofline_ratio: round(vitFp32 / (vitFlops / (gemm * 1e9)), 3),
      prefill_tok_s: round(chosen.prefill300, 1),
      prefill_tok_s_1800: round(chosen.prefill1800, 1),
      prefill_tok_s_fp32: round(fp32.prefill300, 1),
      prefill_tok_s_fp32_1800: round(fp32.prefill1800, 1),
      prefill_tok_s_int8: round(int8.prefill300, 1),
      prefill_tok_s_int8_1800: round(int8.prefill1800, 1),
      prefill_int8_speedup: round(int8.prefill300 / fp32.prefill300, 2),
      decode_tok_s: round(chosen.decode300 ?? 0, 2),
      decode_tok_s_past1500: round(chosen.decode1500 ?? 0, 2),
      decode_past1500_ratio: round((chosen.decode1500 ?? 0) / (chosen.decode300 ?? 1), 3),
      decode_weight_mb_per_token: round(weightBytes.streamed / 1e6, 1),
      decode_bound_ratio: boundRatio(weightBytes.streamed),
      decode_weight_mb_stored: round(weightBytes.stored / 1e6, 1),
      decode_bound_ratio_stored_bytes: boundRatio(weightBytes.stored),
      ttft_s: cached.ttft_s,
      ttft_tokens: cached.ttft_tokens,
      peak_rss_mb: cached.peak_rss_mb,
      peak_rss_mb_cold: cold.peak_rss_mb,
      load_s_cold: cold.load_s,
      load_s_cached: cached.load_s,
      threads,
      cpus: os.availableParallelism(),
      cpu: await cpuReport(),
      int8_kernel: precision.int8Kernel,
      versions: { onnxruntime: ort.env.versions.node, node: process.version },
    });
  } finally {
    await checkpoint.close();
  }
  return result;
}

export const benchCommand = defineCommand({
  name: 'bench',
  usage: USAGE,
  options: {
    ...PRECISION_FLAGS,
    shape: { type: 'string' },
    model: { type: 'string' },
    threads: { type: 'string' },
    reps: { type: 'string' },
    json: { type: 'string' },
    structured: { type: 'boolean' },
  },
  positionals: 'none',
  async run({ values }, io) {
    const threads = integerOption(values.threads, 'threads', 1);
    const reps = integerOption(values.reps, 'reps', 1);
    const flags = precisionFromFlags(values);
    // A model's own format decides the defaults it can (an AWQ or GPTQ checkpoint: its group size as the block).
    const config = values.model === undefined ? undefined : await loadModelConfig(values.model);
    const precision = await resolvePrecision({ ...flags, llmDtype: flags.llmDtype ?? 'int4' }, config);
    const log = (line: string) => io.stderr.write(`${line}\n`);
    const result = values.structured
      ? await runStructuredBench({
          model: await benchModel(values.shape ?? 'InternVL2_5-1B', values.model, log),
          engine: { ...precision, threads },
          reps: reps ?? 3,
          log,
        })
      : await runBench({ shape: values.shape, model: values.model, threads, reps, precision, log });
    const text = JSON.stringify(result, null, 2);
    io.stdout.write(`${text}\n`);
    if (values.json) await writeFile(values.json, `${text}\n`);
    return 0;
  },
});
