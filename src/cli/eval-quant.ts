/**
 * `internvl eval-quant`: how far a quantised model is from fp32 on the same inputs: logits max/mean
 * absolute difference (prompt and decode steps), greedy-token agreement, and the ViT's image
 * embeddings when the ViT is quantised.
 */
import { writeFile } from 'node:fs/promises';
import { type LlmQuantization, llmQuantization } from '../config/quantization-config.js';
import { checkpointWeights } from '../engine/core.js';
import { argmax, decoderDimsFromConfig } from '../engine/decoder.js';
import { type PrecisionOptions, type ResolvedPrecision, resolvePrecision } from '../engine/graph-plan.js';
import { greedyTokens, teacherForcedLogits } from '../engine/greedy.js';
import { type CpuReport, cpuReport } from '../engine/int8-probe.js';
import { decoderGraphOptions, resolveLlmPrecision, type WeightDtype } from '../engine/precision.js';
import { createDecoderRunner, createVisionRunner, engineGraphCache } from '../engine/runners.js';
import { InternVLError } from '../errors.js';
import { Checkpoint } from '../io/safetensors.js';
import { loadModelConfig } from '../models/model-config.js';
import { integerOption, UsageError } from './args.js';
import { defineCommand } from './command.js';
import { PRECISION_FLAGS, precisionFromFlags } from './convert.js';

export interface EvalQuantOptions extends PrecisionOptions {
  /** Prompt length in tokens (default 128); ids are drawn from a fixed generator. */
  promptTokens?: number;
  /** Greedy tokens compared (default 16). */
  newTokens?: number;
  /** Graph cache folder, or false to build in memory (default: the engine's cache). */
  cacheDir?: string | false;
  threads?: number;
  /** Tiles fed to both ViTs (default: one synthetic tile). */
  pixelValues?: Float32Array;
}

export interface DiffStats {
  maxAbsDiff: number;
  meanAbsDiff: number;
  /** Largest |value| of the fp32 reference, for scale. */
  maxAbsReference: number;
}

export interface EvalQuantReport {
  model: string;
  /**
   * The checkpoint's own 4-bit format (AWQ, GPTQ), or null for a 16-bit checkpoint. For a 4-bit one the
   * fp32 reference is its exact dequantised weights.
   */
  checkpointQuantization: LlmQuantization | null;
  precision: ResolvedPrecision;
  /** How the decode graph stores lm_head ('auto' resolved: fp32, int8 or int4). */
  lmHeadDtype: WeightDtype;
  promptTokens: number;
  newTokens: number;
  /** Logits of every prompt position (the prefill graph when there is one). */
  promptLogits: DiffStats;
  /** Last-position logits of the decode steps, fed the fp32 greedy tokens. */
  decodeLogits: DiffStats;
  /** Fraction of steps (prompt end + each decode step, fed the fp32 tokens) whose argmax matches fp32. */
  greedyAgreement: number;
  /** Tokens the quantised model's own greedy continuation shares with fp32 before the first difference. */
  greedyIdenticalPrefix: number;
  /** Image embeddings, when vitDtype is not fp32. */
  vision: DiffStats | null;
  /** The CPU, its int8-relevant flags and which int8 schemes are exact on it. */
  cpu: CpuReport;
}

export function diffStats(reference: Float32Array, other: Float32Array): DiffStats {
  if (reference.length !== other.length) {
    throw new InternVLError(
      'INTERNAL',
      `compared arrays differ in length: ${reference.length} vs ${other.length}`,
    );
  }
  let max = 0;
  let sum = 0;
  let ref = 0;
  for (let i = 0; i < reference.length; i++) {
    const d = Math.abs(reference[i] - other[i]);
    if (d > max || Number.isNaN(d)) max = d;
    sum += d;
    ref = Math.max(ref, Math.abs(reference[i]));
  }
  return { maxAbsDiff: max, meanAbsDiff: sum / Math.max(1, reference.length), maxAbsReference: ref };
}

function mergeStats(parts: DiffStats[], counts: number[]): DiffStats {
  const total = counts.reduce((a, b) => a + b, 0);
  return {
    maxAbsDiff: Math.max(...parts.map((p) => p.maxAbsDiff)),
    meanAbsDiff: parts.reduce((a, p, i) => a + p.meanAbsDiff * counts[i], 0) / Math.max(1, total),
    maxAbsReference: Math.max(...parts.map((p) => p.maxAbsReference)),
  };
}

/** Deterministic token ids in [0, vocab). */
export function evalTokenIds(count: number, vocab: number, seed = 1): number[] {
  let state = seed >>> 0 || 1;
  return Array.from({ length: count }, () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state % vocab;
  });
}

/** A smooth synthetic tile [1, 3, S, S] in the normalised pixel range. */
export function syntheticTile(size: number): Float32Array {
  const plane = size * size;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        out[c * plane + y * size + x] = 1.8 * Math.sin((x * (c + 1)) / 23 + y / 31) * Math.cos(y / (17 + c));
      }
    }
  }
  return out;
}

export async function evalQuant(modelDir: string, options: EvalQuantOptions = {}): Promise<EvalQuantReport> {
  const config = await loadModelConfig(modelDir);
  const precision = await resolvePrecision(options, config);
  const promptTokens = options.promptTokens ?? 128;
  const newTokens = options.newTokens ?? 16;
  if (!Number.isInteger(promptTokens) || promptTokens < 1 || !Number.isInteger(newTokens) || newTokens < 1) {
    throw new InternVLError('BAD_INPUT', `promptTokens and newTokens must be positive integers`);
  }
  const checkpoint = await Checkpoint.open(modelDir);
  const weights = checkpointWeights(checkpoint, config);
  const cache = engineGraphCache(checkpoint, options.cacheDir);
  const released: { release(): Promise<void> }[] = [];
  try {
    const dims = decoderDimsFromConfig(config);
    const threads = options.threads;
    const fp32 = await createDecoderRunner(config, weights, cache, {
      precision: resolveLlmPrecision({ llmDtype: 'fp32' }),
      threads,
    });
    released.push(fp32);
    const quant = await createDecoderRunner(config, weights, cache, { precision, threads });
    released.push(quant);

    const ids = evalTokenIds(promptTokens, dims.vocabSize);
    const embeds = fp32.embed(ids);
    const refAll = await fp32.forward(fp32.newSequence(), embeds, promptTokens, { allLogits: true });
    const qAll = await quant.forward(quant.newSequence(), embeds, promptTokens, { allLogits: true });
    const promptLogits = diffStats(refAll, qAll);

    const refTokens = await greedyTokens(fp32, ids, newTokens);
    const refSteps = await teacherForcedLogits(fp32, embeds, promptTokens, refTokens);
    // Teacher-forced: the quantised model sees the fp32 tokens; step 0 is the prompt's last position.
    const qSteps = await teacherForcedLogits(quant, embeds, promptTokens, refTokens);
    const vocab = dims.vocabSize;
    let agree = 0;
    const decodeParts: DiffStats[] = [];
    for (let step = 0; step < newTokens; step++) {
      if (argmax(qSteps[step]) === refTokens[step]) agree++;
      if (step > 0) decodeParts.push(diffStats(refSteps[step], qSteps[step]));
    }
    const decodeLogits =
      decodeParts.length > 0
        ? mergeStats(
            decodeParts,
            decodeParts.map(() => vocab),
          )
        : { maxAbsDiff: 0, meanAbsDiff: 0, maxAbsReference: 0 };
    const qTokens = await greedyTokens(quant, ids, newTokens);
    let identical = 0;
    while (identical < newTokens && qTokens[identical] === refTokens[identical]) identical++;

    let vision: DiffStats | null = null;
    if (precision.vitDtype !== 'fp32') {
      const { int8Kernel } = precision;
      const ref = await createVisionRunner(config, weights, cache, { vitDtype: 'fp32', int8Kernel, threads });
      released.push(ref);
      const q = await createVisionRunner(config, weights, cache, {
        vitDtype: precision.vitDtype,
        int8Kernel,
        threads,
      });
      released.push(q);
      const pixels = options.pixelValues ?? syntheticTile(ref.geometry.imageSize);
      const tiles = pixels.length / ref.tileSize;
      vision = diffStats(await ref.encode(pixels, tiles), await q.encode(pixels, tiles));
    }
    return {
      model: modelDir,
      checkpointQuantization: llmQuantization(config),
      precision,
      lmHeadDtype: decoderGraphOptions(precision, precision.llmDtype).lmHeadQuant?.dtype ?? 'fp32',
      promptTokens,
      newTokens,
      promptLogits,
      decodeLogits,
      greedyAgreement: agree / newTokens,
      greedyIdenticalPrefix: identical,
      vision,
      cpu: await cpuReport(),
    };
  } finally {
    for (const r of released) await r.release();
    await checkpoint.close();
  }
}

const USAGE = `Usage: internvl eval-quant MODEL [--dtype fp32|int8|int4] [--vit-dtype fp32|int8]
                           [--prefill-dtype …] [--lm-head-dtype …] [--block-size 32|64|128]
                           [--accuracy-level 0-4] [--int8-kernel auto|u8s8|u8u8]
                           [--prompt-tokens 128] [--new-tokens 16] [--no-cache] [--json FILE]

Compares the quantised model with fp32 on a fixed token prompt: logits max/mean abs difference
(prompt positions and decode steps), greedy-token agreement (teacher-forced on the fp32 tokens) and
the length of the identical greedy prefix; with --vit-dtype int8 also the image embeddings of a
synthetic tile. --dtype is the LLM dtype (same as --llm-dtype). On an AWQ or GPTQ checkpoint fp32 is
its exact dequantised weights, and the default is int4 graphs over its packed weights.

Examples:
  npx internvl eval-quant ./InternVL2_5-1B --dtype int4
  npx internvl eval-quant ./InternVL2_5-1B --dtype int4 --prefill-dtype int8 --vit-dtype int8 --json report.json
`;

export const evalQuantCommand = defineCommand({
  name: 'eval-quant',
  usage: USAGE,
  options: {
    ...PRECISION_FLAGS,
    dtype: { type: 'string' },
    'prompt-tokens': { type: 'string' },
    'new-tokens': { type: 'string' },
    'no-cache': { type: 'boolean' },
    json: { type: 'string' },
  },
  async run({ values, positionals }, io) {
    if (positionals.length !== 1) throw new UsageError('expected one MODEL folder');
    const precision = precisionFromFlags({ ...values, 'llm-dtype': values['llm-dtype'] ?? values.dtype });
    const report = await evalQuant(positionals[0], {
      ...precision,
      promptTokens: integerOption(values['prompt-tokens'], 'prompt-tokens', 1),
      newTokens: integerOption(values['new-tokens'], 'new-tokens', 1),
      cacheDir: values['no-cache'] ? false : undefined,
    });
    const text = JSON.stringify(report, null, 2);
    io.stdout.write(`${text}\n`);
    if (values.json) await writeFile(values.json, `${text}\n`);
    return 0;
  },
});
