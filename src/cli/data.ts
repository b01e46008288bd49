import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadModelConfig, numImageTokens } from '../config/model-config.js';
import { filterMeta } from '../data/filter.js';
import { createOpenAIJudge } from '../data/judge.js';
import {
  type AnnotationSample,
  type DataIssue,
  type DatasetSpec,
  formatIssue,
  loadMeta,
  readDataset,
} from '../data/meta.js';
import { interleaveDatasets, type Pack, Packer } from '../data/pack.js';
import { type PrepareOptions, prepareSample } from '../data/prepare.js';
import { applyRepeatTime, createRng, shuffled } from '../data/sampling.js';
import {
  SHARD_FORMAT,
  type ShardItem,
  type ShardSummary,
  toShardItem,
  writePackShard,
} from '../data/shards.js';
import { InternVLError } from '../errors.js';
import { createTaskProgress } from '../io/progress.js';
import { loadTokenizer } from '../io/tokenizer-files.js';
import type { LossReduction } from '../text/training.js';

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
       [--max-num-frame 32] [--packs-per-shard N] [--tiles] [--strict]
      tokenised packed shards (safetensors) and index.json

Bad annotation lines are reported as FILE:LINE: message and skipped; --strict makes the first one fatal.
`;

class UsageError extends Error {}

/** Where the command writes; progress bars are drawn only when `stderr.isTTY`. */
export interface DataIo {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown; isTTY?: boolean };
}

function intOption(value: string | undefined, name: string, fallback: number, min = 0): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min)
    throw new UsageError(`--${name} must be an integer ≥ ${min}, got '${value}'`);
  return n;
}

function numberOption(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got '${value}'`);
  return n;
}

/** A one-line counter on stderr, drawn only when stderr is a terminal; the line ends when done. */
function progressLine(io: DataIo, label: string): (done: number, total: number) => void {
  const draw = createTaskProgress(io.stderr);
  return (done, total) => draw({ label, done, total });
}

function reportIssues(io: DataIo, issues: readonly DataIssue[]): void {
  for (const issue of issues) io.stderr.write(`${formatIssue(issue)}\n`);
}

async function loadPrepareOptions(
  modelDir: string,
  maxDynamicPatch: string | undefined,
): Promise<PrepareOptions> {
  const [config, tokenizer] = await Promise.all([loadModelConfig(modelDir), loadTokenizer(modelDir)]);
  return {
    tokenizer,
    numImageToken: numImageTokens(config),
    maxDynamicPatch: intOption(maxDynamicPatch, 'max-dynamic-patch', config.max_dynamic_patch, 1),
    minDynamicPatch: config.min_dynamic_patch,
    useThumbnail: config.use_thumbnail,
    tileSize: config.force_image_size ?? config.vision_config.image_size,
  };
}

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
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      json: { type: 'boolean' },
      model: { type: 'string' },
      seed: { type: 'string' },
      strict: { type: 'boolean' },
      'max-dynamic-patch': { type: 'string' },
    },
  });
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
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
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
    },
  });
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

const REDUCTIONS: readonly LossReduction[] = ['token', 'sample', 'square'];

async function packCommand(args: string[], io: DataIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      model: { type: 'string' },
      out: { type: 'string' },
      'max-len': { type: 'string' },
      'loss-reduction': { type: 'string' },
      seed: { type: 'string' },
      'max-tiles': { type: 'string' },
      'max-buffers': { type: 'string' },
      'max-dynamic-patch': { type: 'string' },
      'min-num-frame': { type: 'string' },
      'max-num-frame': { type: 'string' },
      'packs-per-shard': { type: 'string' },
      tiles: { type: 'boolean' },
      strict: { type: 'boolean' },
    },
  });
  if (positionals.length !== 1) throw new UsageError('data pack takes exactly one META file');
  if (!values.model) throw new UsageError('data pack needs --model DIR');
  if (!values.out) throw new UsageError('data pack needs --out DIR');
  if (values['max-len'] === undefined) throw new UsageError('data pack needs --max-len N');
  const maxLen = intOption(values['max-len'], 'max-len', 0, 1);
  // The 2.5 stage scripts train with square averaging; the official flag's default is token.
  const reduction = (values['loss-reduction'] ?? 'square') as LossReduction;
  if (!REDUCTIONS.includes(reduction)) {
    throw new UsageError(`--loss-reduction must be token, sample or square, got '${reduction}'`);
  }
  const seed = intOption(values.seed, 'seed', 0);
  const packsPerShard = intOption(values['packs-per-shard'], 'packs-per-shard', values.tiles ? 8 : 256, 1);
  const meta = await loadMeta(positionals[0]);
  const prepare = await loadPrepareOptions(values.model, values['max-dynamic-patch']);
  prepare.minNumFrame = intOption(values['min-num-frame'], 'min-num-frame', 8, 1);
  prepare.maxNumFrame = intOption(values['max-num-frame'], 'max-num-frame', 32, prepare.minNumFrame);
  const packer = new Packer<ShardItem>({
    maxTokens: maxLen,
    maxTiles: intOption(values['max-tiles'], 'max-tiles', 48, 1),
    maxBuffers: intOption(values['max-buffers'], 'max-buffers', 20, 1),
  });
  const outDir = path.resolve(values.out);
  await mkdir(outDir, { recursive: true });

  const dropped: DataIssue[] = [];
  const queues: AnnotationSample[][] = [];
  for (const dataset of meta.datasets) {
    const { samples, issues } = await readDataset(dataset, { strict: values.strict });
    dropped.push(...issues);
    // Per-dataset shuffle seeded by the dataset index, as the packed loader does.
    queues.push(shuffled(applyRepeatTime(samples, dataset.repeatTime), createRng(seed, dataset.index)));
  }
  reportIssues(io, dropped);

  const prepareRng = createRng(seed, meta.datasets.length);
  const tileRng = createRng(seed, meta.datasets.length + 1);
  const shards: ShardSummary[] = [];
  const pending: Pack<ShardItem>[] = [];
  const writeShards = async (all: boolean) => {
    while (pending.length >= packsPerShard || (all && pending.length > 0)) {
      const packs = pending.splice(0, packsPerShard);
      const file = path.join(outDir, `shard-${String(shards.length).padStart(5, '0')}.safetensors`);
      shards.push(
        await writePackShard(file, packs, {
          reduction,
          tiles: values.tiles ? { rng: tileRng, prepare } : undefined,
        }),
      );
    }
  };
  const drop = (sample: AnnotationSample, message: string) => {
    const issue = { dataset: sample.dataset, file: sample.file, line: sample.line, message };
    if (values.strict) throw new InternVLError('BAD_INPUT', formatIssue(issue));
    io.stderr.write(`${formatIssue(issue)}\n`);
    dropped.push(issue);
  };

  const totalSamples = queues.reduce((sum, q) => sum + q.length, 0);
  const cursors = queues.map(() => 0);
  const bar = progressLine(io, 'packing');
  let processed = 0;
  try {
    for (const d of interleaveDatasets(
      queues.map((q) => q.length),
      createRng(seed, meta.datasets.length + 2),
    )) {
      const sample = queues[d][cursors[d]++];
      const dataset: DatasetSpec = meta.datasets[d];
      bar(++processed, totalSamples);
      let item: ShardItem;
      try {
        item = toShardItem(await prepareSample(sample, dataset, prepareRng, prepare), dataset);
      } catch (err) {
        if (!(err instanceof InternVLError)) throw err;
        drop(sample, err.message);
        continue;
      }
      const refusal = packer.refusal(item);
      if (refusal) {
        drop(sample, refusal);
        continue;
      }
      pending.push(...packer.add(item));
      await writeShards(false);
    }
    pending.push(...packer.flush());
    await writeShards(true);
  } finally {
  }

  const index = {
    format: SHARD_FORMAT,
    meta: meta.file,
    max_len: maxLen,
    max_tiles: packer.maxTiles,
    loss_reduction: reduction,
    seed,
    tiles: Boolean(values.tiles),
    shards: shards.map((s) => ({ ...s, file: path.basename(s.file) })),
    dropped: dropped.map((issue) => ({
      dataset: issue.dataset,
      file: issue.file,
      line: issue.line,
      reason: issue.message,
    })),
  };
  await writeFile(path.join(outDir, 'index.json'), `${JSON.stringify(index, null, 2)}\n`);
  const packs = shards.reduce((sum, s) => sum + s.packs, 0);
  const samples = shards.reduce((sum, s) => sum + s.samples, 0);
  const tokens = shards.reduce((sum, s) => sum + s.tokens, 0);
  io.stdout.write(
    `${samples} samples in ${packs} packs (${tokens} tokens) across ${shards.length} shards in ${outDir}; ` +
      `${dropped.length} dropped\n`,
  );
  return 0;
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
        return await packCommand(rest, io);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        io.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown data command '${command}'`);
    }
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
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
