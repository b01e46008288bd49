/**
 * `internvl bench` / `npm run bench`: engine speed on a random-weight checkpoint at a real shape,
 * next to this machine's limits measured through ORT in the same run (fp32 GEMM roofline, weight-
 * streaming bandwidth). Load time, time to first token and peak RSS come from child processes that
 * load the model as a user would (cold: an empty graph cache; cached: the graphs just written), so
 * the peak RSS is that of a process holding only the model.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { loadModelConfig, type ModelConfig } from '../config/model-config.js';
import { checkpointWeights } from '../engine/core.js';
import { argmax, DecoderRunner, decoderDimsFromConfig } from '../engine/decoder.js';
import { scatterImageEmbeddings } from '../engine/embeddings.js';
import { defaultGraphCacheDir } from '../engine/graph-cache.js';
import { engineGraphKey, type ResolvedPrecision, resolvePrecision } from '../engine/graph-plan.js';
import { cpuReport } from '../engine/int8-probe.js';
import { llmCacheTag, vitCacheTag, type WeightDtype } from '../engine/precision.js';
import { createSession, defaultThreads } from '../engine/session.js';
import { VisionEncoder, visionDimsFromConfig } from '../engine/vision.js';
import { Checkpoint } from '../io/safetensors.js';
import type { DecoderDims } from '../models/decoder.js';
import { GraphBuilder } from '../onnx/graph.js';
import { createRandomCheckpoint, hasWeights } from '../tools/random-checkpoint.js';
import { noPositionals, parseCommandArgs } from './args.js';
import { runStructuredBench } from './bench-structured.js';
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

const seconds = (t0: number) => (performance.now() - t0) / 1000;
export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const round = (x: number, digits: number) => Number(x.toFixed(digits));

/** Pseudo-random weights, cheap to make. */
function fill(length: number, seed: number): Float32Array {
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) out[i] = Math.sin(i * 0.618 + seed) * 0.05;
  return out;
}

async function timeRuns(reps: number, run: () => Promise<unknown>): Promise<number> {
  await run();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await run();
    times.push(seconds(t0));
  }
  return median(times);
}

/** fp32 GFLOP/s of one large MatMul (M 1024, K 1024, N 4096) with the weight as an initializer. */
export async function measureGemm(threads: number, reps: number): Promise<number> {
  const [m, k, n] = [1024, 1024, 4096];
  const g = new GraphBuilder('gemm');
  const x = g.input('x', 'float32', [m, k]);
  g.output(g.matMul(x, g.initializer('w', 'float32', [k, n], fill(k * n, 1))), 'y', 'float32', [m, n]);
  const session = await createSession(g.graph, { threads });
  const feeds = { x: new ort.Tensor('float32', fill(m * k, 2), [m, k]) };
  const t = await timeRuns(reps * 4, () => session.run(feeds));
  await session.release();
  return (2 * m * k * n) / t / 1e9;
}

/** GB/s of fp32 weights streamed from DRAM by M = 1 MatMuls (24 distinct [896, 4864] weights, 418 MB). */
export async function measureStream(threads: number, reps: number): Promise<number> {
  const [k, n, count] = [896, 4864, 24];
  const g = new GraphBuilder('stream');
  const x = g.input('x', 'float32', [1, k]);
  const outs = Array.from({ length: count }, (_, i) =>
    g.matMul(x, g.initializer(`w${i}`, 'float32', [k, n], fill(k * n, i))),
  );
  g.output(g.op('Sum', outs), 'y', 'float32', [1, n]);
  const session = await createSession(g.graph, { threads });
  const feeds = { x: new ort.Tensor('float32', fill(k, 3), [1, k]) };
  const t = await timeRuns(reps * 5, () => session.run(feeds));
  await session.release();
  return (count * k * n * 4) / t / 1e9;
}

/** Multiply-add FLOPs of one tile through InternViT (select_layer −1) and mlp1. */
export function vitFlopsPerTile(config: ModelConfig): number {
  const dims = visionDimsFromConfig(config);
  const v = dims.vit;
  const grid = dims.imageSize / v.patchSize;
  const t = grid * grid + 1;
  const c = v.hiddenSize;
  const perLayer = 2 * t * c * 3 * c + 4 * t * t * c + 2 * t * c * c + 4 * t * c * v.intermediateSize;
  const conv = 2 * grid * grid * v.numChannels * v.patchSize ** 2 * c;
  const k2 = Math.round(1 / dims.downsampleRatio) ** 2;
  const tokens = (grid * grid) / k2;
  const mlp1 = 2 * tokens * (k2 * c * dims.llmHiddenSize + dims.llmHiddenSize ** 2);
  return perLayer * v.numLayers + conv + mlp1;
}

/**
 * Bytes of one linear weight [n, k] for `dtype`: `stored` as the ONNX graph holds it, `streamed` as
 * the CPU kernel reads it on every call. They differ for int4 at accuracy level 4, which MLAS repacks
 * at load (SQ4BitGemmPackQuantBDataSize, CompInt8): per block of K the 4-bit data, an fp32 scale and
 * an fp32 block sum with the zero point folded in, rows padded to 16; the zero points are not read.
 */
export function linearWeightBytes(
  dtype: WeightDtype,
  n: number,
  k: number,
  quant: { blockSize: number; accuracyLevel: number },
): { stored: number; streamed: number } {
  if (dtype === 'fp32') return { stored: 4 * n * k, streamed: 4 * n * k };
  if (dtype === 'int8') return { stored: n * k + 4 * n, streamed: n * k + 4 * n };
  const blocks = Math.ceil(k / quant.blockSize);
  const data = n * blocks * (quant.blockSize / 2);
  const scales = 4 * n * blocks;
  const stored = data + scales + n * Math.ceil(blocks / 2);
  const blockSums = 4 * Math.ceil(n / 16) * 16 * blocks;
  return { stored, streamed: quant.accuracyLevel === 4 ? data + scales + blockSums : stored };
}

/**
 * Weight bytes of one decode step (every linear layer and lm_head; norms and biases are negligible), as
 * stored and as streamed. q/k/v and gate/up count as one weight each, as the int4 graph holds them
 * (fusedLinear); for fp32 and int8 the bytes are the same either way.
 */
export function decodeWeightBytes(
  dims: DecoderDims,
  precision: ResolvedPrecision,
): { stored: number; streamed: number } {
  const { hiddenSize: d, headDim, numHeads, numKvHeads, intermediateSize: ff, vocabSize } = dims;
  const lmHead =
    precision.lmHeadDtype === 'auto'
      ? precision.llmDtype === 'fp32'
        ? 'fp32'
        : 'int4'
      : precision.lmHeadDtype;
  const linears: [WeightDtype, number, number, number][] = [
    [precision.llmDtype, (numHeads + 2 * numKvHeads) * headDim, d, dims.numLayers],
    [precision.llmDtype, d, numHeads * headDim, dims.numLayers],
    [precision.llmDtype, 2 * ff, d, dims.numLayers],
    [precision.llmDtype, d, ff, dims.numLayers],
    [lmHead, vocabSize, d, 1],
  ];
  const total = { stored: 0, streamed: 0 };
  for (const [dtype, n, k, count] of linears) {
    const bytes = linearWeightBytes(dtype, n, k, precision);
    total.stored += count * bytes.stored;
    total.streamed += count * bytes.streamed;
  }
  return total;
}

interface ChildResult {
  load_s: number;
  ttft_s: number;
  ttft_tokens: number;
  peak_rss_mb: number;
}

/** Loads the model as EngineCore does and times one image (6 tiles + thumbnail) to its first token. */
async function childLoad(modelDir: string, cacheDir: string, precision: ResolvedPrecision, threads: number) {
  const t0 = performance.now();
  const config = await loadModelConfig(modelDir);
  const checkpoint = await Checkpoint.open(modelDir);
  const weights = checkpointWeights(checkpoint, config);
  const visionDims = visionDimsFromConfig(config);
  const decoderDims = decoderDimsFromConfig(config);
  const cache = (component: 'vision' | 'decoder', dims: unknown, tag: Record<string, unknown>) => ({
    dir: cacheDir,
    key: engineGraphKey(checkpoint, component, dims, tag),
  });
  const vision = await VisionEncoder.create(visionDims, weights, {
    threads,
    vitDtype: precision.vitDtype,
    int8Kernel: precision.int8Kernel,
    cache: cache('vision', visionDims, vitCacheTag(precision.vitDtype, precision.int8Kernel)),
  });
  const decoder = await DecoderRunner.create(decoderDims, weights, {
    threads,
    ...precision,
    cache: cache('decoder', decoderDims, llmCacheTag(precision, precision.llmDtype)),
    prefillCache: cache('decoder', decoderDims, llmCacheTag(precision, precision.prefillDtype)),
  });
  const loadSeconds = seconds(t0);

  const tiles = 7;
  const tile = syntheticTile(vision.geometry.imageSize);
  const pixels = new Float32Array(tile.length * tiles);
  for (let i = 0; i < tiles; i++) pixels.set(tile, i * tile.length);
  const imageTokens = tiles * vision.geometry.tokensPerTile;
  const contextId = 1000;
  const text = evalTokenIds(40, 999);
  const ids = [...text.slice(0, 20), ...new Array(imageTokens).fill(contextId), ...text.slice(20)];
  const t1 = performance.now();
  const features = await vision.encode(pixels, tiles);
  const embeds = scatterImageEmbeddings(decoder.embed(ids), ids, contextId, features);
  argmax(await decoder.forward(decoder.newSequence(), embeds, ids.length));
  const ttft = seconds(t1);
  const result: ChildResult = {
    load_s: round(loadSeconds, 2),
    ttft_s: round(ttft, 2),
    ttft_tokens: ids.length,
    peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
  await vision.release();
  await decoder.release();
  await checkpoint.close();
}

async function runChild(args: Record<string, unknown>): Promise<ChildResult> {
  const self = fileURLToPath(import.meta.url);
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [...process.execArgv, self, '--bench-child', JSON.stringify(args)],
    { maxBuffer: 1 << 20 },
  );
  const last = stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(last) as ChildResult;
}

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

/** A DecoderRunner of the checkpoint at `llmDtype` (and `prefillDtype` for long chunks), graphs cached. */
export function openBenchDecoder(
  checkpoint: Checkpoint,
  weights: ReturnType<typeof checkpointWeights>,
  dims: DecoderDims,
  precision: ResolvedPrecision,
  threads: number,
): Promise<DecoderRunner> {
  const cacheDir = defaultGraphCacheDir();
  const key = (dtype: WeightDtype) =>
    engineGraphKey(checkpoint, 'decoder', dims, llmCacheTag(precision, dtype));
  return DecoderRunner.create(dims, weights, {
    threads,
    ...precision,
    cache: { dir: cacheDir, key: key(precision.llmDtype) },
    prefillCache: { dir: cacheDir, key: key(precision.prefillDtype) },
  });
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
  const cacheDir = defaultGraphCacheDir();
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
  const result: Record<string, unknown> = {};
  try {
    const visionDims = visionDimsFromConfig(config);
    const vit = async (dtype: 'fp32' | 'int8', tilesPerRun: number) => {
      log(`ViT ${dtype}, ${tilesPerRun} tile(s) per run`);
      const encoder = await VisionEncoder.create(visionDims, weights, {
        threads,
        vitDtype: dtype,
        int8Kernel: precision.int8Kernel,
        tilesPerRun,
        cache: {
          dir: cacheDir,
          key: engineGraphKey(checkpoint, 'vision', visionDims, vitCacheTag(dtype, precision.int8Kernel)),
        },
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
      const decoder = await openBenchDecoder(
        checkpoint,
        weights,
        dims,
        { ...precision, llmDtype, prefillDtype },
        threads,
      );
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

export async function benchCommand(argv: string[]): Promise<number> {
  const parse = () =>
    parseCommandArgs(argv, {
      ...PRECISION_FLAGS,
      shape: { type: 'string' },
      model: { type: 'string' },
      threads: { type: 'string' },
      reps: { type: 'string' },
      json: { type: 'string' },
      structured: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    });
  let values: ReturnType<typeof parse>['values'];
  try {
    const parsed = parse();
    values = parsed.values;
    noPositionals(parsed.positionals);
  } catch (err) {
    process.stderr.write(`internvl bench: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const flags = precisionFromFlags(values);
  // A model's own format decides the defaults it can (an AWQ or GPTQ checkpoint: its group size as the block).
  const config = values.model === undefined ? undefined : await loadModelConfig(values.model);
  const precision = await resolvePrecision({ ...flags, llmDtype: flags.llmDtype ?? 'int4' }, config);
  const positive = (v: string | undefined, name: string) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got '${v}'`);
    return n;
  };
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const threads = positive(values.threads, 'threads');
  const reps = positive(values.reps, 'reps');
  const result = values.structured
    ? await runStructuredBench({
        model: await benchModel(values.shape ?? 'InternVL2_5-1B', values.model, log),
        engine: { ...precision, threads },
        reps: reps ?? 3,
        log,
      })
    : await runBench({
        shape: values.shape,
        model: values.model,
        threads,
        reps,
        precision,
        log,
      });
  const text = JSON.stringify(result, null, 2);
  process.stdout.write(`${text}\n`);
  if (values.json) await writeFile(values.json, `${text}\n`);
  return 0;
}

// Child mode: `node bench.js --bench-child JSON` loads the model and reports load time, TTFT and peak RSS.
if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === '--bench-child') {
  const args = JSON.parse(process.argv[3]) as {
    model: string;
    cacheDir: string;
    precision: ResolvedPrecision;
    threads: number;
  };
  await childLoad(args.model, args.cacheDir, args.precision, args.threads);
}
