/** `internvl data pack`: tokenised packed shards (safetensors) and index.json. */
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  type AnnotationSample,
  type DataIssue,
  type DatasetSpec,
  loadMeta,
  readDataset,
} from '../data/meta.js';
import { interleaveDatasets, type Pack, Packer } from '../data/pack.js';
import { prepareSample } from '../data/prepare.js';
import { applyRepeatTime, createRng, shuffled } from '../data/sampling.js';
import {
  SHARD_FORMAT,
  type ShardItem,
  type ShardSummary,
  toShardItem,
  writePackShard,
} from '../data/shards.js';
import { InternVLError } from '../errors.js';
import type { LossReduction } from '../text/training.js';
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

const REDUCTIONS: readonly LossReduction[] = ['token', 'sample', 'square'];

/** The options of `internvl data pack`. */
export const PACK_OPTIONS = {
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
  'no-tiles': { type: 'boolean' },
  strict: { type: 'boolean' },
  'allow-outside-root': { type: 'boolean' },
} as const;

/** `internvl data pack` (data.ts declares the command). */
export async function packCommand(
  { values, positionals }: ParsedArgs<typeof PACK_OPTIONS>,
  io: DataIo,
): Promise<number> {
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
  if (values.tiles && values['no-tiles']) throw new UsageError('give --tiles or --no-tiles, not both');
  const seed = intOption(values.seed, 'seed', 0);
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
    const { samples, issues } = await readDataset(dataset, {
      strict: values.strict,
      allowOutsideRoot: values['allow-outside-root'],
    });
    dropped.push(...issues);
    // Per-dataset shuffle seeded by the dataset index, as the packed loader does.
    queues.push(shuffled(applyRepeatTime(samples, dataset.repeatTime), createRng(seed, dataset.index)));
  }
  reportIssues(io, dropped);
  const drop = issueRecorder(io, values.strict, dropped);
  // Training needs the tiles of image and video samples: stored unless --no-tiles (token-only shards).
  const hasMedia = queues.some((q) => q.some((s) => s.images.length > 0 || s.video !== undefined));
  const withTiles = values['no-tiles'] ? false : Boolean(values.tiles) || hasMedia;
  const packsPerShard = intOption(values['packs-per-shard'], 'packs-per-shard', withTiles ? 8 : 256, 1);

  const prepareRng = createRng(seed, meta.datasets.length);
  const tileRng = createRng(seed, meta.datasets.length + 1);
  const shards: ShardSummary[] = [];
  const pending: Pack<ShardItem>[] = [];
  const writeShards = async (all: boolean) => {
    while (pending.length >= packsPerShard || (all && pending.length > 0)) {
      const packs = pending.splice(0, packsPerShard);
      const file = path.join(outDir, `shard-${String(shards.length).padStart(5, '0')}.safetensors`);
      const summary = await writePackShard(file, packs, {
        reduction,
        tiles: withTiles ? { rng: tileRng, prepare } : undefined,
        onSkip: (item, message) => drop(item.prepared.sample, message),
      });
      if (summary) shards.push(summary);
    }
  };

  const totalSamples = queues.reduce((sum, q) => sum + q.length, 0);
  const cursors = queues.map(() => 0);
  const bar = progressLine(io, 'packing');
  let processed = 0;
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

  const index = {
    format: SHARD_FORMAT,
    meta: meta.file,
    max_len: maxLen,
    max_tiles: packer.maxTiles,
    loss_reduction: reduction,
    seed,
    tiles: withTiles,
    shards: shards.map((s) => ({ ...s, file: path.basename(s.file) })),
    dropped: dropped.map((issue) => ({
      dataset: issue.dataset,
      file: issue.file,
      line: issue.line,
      reason: issue.message,
    })),
  };
  const indexFile = path.join(outDir, 'index.json');
  await writeFile(`${indexFile}.tmp-${process.pid}`, `${JSON.stringify(index, null, 2)}\n`);
  await rename(`${indexFile}.tmp-${process.pid}`, indexFile);
  const packs = shards.reduce((sum, s) => sum + s.packs, 0);
  const samples = shards.reduce((sum, s) => sum + s.samples, 0);
  const tokens = shards.reduce((sum, s) => sum + s.tokens, 0);
  io.stdout.write(
    `${samples} samples in ${packs} packs (${tokens} tokens) across ${shards.length} shards in ${outDir}; ` +
      `${dropped.length} dropped\n`,
  );
  if (hasMedia && !withTiles) {
    io.stderr.write('note: --no-tiles: these shards hold no image tiles, so `internvl train` refuses them\n');
  }
  return 0;
}
