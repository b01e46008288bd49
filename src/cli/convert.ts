/**
 * `internvl convert`: builds a checkpoint's engine graphs at the chosen precision ahead of time, into
 * the graph cache (where `InternVLModel.load` with the same options finds them) or into a folder.
 */
import path from 'node:path';
import { checkpointWeights } from '../engine/core.js';
import { buildGraphDir, cachedGraph, defaultGraphCacheDir } from '../engine/graph-cache.js';
import { type PrecisionOptions, planEngineGraphs, resolvePrecision } from '../engine/graph-plan.js';
import { Checkpoint } from '../io/safetensors.js';
import { loadModelConfig } from '../models/model-config.js';
import { checkInt8Kernel, checkWeightDtype } from '../onnx/quantize.js';
import { UsageError } from './args.js';
import { defineCommand } from './command.js';
import { convertModelForWeb } from './convert-web.js';

const USAGE = `Usage: internvl convert MODEL [--llm-dtype fp32|int8|int4] [--vit-dtype fp32|int8]
                        [--prefill-dtype fp32|int8|int4] [--lm-head-dtype auto|fp32|int8|int4]
                        [--block-size 32|64|128] [--accuracy-level 0-4] [--int8-kernel auto|u8s8|u8u8]
                        [--out DIR] [--cache-dir DIR]
       internvl convert --target web MODEL --out DIR [precision flags]

Builds the vision and decoder graphs of the checkpoint folder MODEL (and a prefill graph when
--prefill-dtype differs from --llm-dtype). Without --out they go to the graph cache
(default $INTERNVL_CACHE/graphs or ~/.cache/internvl-ts/graphs), where loading the model with the same
options finds them; with --out each graph is written to DIR/<role>/model.onnx + weights.bin.
--target web writes DIR for the browser (onnxruntime-web): the graphs, the token embeddings, the
config and tokenizer files and internvl-web.json; serve DIR and load it by URL (examples/browser).
--int8-kernel: how int8 weights are stored; auto (default) picks the scheme exact on this CPU (u8s8
with VNNI or AMX, u8u8 without), web targets default to u8u8.

Examples:
  npx internvl convert ./InternVL2_5-1B --llm-dtype int4 --prefill-dtype int8   # into the graph cache
  npx internvl convert ./random-8b --llm-dtype int4 --out graphs-8b               # a create-random checkpoint
  npx internvl convert --target web ./InternVL2_5-1B --llm-dtype int4 --out web-model
`;

export interface ConvertOptions extends PrecisionOptions {
  /** Write graphs here (DIR/<role>/) instead of the cache. */
  out?: string;
  /** Graph cache folder (default: the engine's). */
  cacheDir?: string;
}

export interface ConvertedGraph {
  role: string;
  dtype: string;
  path: string;
  /** Already in the cache; nothing was built. */
  cached: boolean;
}

/** Builds (or finds in the cache) every graph the precision choices need; returns where they are. */
export async function convertModel(
  modelDir: string,
  options: ConvertOptions = {},
): Promise<ConvertedGraph[]> {
  const config = await loadModelConfig(modelDir);
  const precision = await resolvePrecision(options, config);
  const checkpoint = await Checkpoint.open(modelDir);
  try {
    const plan = planEngineGraphs(config, checkpoint, checkpointWeights(checkpoint, config), precision);
    const done: ConvertedGraph[] = [];
    for (const graph of plan) {
      if (options.out) {
        const file = await buildGraphDir(graph.build, path.join(options.out, graph.role));
        done.push({ role: graph.role, dtype: graph.dtype, path: file, cached: false });
      } else {
        // An explicit conversion checks cached entries in full (weights.bin's SHA-256 too).
        const { modelPath, hit } = await cachedGraph(
          options.cacheDir ?? defaultGraphCacheDir(),
          graph.key,
          graph.build,
          { verify: 'full', source: graph.source },
        );
        done.push({ role: graph.role, dtype: graph.dtype, path: modelPath, cached: hit });
      }
    }
    return done;
  } finally {
    await checkpoint.close();
  }
}

/** Precision flags shared by convert, eval-quant and bench. */
export const PRECISION_FLAGS = {
  'llm-dtype': { type: 'string' },
  'vit-dtype': { type: 'string' },
  'prefill-dtype': { type: 'string' },
  'lm-head-dtype': { type: 'string' },
  'block-size': { type: 'string' },
  'accuracy-level': { type: 'string' },
  'int8-kernel': { type: 'string' },
} as const;

/** PrecisionOptions from parsed precision flags (validated later by resolvePrecision). */
export function precisionFromFlags(
  values: Partial<Record<keyof typeof PRECISION_FLAGS, string>>,
): PrecisionOptions {
  const num = (v: string | undefined) => (v === undefined ? undefined : Number(v));
  return {
    llmDtype:
      values['llm-dtype'] === undefined ? undefined : checkWeightDtype('--llm-dtype', values['llm-dtype']),
    vitDtype:
      values['vit-dtype'] === undefined
        ? undefined
        : (checkWeightDtype('--vit-dtype', values['vit-dtype'], ['fp32', 'int8']) as 'fp32' | 'int8'),
    prefillDtype:
      values['prefill-dtype'] === undefined
        ? undefined
        : checkWeightDtype('--prefill-dtype', values['prefill-dtype']),
    lmHeadDtype:
      values['lm-head-dtype'] === undefined || values['lm-head-dtype'] === 'auto'
        ? undefined
        : checkWeightDtype('--lm-head-dtype', values['lm-head-dtype']),
    blockSize: num(values['block-size']),
    accuracyLevel: num(values['accuracy-level']),
    int8Kernel:
      values['int8-kernel'] === undefined || values['int8-kernel'] === 'auto'
        ? undefined
        : checkInt8Kernel('--int8-kernel', values['int8-kernel']),
  };
}

export const convertCommand = defineCommand({
  name: 'convert',
  usage: USAGE,
  options: {
    ...PRECISION_FLAGS,
    out: { type: 'string' },
    target: { type: 'string' },
    'cache-dir': { type: 'string' },
  },
  async run({ values, positionals }, io) {
    if (positionals.length !== 1) throw new UsageError('expected one MODEL folder');
    const t0 = performance.now();
    if (values.target !== undefined && values.target !== 'node') {
      if (values.target !== 'web') throw new UsageError(`--target must be node or web, got ${values.target}`);
      if (!values.out) throw new UsageError('--target web needs --out DIR');
      const manifest = await convertModelForWeb(positionals[0], values.out, precisionFromFlags(values));
      for (const [role, g] of Object.entries(manifest.graphs)) {
        if (g) io.stdout.write(`${role} (${g.dtype}): ${path.join(values.out, g.model.path)}\n`);
      }
      io.stdout.write(`manifest: ${path.join(values.out, 'internvl-web.json')}\n`);
      io.stderr.write(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
      return 0;
    }
    const graphs = await convertModel(positionals[0], {
      ...precisionFromFlags(values),
      out: values.out,
      cacheDir: values['cache-dir'],
    });
    for (const g of graphs) {
      io.stdout.write(`${g.role} (${g.dtype})${g.cached ? ' [cached]' : ''}: ${g.path}\n`);
    }
    io.stderr.write(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    return 0;
  },
});
