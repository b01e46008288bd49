/** `internvl transplant-vit`: a trained ViT joined to another checkpoint's LLM with a fresh mlp1 (progressive scaling). */
import { InternVLError } from '../errors.js';
import { transplantVit } from '../train/transplant.js';
import { integerOption, parseCommandArgs, UsageError } from './args.js';

const USAGE = `Usage: internvl transplant-vit --from DIR --into DIR --out DIR [--seed N]

  --from DIR   checkpoint whose ViT (vision_model.*, vision_config) is copied
  --into DIR   checkpoint whose LLM, tokenizer and template settings are kept
  --out DIR    new checkpoint: the two joined by a freshly initialised mlp1 (train it with --stage 1)
  --seed N     seed of the new mlp1 (default 0)

Examples:
  npx internvl transplant-vit --from ./InternVL2_5-1B --into ./InternVL2_5-4B --out ./4b-with-1b-vit
  npx internvl train --model ./4b-with-1b-vit --data shards/ --stage 1 --out run/
`;

export interface TransplantIo {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
}

export async function transplantVitCommand(args: string[], io: TransplantIo = process): Promise<number> {
  try {
    const { values } = parseCommandArgs(args, {
      from: { type: 'string' },
      into: { type: 'string' },
      out: { type: 'string' },
      seed: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    });
    if (values.help) {
      io.stdout.write(USAGE);
      return 0;
    }
    if (!values.from) throw new UsageError('needs --from DIR');
    if (!values.into) throw new UsageError('needs --into DIR');
    if (!values.out) throw new UsageError('needs --out DIR');
    const result = await transplantVit({
      from: values.from,
      into: values.into,
      out: values.out,
      seed: integerOption(values.seed, 'seed', 0) ?? 0,
    });
    const shapes = Object.entries(result.mlp1)
      .map(([n, s]) => `${n} [${s.join(', ')}]`)
      .join(', ');
    io.stdout.write(
      `wrote ${values.out}: ${result.visionTensors} ViT tensors, ${result.llmTensors} LLM tensors, new ${shapes}\n`,
    );
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`internvl transplant-vit: ${err.message}\n${USAGE}`);
      return 2;
    }
    if (err instanceof InternVLError) {
      io.stderr.write(`internvl transplant-vit: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}
