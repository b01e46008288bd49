import path from 'node:path';
import { filterMeta } from '../data/filter.js';
import { createOpenAIJudge } from '../data/judge.js';
import { loadMeta } from '../data/meta.js';
import { didYouMean } from './args.js';
import { commandFailure, defineCommand, type ParsedArgs } from './command.js';
import {
  type DataIo,
  intOption,
  numberOption,
  progressLine,
  reportIssues,
  UsageError,
} from './data-common.js';
import { PACK_OPTIONS, packCommand } from './data-pack.js';
import { STATS_OPTIONS, statsCommand } from './data-stats.js';

export type { DataIo } from './data-common.js';

const USAGE = `Usage: internvl data <command> META [options]

Commands:
  stats META [--json] [--model DIR] [--seed N] [--strict] [--allow-outside-root]
      per dataset: valid and invalid lines, samples after repeat_time; tokens and tiles with --model
  filter META --out DIR [--judge-url URL] [--judge-model NAME] [--min-score 7]
         [--min-repetition-score 3] [--concurrency 4] [--retries 3] [--strict] [--json]
         [--allow-outside-root]
      rules, n-gram repetition and (with --judge-url) LLM scoring; resumable; writes cleaned JSONL + meta
      and report.json. The judge's API key, if it needs one, is read from INTERNVL_JUDGE_API_KEY.
  pack META --model DIR --out DIR --max-len N [--loss-reduction token|sample|square] [--seed N]
       [--max-tiles 48] [--max-buffers 20] [--max-dynamic-patch N] [--min-num-frame 8]
       [--max-num-frame 32] [--packs-per-shard N] [--no-tiles] [--strict] [--allow-outside-root]
      tokenised packed shards (safetensors) and index.json; the image tiles of image and video samples are
      stored (training needs them) unless --no-tiles (token-only shards, for inspection); --tiles stores
      them even for text-only data

Bad annotation lines are reported as FILE:LINE: message and skipped (and counted in the report); --strict
makes the first one fatal. A line is bad when its JSON or conversation is malformed, an image does not decode
completely (missing, unreadable, truncated), a video is missing, or a media path leaves the dataset's root
('../…', absolute paths), which --allow-outside-root permits.

Examples (the sample dataset in examples/data; any InternVL 2.5 checkpoint for --model):
  npx internvl data stats examples/data/meta.json --model ./InternVL2_5-1B
  npx internvl data filter examples/data/meta.json --out cleaned/
  npx internvl data pack examples/data/meta.json --model ./InternVL2_5-1B --out shards/ --max-len 4096
  npx internvl train --model ./InternVL2_5-1B --data shards/ --stage 1 --out run/ --steps 2
`;

const FILTER_OPTIONS = {
  out: { type: 'string' },
  'judge-url': { type: 'string' },
  'judge-model': { type: 'string' },
  'min-score': { type: 'string' },
  'min-repetition-score': { type: 'string' },
  concurrency: { type: 'string' },
  retries: { type: 'string' },
  'retry-delay-ms': { type: 'string' },
  strict: { type: 'boolean' },
  json: { type: 'boolean' },
  'allow-outside-root': { type: 'boolean' },
} as const;

async function runFilter(
  { values, positionals }: ParsedArgs<typeof FILTER_OPTIONS>,
  io: DataIo,
): Promise<number> {
  if (positionals.length !== 1) throw new UsageError('data filter takes exactly one META file');
  if (!values.out) throw new UsageError('data filter needs --out DIR');
  const meta = await loadMeta(positionals[0]);
  const judge = values['judge-url']
    ? createOpenAIJudge({
        url: values['judge-url'],
        model: values['judge-model'],
        apiKey: process.env.INTERNVL_JUDGE_API_KEY,
        retries: intOption(values.retries, 'retries', 3),
        retryDelayMs: intOption(values['retry-delay-ms'], 'retry-delay-ms', 500),
      })
    : undefined;
  const bar = progressLine(io, 'judging');
  const report = await filterMeta(meta, {
    outDir: values.out,
    judge,
    minScore: numberOption(values['min-score'], 'min-score', 7),
    minRepetitionScore: numberOption(values['min-repetition-score'], 'min-repetition-score', 3),
    concurrency: intOption(values.concurrency, 'concurrency', 4, 1),
    strict: values.strict,
    allowOutsideRoot: values['allow-outside-root'],
    onIssues: (issues) => reportIssues(io, issues),
    onProgress: bar,
  });
  if (values.json) {
    io.stdout.write(`${JSON.stringify({ datasets: report.datasets, outMeta: report.outMeta })}\n`);
  } else {
    for (const [name, stats] of Object.entries(report.datasets)) {
      const reasons = Object.entries(stats.reasons)
        .map(([rule, n]) => `${rule} ${n}`)
        .join(', ');
      io.stdout.write(
        `${name}: kept ${stats.kept} of ${stats.lines}, dropped ${stats.dropped}${reasons ? ` (${reasons})` : ''}\n`,
      );
    }
    io.stdout.write(
      `cleaned meta: ${report.outMeta}\nreport: ${path.join(path.dirname(report.outMeta), 'report.json')}\n`,
    );
  }
  return 0;
}

/** Each data command: its options and what it runs; usage errors and --help print the data usage. */
const SUBCOMMANDS = {
  stats: defineCommand({ name: 'data', usage: USAGE, options: STATS_OPTIONS, run: statsCommand }),
  filter: defineCommand({ name: 'data', usage: USAGE, options: FILTER_OPTIONS, run: runFilter }),
  pack: defineCommand({ name: 'data', usage: USAGE, options: PACK_OPTIONS, run: packCommand }),
};

/** `internvl data …`; returns the exit code. */
export async function dataCommand(
  args: string[],
  io: DataIo = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  const [command, ...rest] = args;
  if (command !== undefined && Object.hasOwn(SUBCOMMANDS, command)) {
    return SUBCOMMANDS[command as keyof typeof SUBCOMMANDS](rest, io);
  }
  if (command === undefined || ['help', '--help', '-h'].includes(command)) {
    io.stdout.write(USAGE);
    return command === undefined ? 2 : 0;
  }
  const guess = didYouMean(command, Object.keys(SUBCOMMANDS));
  const message = `unknown data command '${command}'${guess ? `; did you mean '${guess}'?` : ''}`;
  return commandFailure('data', USAGE, new UsageError(message), io);
}
