import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeWeightBytes, linearWeightBytes } from '../src/cli/bench-limits.js';
import { resolvePrecision } from '../src/engine/graph-plan.js';
import type { DecoderDims } from '../src/models/decoder.js';

test('int4 weights are counted as stored and as MLAS streams them at accuracy level 4', () => {
  // [20, 64] in blocks of 32: 2 blocks per row of 16 data bytes, an fp32 scale each, zero points two per byte;
  // the packed form replaces the zero points by an fp32 block sum per block, rows padded to 16.
  const acc4 = linearWeightBytes('int4', 20, 64, { blockSize: 32, accuracyLevel: 4 });
  assert.deepEqual(acc4, { stored: 640 + 160 + 20, streamed: 640 + 160 + 32 * 2 * 4 });
  const acc0 = linearWeightBytes('int4', 20, 64, { blockSize: 32, accuracyLevel: 0 });
  assert.deepEqual(acc0, { stored: 820, streamed: 820 });
  assert.deepEqual(linearWeightBytes('int8', 20, 64, { blockSize: 32, accuracyLevel: 4 }), {
    stored: 1280 + 80,
    streamed: 1360,
  });
});

test('the 1B decoder streams 370.3 MB of int4 weights per token (316.3 MB as stored)', async () => {
  const dims: DecoderDims = {
    arch: 'qwen2',
    hiddenSize: 896,
    numLayers: 24,
    numHeads: 14,
    numKvHeads: 2,
    headDim: 64,
    intermediateSize: 4864,
    vocabSize: 151674,
    rmsNormEps: 1e-6,
    ropeTheta: 1e6,
    ropeScaling: null,
    maxPositionEmbeddings: 32768,
    attentionBias: true,
  };
  const bytes = decodeWeightBytes(dims, await resolvePrecision({ llmDtype: 'int4' }));
  assert.equal(bytes.streamed, 370_295_520);
  assert.equal(bytes.stored, 316_293_516);
});
