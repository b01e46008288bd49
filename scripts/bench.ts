/**
 * Engine speed on a random-weight checkpoint at real shapes (fp32 for now): ViT seconds per tile,
 * prefill tokens/s and decode tokens/s, printed as one JSON object (and written to --json FILE).
 *
 *   npm run bench -- [--shape InternVL2_5-1B] [--model DIR] [--threads N] [--json FILE]
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { loadModelConfig } from '../src/config/model-config.js';
import { checkpointWeights } from '../src/engine/core.js';
import { DecoderRunner, decoderDimsFromConfig } from '../src/engine/decoder.js';
import { defaultGraphCacheDir, graphCacheKey } from '../src/engine/graph-cache.js';
import { defaultThreads } from '../src/engine/session.js';
import { VisionEncoder, visionDimsFromConfig } from '../src/engine/vision.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { createRandomCheckpoint } from '../src/tools/random-checkpoint.js';

const { values } = parseArgs({
  options: {
    shape: { type: 'string', default: 'InternVL2_5-1B' },
    model: { type: 'string' },
    threads: { type: 'string' },
    json: { type: 'string' },
    'prefill-tokens': { type: 'string', default: '300' },
    'decode-tokens': { type: 'string', default: '32' },
  },
});

const seconds = (t0: number) => (performance.now() - t0) / 1000;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const cacheDir = defaultGraphCacheDir();
const modelDir = values.model ?? path.join(path.dirname(cacheDir), 'random-models', `${values.shape}-seed0`);
if (!values.model && !existsSync(path.join(modelDir, 'model.safetensors'))) {
  process.stderr.write(`creating random ${values.shape} checkpoint in ${modelDir}\n`);
  await createRandomCheckpoint({ shape: values.shape!, out: modelDir, seed: 0 });
}
const threads = values.threads ? Number(values.threads) : defaultThreads();
const config = await loadModelConfig(modelDir);
const checkpoint = await Checkpoint.open(modelDir);
const weights = checkpointWeights(checkpoint);
const cacheFor = (component: string, dims: unknown) => ({
  dir: cacheDir,
  key: graphCacheKey(checkpoint.files(), { component, dims, dtype: 'fp32' }),
});

let t0 = performance.now();
const visionDims = visionDimsFromConfig(config);
const vision = await VisionEncoder.create(visionDims, weights, {
  threads,
  cache: cacheFor('vision', visionDims),
});
const decoderDims = decoderDimsFromConfig(config);
const decoder = await DecoderRunner.create(decoderDims, weights, {
  threads,
  cache: cacheFor('decoder', decoderDims),
});
const loadSeconds = seconds(t0);

const tile = new Float32Array(3 * 448 * 448).map((_, i) => Math.sin(i) * 1.5);
await vision.encode(tile, 1);
const vitTimes: number[] = [];
for (let i = 0; i < 3; i++) {
  t0 = performance.now();
  await vision.encode(tile, 1);
  vitTimes.push(seconds(t0));
}

const prefillTokens = Number(values['prefill-tokens']);
const decodeTokens = Number(values['decode-tokens']);
const ids = Array.from({ length: prefillTokens }, (_, i) => (i * 7919) % 150000);
const prefillTimes: number[] = [];
const decodeRates: number[] = [];
for (let run = 0; run < 2; run++) {
  const seq = decoder.newSequence();
  t0 = performance.now();
  await decoder.forward(seq, decoder.embed(ids), ids.length);
  prefillTimes.push(seconds(t0));
  t0 = performance.now();
  for (let i = 0; i < decodeTokens; i++) await decoder.forward(seq, decoder.embed([i + 1]), 1);
  decodeRates.push(decodeTokens / seconds(t0));
}

const result = {
  shape: values.model ? path.basename(modelDir) : values.shape,
  llm_dtype: 'fp32',
  vit_dtype: 'fp32',
  threads,
  cpus: os.availableParallelism(),
  ort_version: ort.env.versions.node,
  node_version: process.version,
  load_s: Number(loadSeconds.toFixed(2)),
  vit_s_per_tile: Number(median(vitTimes).toFixed(3)),
  prefill_tokens: prefillTokens,
  prefill_tok_s: Number((prefillTokens / median(prefillTimes)).toFixed(1)),
  decode_tok_s: Number(median(decodeRates).toFixed(2)),
  peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
};
const text = JSON.stringify(result, null, 2);
process.stdout.write(`${text}\n`);
if (values.json) await writeFile(values.json, `${text}\n`);
await vision.release();
await decoder.release();
await checkpoint.close();
