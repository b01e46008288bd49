/** `internvl data stats`: valid and invalid lines, samples after repeat_time, tokens and tiles with --model. */
import { type DataIssue, loadMeta, readDataset } from '../data/meta.js';
import { prepareSample } from '../data/prepare.js';
import { applyRepeatTime, createRng } from '../data/sampling.js';
import { InternVLError } from '../errors.js';
import type { ParsedArgs } from './command.js';
import {
  type DataIo,
  intOption,
  issueRecorder,
  loadPrepareOptions,
  progressLine,
  reportIssues,
  UsageError,
} from './data-common.js';

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

/** The options of `internvl data stats`. */
export const STATS_OPTIONS = {
  json: { type: 'boolean' },
  model: { type: 'string' },
  seed: { type: 'string' },
  strict: { type: 'boolean' },
  'allow-outside-root': { type: 'boolean' },
  'max-dynamic-patch': { type: 'string' },
} as const;

/** `internvl data stats` (data.ts declares the command). */
export async function statsCommand(
  { values, positionals }: ParsedArgs<typeof STATS_OPTIONS>,
  io: DataIo,
): Promise<number> {
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
    const read = await readDataset(dataset, {
      strict: values.strict,
      allowOutsideRoot: values['allow-outside-root'],
    });
    reportIssues(io, read.issues);
    const issues: DataIssue[] = [...read.issues];
    const { samples } = read;
    const counts = repeatCounts(samples.length, dataset.repeatTime);
    // A sample that fails to prepare is a bad line too: reported, counted invalid and dropped, as pack drops it.
    const failed = new Set<number>();
    let tokens = 0;
    let tiles = 0;
    if (prepare) {
      const recordIssue = issueRecorder(io, values.strict, issues);
      const rng = createRng(seed, dataset.index);
      for (const [i, sample] of samples.entries()) {
        bar(i + 1, samples.length);
        if (counts[i] === 0) continue;
        try {
          const prepared = await prepareSample(sample, dataset, rng, prepare);
          tokens += prepared.inputIds.length * counts[i];
          tiles += prepared.numPatches.reduce((a, b) => a + b, 0) * counts[i];
        } catch (err) {
          if (!(err instanceof InternVLError)) throw err;
          recordIssue(sample, err.message);
          failed.add(i);
        }
      }
    }
    const stats: DatasetStats = {
      valid: samples.length - failed.size,
      invalid: issues.length,
      samples: counts.reduce((sum, n, i) => (failed.has(i) ? sum : sum + n), 0),
      ...(prepare ? { tokens, tiles } : {}),
    };
    if (prepare) {
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
