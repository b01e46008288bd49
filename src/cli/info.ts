/**
 * `internvl info`: what a model is (architecture, parameter counts) and how much memory it needs at
 * each precision (engine/memory-estimate.ts), from config.json alone: a checkpoint folder, a cached
 * hub id, or a config-only folder from `create-random --no-weights`.
 */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { ModelConfig } from '../config/model-config.js';
import { availableMemory } from '../engine/memory-check.js';
import {
  describePrecision,
  estimateMemory,
  parameterCounts,
  precisionFlags,
  REPORTED_PRECISIONS,
} from '../engine/memory-estimate.js';
import { InternVLError } from '../errors.js';
import { resolveModel } from '../io/hub.js';
import { formatBytes } from '../io/progress.js';
import { internVitDimsFromConfig } from '../models/internvit.js';
import { loadModelConfig } from '../models/model-config.js';
import { decoderDimsFromConfig } from '../models/registry.js';
import { UsageError } from './args.js';
import { defineCommand } from './command.js';

const USAGE = `Usage: internvl info MODEL [--json]

Describes MODEL (a checkpoint folder, a hub id already in the Hugging Face cache, or a config-only
folder from create-random --no-weights) from its config.json: the architecture, the parameters of
the ViT, the projector and the LLM, and the estimated peak memory (RSS) at each precision, running
from cached graphs and on the first load, which converts the checkpoint into graphs. Nothing is
downloaded or loaded. The estimate and how far it is from measurements: docs/memory.md.

Examples:
  npx internvl info ./random-1b
  npx internvl info OpenGVLab/InternVL2_5-1B --json
  npx internvl create-random --shape InternVL2_5-78B --out ./cfg-78b --no-weights && npx internvl info ./cfg-78b
`;

const millions = (n: number) => `${(n / 1e6).toFixed(1)} M`;

function architecture(config: ModelConfig): string {
  const vit = internVitDimsFromConfig(config.vision_config);
  const llm = decoderDimsFromConfig(config);
  return (
    `InternViT (${vit.numLayers} layers × ${vit.hiddenSize}) → mlp1 → ${config.llm_config.architectures[0]} ` +
    `(${llm.arch}: ${llm.numLayers} layers × ${llm.hiddenSize}, ${llm.numHeads} heads, ${llm.numKvHeads} KV heads, ` +
    `vocabulary ${llm.vocabSize})`
  );
}

async function weightBytes(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir)) {
    if (name.endsWith('.safetensors')) total += (await stat(path.join(dir, name))).size;
  }
  return total;
}

/** `internvl info`; returns the exit code. */
export const infoCommand = defineCommand({
  name: 'info',
  usage: USAGE,
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }, io) {
    if (positionals.length !== 1) throw new UsageError('expected one MODEL (a folder or a hub id)');
    const [model] = positionals;
    // Only what is on disk: a hub id must be in the cache (`internvl pull` puts it there).
    const dir = await resolveModel(model, { offline: true }).catch((err: unknown) => {
      if (!(err instanceof InternVLError && err.code === 'OFFLINE')) throw err;
      throw new InternVLError(
        'NOT_FOUND',
        `${model} is not a folder and not in the Hugging Face cache (info reads only what is on disk); ` +
          `\`npx internvl pull ${model}\` downloads it (${err.message})`,
      );
    });
    const config = await loadModelConfig(dir);
    const params = parameterCounts(config);
    const weights = await weightBytes(dir);
    const available = availableMemory();
    const estimates = REPORTED_PRECISIONS.map((p) => estimateMemory(config, p));
    if (values.json) {
      io.stdout.write(
        `${JSON.stringify({ dir, architecture: architecture(config), parameters: params, weightBytes: weights, available, estimates })}\n`,
      );
      return 0;
    }
    let out = `Model: ${dir}\nArchitecture: ${architecture(config)}\n`;
    out +=
      `Parameters: ViT ${millions(params.vit)}, projector ${millions(params.projector)}, ` +
      `LLM ${millions(params.llm)} (token embeddings ${millions(params.embedding)}), total ${millions(params.total)}\n`;
    out += `Weights on disk: ${weights > 0 ? formatBytes(weights) : 'none (config only)'}\n`;
    out += 'Estimated peak memory (RSS):\n';
    out += `  ${'precision'.padEnd(40)} ${'graphs'.padStart(10)} ${'running'.padStart(10)} ${'first load'.padStart(10)}  flags\n`;
    for (const e of estimates) {
      const graphs = e.graphs.reduce((n, g) => n + g.bytes, 0);
      out +=
        `  ${describePrecision(e.precision).padEnd(40)} ${formatBytes(graphs).padStart(10)} ` +
        `${formatBytes(e.running).padStart(10)} ${formatBytes(e.converting).padStart(10)}  ${precisionFlags(e.precision) || '(default)'}\n`;
    }
    out += `Available: ${formatBytes(available.bytes)} (${available.source})\n`;
    io.stdout.write(out);
    return 0;
  },
});
