/** `internvl transplant-vit`: a trained ViT joined to another checkpoint's LLM with a fresh mlp1 (progressive scaling). */
import { transplantVit } from '../train/transplant.js';
import { integerOption, UsageError } from './args.js';
import { defineCommand } from './command.js';

const USAGE = `Usage: internvl transplant-vit --from DIR --into DIR --out DIR [--seed N]

  --from DIR   checkpoint whose ViT (vision_model.*, vision_config) is copied
  --into DIR   checkpoint whose LLM, tokenizer and template settings are kept
  --out DIR    new checkpoint: the two joined by a freshly initialised mlp1 (train it with --stage 1)
  --seed N     seed of the new mlp1 (default 0)

Examples:
  npx internvl transplant-vit --from ./InternVL2_5-1B --into ./InternVL2_5-4B --out ./4b-with-1b-vit
  npx internvl train --model ./4b-with-1b-vit --data shards/ --stage 1 --out run/
`;

export const transplantVitCommand = defineCommand({
  name: 'transplant-vit',
  usage: USAGE,
  options: {
    from: { type: 'string' },
    into: { type: 'string' },
    out: { type: 'string' },
    seed: { type: 'string' },
  },
  async run({ values }, io) {
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
  },
});
