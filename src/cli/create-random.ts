/** `internvl create-random`: a random-weight checkpoint at a real InternVL 2.5 shape. */
import { parseArgs } from 'node:util';
import { createRandomCheckpoint, RANDOM_SHAPES } from '../tools/random-checkpoint.js';

const USAGE = `Usage: internvl create-random --shape NAME --out DIR [--seed N]

Writes config.json, a byte-level tokenizer with the real special-token ids and model.safetensors with
seeded random bf16 weights at the real shapes. Shapes: ${Object.keys(RANDOM_SHAPES).join(', ')}.
`;

export async function createRandomCommand(argv: string[]): Promise<number> {
  let values: { shape?: string; out?: string; seed?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        shape: { type: 'string' },
        out: { type: 'string' },
        seed: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`internvl create-random: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const seed = values.seed === undefined ? 0 : Number(values.seed);
  if (!values.shape || !values.out || !Number.isSafeInteger(seed) || seed < 0) {
    process.stderr.write(
      `internvl create-random: --shape, --out and a non-negative integer --seed are needed\n${USAGE}`,
    );
    return 2;
  }
  const dir = await createRandomCheckpoint({ shape: values.shape, out: values.out, seed });
  process.stdout.write(`${dir}\n`);
  return 0;
}
