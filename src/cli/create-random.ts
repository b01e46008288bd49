/** `internvl create-random`: a random-weight checkpoint at a real InternVL 2.5, 3 or 3.5 shape. */
import {
  createRandomCheckpoint,
  DEFAULT_MAX_SHARD_BYTES,
  RANDOM_SHAPES,
} from '../tools/random-checkpoint.js';
import { integerOption, UsageError } from './args.js';
import { defineCommand } from './command.js';

const USAGE = `Usage: internvl create-random --shape NAME --out DIR [options]

Writes a checkpoint folder in the published format with seeded random bf16 weights: config.json,
generation_config.json, a byte-level BPE tokenizer of the real vocabulary size with the real special-token
ids (every other id decodes to a made-up word, so generated text is always visible) and the weights,
in model-0000N-of-0000M.safetensors shards with an index once they exceed --max-shard-size.

Shapes: ${Object.keys(RANDOM_SHAPES).join(', ')}

Options:
  --shape NAME          one of the shapes above (required)
  --out DIR             output folder (required); weight files of an earlier run there are replaced
  --seed N              random seed (default 0); the same seed gives the same files
  --no-weights          write the config and tokenizer only (no safetensors)
  --vit-layers N        ViT layers instead of the shape's (real widths, fewer layers: small test models)
  --llm-layers N        LLM layers instead of the shape's
  --max-shard-size S    bytes per shard: a number with an optional KB, MB or GB (default 5GB)
  -h, --help            show this help

Weights are generated and written a chunk at a time, so memory stays small at any shape; the disk needs
about 2 bytes per parameter (InternVL2_5-78B: about 157 GB).

Examples:
  npx internvl create-random --shape InternVL2_5-1B --out ./random-1b
  npx internvl chat ./random-1b --max-new-tokens 32 "Hello"  # made-up words: the weights are random
  npx internvl create-random --shape InternVL2_5-78B --out ./random-78b --no-weights
  npx internvl create-random --shape InternVL2_5-8B --out ./small-8b --vit-layers 2 --llm-layers 2
`;

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9 };

/** '5GB', '500MB', '1e9' → bytes. */
function sizeOption(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const match = /^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmg]?b?)\s*$/i.exec(value);
  const bytes = match ? Number(match[1]) * SIZE_UNITS[match[2].toLowerCase()] : Number.NaN;
  if (!(bytes >= 1)) {
    throw new UsageError(`--max-shard-size must be a size such as 5GB, 500MB or 1000000, got '${value}'`);
  }
  return bytes;
}

export const createRandomCommand = defineCommand({
  name: 'create-random',
  usage: USAGE,
  options: {
    shape: { type: 'string' },
    out: { type: 'string' },
    seed: { type: 'string' },
    'no-weights': { type: 'boolean' },
    'vit-layers': { type: 'string' },
    'llm-layers': { type: 'string' },
    'max-shard-size': { type: 'string' },
  },
  positionals: 'none',
  async run({ values }, io) {
    if (!values.shape) throw new UsageError('needs --shape NAME');
    if (!values.out) throw new UsageError('needs --out DIR');
    const dir = await createRandomCheckpoint({
      shape: values.shape,
      out: values.out,
      seed: integerOption(values.seed, 'seed', 0) ?? 0,
      weights: !values['no-weights'],
      layers: {
        vit: integerOption(values['vit-layers'], 'vit-layers', 1),
        llm: integerOption(values['llm-layers'], 'llm-layers', 1),
      },
      maxShardBytes: sizeOption(values['max-shard-size']) ?? DEFAULT_MAX_SHARD_BYTES,
    });
    io.stdout.write(`${dir}\n`);
    return 0;
  },
});
