/**
 * The bench's child process: loads the model as EngineCore does (from `cacheDir`, cold or cached) and
 * times one image (6 tiles + thumbnail) to its first token; prints load time, TTFT and peak RSS as JSON.
 * Run by `runChild` as `node bench-child.js JSON`, so that the peak RSS is that of a process holding only
 * the model.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { checkpointWeights } from '../engine/core.js';
import { argmax } from '../engine/decoder.js';
import { scatterImageEmbeddings } from '../engine/embeddings.js';
import type { ResolvedPrecision } from '../engine/graph-plan.js';
import { createEngineRunners } from '../engine/runners.js';
import { Checkpoint } from '../io/safetensors.js';
import { loadModelConfig } from '../models/model-config.js';
import { round, seconds } from './bench-limits.js';
import { evalTokenIds, syntheticTile } from './eval-quant.js';

export interface ChildResult {
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
  const { vision, decoder } = await createEngineRunners(config, checkpoint, weights, {
    precision,
    threads,
    cacheDir,
  });
  const loadSeconds = seconds(t0);

  const tiles = 7;
  const tile = syntheticTile(vision.geometry.imageSize);
  const pixels = new Float32Array(tile.length * tiles);
  for (let i = 0; i < tiles; i++) pixels.set(tile, i * tile.length);
  const imageTokens = tiles * vision.geometry.tokensPerTile;
  // Any id serves as the image placeholder; text ids stay below it (a random checkpoint may have a tiny vocabulary).
  const contextId = Math.min(1000, decoder.dims.vocabSize - 1);
  const text = evalTokenIds(40, contextId);
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

export async function runChild(args: Record<string, unknown>): Promise<ChildResult> {
  const self = fileURLToPath(import.meta.url);
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [...process.execArgv, self, JSON.stringify(args)],
    { maxBuffer: 1 << 20 },
  );
  const last = stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(last) as ChildResult;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const args = JSON.parse(process.argv[2]) as {
    model: string;
    cacheDir: string;
    precision: ResolvedPrecision;
    threads: number;
  };
  await childLoad(args.model, args.cacheDir, args.precision, args.threads);
}
