/**
 * Resident memory after each stage of the bench's time-to-first-token run (fp32 ViT, int4 LLM):
 * node --import tsx scripts/profile-memory.ts MODEL_DIR [--prefill-chunk N]. Reads VmRSS / VmHWM from /proc
 * (Linux) and times the encoding and the prefill; graphs come from the default graph cache (built there first
 * when missing).
 */
import { readFileSync } from 'node:fs';
import { checkpointWeights } from '../src/engine/core.js';
import { argmax, decoderDimsFromConfig } from '../src/engine/decoder.js';
import { scatterImageEmbeddings } from '../src/engine/embeddings.js';
import { resolvePrecision } from '../src/engine/graph-plan.js';
import { createDecoderRunner, createVisionRunner, engineGraphCache } from '../src/engine/runners.js';
import { visionDimsFromConfig } from '../src/engine/vision.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadModelConfig } from '../src/models/model-config.js';

function memory(stage: string): void {
  const status = readFileSync('/proc/self/status', 'utf8');
  const mb = (key: string) => Math.round(Number(status.match(new RegExp(`${key}:\\s+(\\d+)`))?.[1]) / 1024);
  console.log(
    `${stage.padEnd(34)} rss ${mb('VmRSS')} MB  peak ${mb('VmHWM')} MB  (file-backed ${mb('RssFile')} MB)`,
  );
}

const dir = process.argv[2];
const chunkFlag = process.argv.indexOf('--prefill-chunk');
const prefillChunk = chunkFlag > 0 ? Number(process.argv[chunkFlag + 1]) : undefined;
const config = await loadModelConfig(dir);
const precision = await resolvePrecision({ llmDtype: 'int4' }, config);
const checkpoint = await Checkpoint.open(dir);
const weights = checkpointWeights(checkpoint, config);
const cache = engineGraphCache(checkpoint);
memory('modules loaded');
const visionDims = visionDimsFromConfig(config);
const vision = await createVisionRunner(config, weights, cache, {
  vitDtype: 'fp32',
  int8Kernel: precision.int8Kernel,
});
memory('fp32 ViT session');
const decoderDims = decoderDimsFromConfig(config);
const decoder = await createDecoderRunner(config, weights, cache, { precision, prefillChunk });
memory('int4 decoder session');
const tiles = 7;
const pixels = new Float32Array(tiles * 3 * visionDims.imageSize ** 2).map((_, i) => Math.sin(i));
let t = performance.now();
const features = await vision.encode(pixels, tiles);
memory(`${tiles} tiles encoded in ${((performance.now() - t) / 1000).toFixed(2)} s`);
const contextId = 1000;
const text = Array.from({ length: 40 }, (_, i) => 100 + i);
const ids = [
  ...text.slice(0, 20),
  ...new Array(features.length / decoderDims.hiddenSize).fill(contextId),
  ...text.slice(20),
];
t = performance.now();
argmax(
  await decoder.forward(
    decoder.newSequence(),
    scatterImageEmbeddings(decoder.embed(ids), ids, contextId, features),
    ids.length,
  ),
);
memory(
  `${ids.length}-token prefill in ${((performance.now() - t) / 1000).toFixed(2)} s (chunks of ${decoder.prefillChunk})`,
);
await vision.release();
await decoder.release();
await checkpoint.close();
