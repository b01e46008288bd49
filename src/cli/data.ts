import path from 'node:path';
import { filterMeta } from '../data/filter.js';
import { createOpenAIJudge } from '../data/judge.js';
import { loadMeta, readDataset } from '../data/meta.js';
import { prepareSample } from '../data/prepare.js';
import { applyRepeatTime, createRng } from '../data/sampling.js';
import { InternVLError } from '../errors.js';
import { didYouMean, parseCommandArgs, UsageError } from './args.js';
import {
  type DataIo,
  intOption,
  loadPrepareOptions,
  numberOption,
  progressLine,
  reportIssues,
} from './data-helpers.js';
import { packCommand } from './data-pack.js';

export type { DataIo } from './data-helpers.js';

const USAGE = `Usage: internvl data <command> META [options]

Commands:
  stats META [--json] [--model DIR] [--seed N] [--strict]
      per dataset: valid and invalid lines, samples after repeat_time; tokens and tiles with --model
  filter META --out DIR [--judge-url URL] [--judge-model NAME] [--min-score 7]
         [--min-repetition-score 3] [--concurrency 4] [--retries 3] [--strict] [--json]
      rules, n-gram repetition and (with --judge-url) LLM scoring; resumable; writes cleaned JSONL + meta
      and report.json. The judge's API key, if it needs one, is read from INTERNVL_JUDGE_API_KEY.
  pack META --model DIR --out DIR --max-len N [--loss-reduction token|sample|square] [--seed N]
       [--max-tiles 48] [--max-buffers 20] [--max-dynamic-patch N] [--min-num-frame 8]
       [--max-num-frame 32] [--packs-per-shard N] [--no-tiles] [--strict]
      tokenised packed shards (safetensors) and index.json; the image tiles of image and video samples are
      stored (training needs them) unless --no-tiles (token-only shards, for inspection); --tiles stores
      them even for text-only data

Bad annotation lines are reported as FILE:LINE: message and skipped; --strict makes the first one fatal.

Examples (the sample dataset in examples/data; any InternVL 2.5 checkpoint for --model):
  npx internvl data stats examples/data/meta.json --model ./InternVL2_5-1B
  npx internvl data filter examples/data/meta.json --out cleaned/
  npx internvl data pack examples/data/meta.json --model ./InternVL2_5-1B --out shards/ --max-len 4096
  npx internvl train --model ./InternVL2_5-1B --data shards/ --stage 1 --out run/ --steps 2
`;

/** How many times each sample index occurs after repeat_time. */
function repeatCounts(length: number, repeatTime: number): number[] {
  const counts = new Array<number>(length).fill(0);
  for (const i of applyRepeatTime(
    Array.from({ length }, (_, k) => k),
    repeatTime,
  ))
    counts[i]++;
  return counts;
}

interface DatasetStats {
  valid: number;
  invalid: number;
  samples: number;
  tokens?: number;
  tiles?: number;
}

async function statsCommand(args: string[], io: DataIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(args, {
    json: { type: 'boolean' },
    model: { type: 'string' },
    seed: { type: 'string' },
    strict: { type: 'boolean' },
    'max-dynamic-patch': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    io.stdout.write(USAGE);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('data stats takes exactly one META file');
  const meta = await loadMeta(positionals[0]);
  const seed = intOption(values.seed, 'seed', 0);
  const prepare = values.model
    ? await loadPrepareOptions(values.model, values['max-dynamic-patch'])
    : undefined;
  const datasets: Record<string, DatasetStats> = {};
  const total: DatasetStats = {
    valid: 0,
    invalid: 0,
    samples: 0,
    ...(prepare ? { tokens: 0, tiles: 0 } : {}),
  };
  const bar = progressLine(io, 'stats');
  for (const dataset of meta.datasets) {
    const { samples, issues } = await readDataset(dataset, { strict: values.strict });
    reportIssues(io, issues);
    const counts = repeatCounts(samples.length, dataset.repeatTime);
    const stats: DatasetStats = {
      valid: samples.length,
      invalid: issues.length,
      samples: counts.reduce((a, b) => a + b, 0),
    };
    if (prepare) {
      const rng = createRng(seed, dataset.index);
      let tokens = 0;
      let tiles = 0;
      for (const [i, sample] of samples.entries()) {
        bar(i + 1, samples.length);
        if (counts[i] === 0) continue;
        const prepared = await prepareSample(sample, dataset, rng, prepare);
        tokens += prepared.inputIds.length * counts[i];
        tiles += prepared.numPatches.reduce((a, b) => a + b, 0) * counts[i];
      }
      stats.tokens = tokens;
      stats.tiles = tiles;
      total.tokens = (total.tokens ?? 0) + tokens;
      total.tiles = (total.tiles ?? 0) + tiles;
    }
    total.valid += stats.valid;
    total.invalid += stats.invalid;
    total.samples += stats.samples;
    datasets[dataset.name] = stats;
  }
  if (values.json) {
    io.stdout.write(`${JSON.stringify({ datasets, total })}\n`);
  } else {
    const columns = ['valid', 'invalid', 'samples', ...(prepare ? ['tokens', 'tiles'] : [])] as const;
    const rows = [...Object.entries(datasets), ['TOTAL', total] as const];
    const nameWidth = Math.max(7, ...rows.map(([name]) => name.length));
    io.stdout.write(`${'dataset'.padEnd(nameWidth)} ${columns.map((c) => c.padStart(10)).join(' ')}\n`);
    for (const [name, stats] of rows) {
      const cells = columns.map((c) => String(stats[c as keyof DatasetStats] ?? '').padStart(10));
      io.stdout.write(`${name.padEnd(nameWidth)} ${cells.join(' ')}\n`);
    }
  }
  return 0;
}

async function filterCommand(args: string[], io: DataIo): Promise<number> {
  const { values, positionals } = parseCommandArgs(args, {
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
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    io.stdout.write(USAGE);
    return 0;
  }
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
  let report: Awaited<ReturnType<typeof filterMeta>>;
  try {
    report = await filterMeta(meta, {
      outDir: values.out,
      judge,
      minScore: numberOption(values['min-score'], 'min-score', 7),
      minRepetitionScore: numberOption(values['min-repetition-score'], 'min-repetition-score', 3),
      concurrency: intOption(values.concurrency, 'concurrency', 4, 1),
      strict: values.strict,
      onProgress: bar,
    });
  } finally {
  }
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

function unknownCommand(command: string): string {
  const guess = didYouMean(command, ['stats', 'filter', 'pack']);
  return `unknown data command '${command}'${guess ? `; did you mean '${guess}'?` : ''}`;
}

/** `internvl data …`; returns the exit code. */
export async function dataCommand(
  args: string[],
  io: DataIo = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case 'stats':
        return await statsCommand(rest, io);
      case 'filter':
        return await filterCommand(rest, io);
      case 'pack':
        return await packCommand(rest, io, USAGE);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        io.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(unknownCommand(command));
    }
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`internvl data: ${(err as Error).message}\n${USAGE}`);
      return 2;
    }
    if (err instanceof InternVLError) {
      io.stderr.write(`internvl data: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}
