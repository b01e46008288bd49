/**
 * `internvl train`: trains a checkpoint on packed shards with the Trainer, one optimizer step per
 * `--grad-accum` packs in a seeded per-epoch order, a progress line (loss, tokens/s, ETA) on stderr,
 * a JSON-lines log in the output folder, checkpoints every `--save-every` steps and at the end, and
 * `--resume` from the last checkpoint (weights, optimiser state, step and data position).
 *
 * Checkpoints go to OUT/checkpoint-<step>: written into a temporary folder, then renamed, so a kill
 * during a save leaves no checkpoint folder that `--resume` would pick up. The final model's files
 * are also published at the top of OUT.
 */
import {
  appendFile,
  copyFile,
  link,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { mulberry32 } from '../train/random.js';
import { readShardFolder } from '../train/shard-batches.js';
import { Trainer, type TrainerOptions, type TrainingStage } from '../train/trainer.js';
import { integerOption, numberOption, UsageError } from './args.js';
import { type CommandIo, defineCommand, type ParsedArgs } from './command.js';

const USAGE = `Usage: internvl train --model DIR --data SHARDS --stage 1|1.5|2 --out DIR [options]

  --lr X                 peak learning rate (default: stage 1 2e-4, stage 1.5 1e-5, stage 2 4e-5)
  --steps N | --epochs N optimizer steps, or passes over the packs (default 1 epoch)
  --grad-accum N         packs per optimizer step (default 1)
  --seed N               data order seed (default 0)
  --weight-decay X       AdamW decoupled weight decay (default 0.05), not on biases and norm weights
  --decay-all            decay every parameter (plain torch AdamW) instead
  --warmup-steps N       linear warm-up (default: 3% of the steps, at most 100)
  --schedule S           cosine | constant (default cosine)
  --max-grad-norm X      global-norm clipping (default 1.0)
  --save-every N         also save OUT/checkpoint-<step> every N steps (default: only at the end)
  --save-total-limit N   keep the newest N checkpoints (default 3)
  --stop-after N         stop after N steps of this run (resume later with --resume)
  --freeze-llm, --freeze-backbone, --freeze-mlp, --unfreeze-vit-layers K, --unfreeze-lm-head
                         override the stage's trainable set (--unfreeze-vit-layers=-K: the last K ViT layers)
  --use-llm-lora R       LoRA of rank R (alpha 2R) on the LLM's Linear layers; the LLM base is frozen
  --use-backbone-lora R  LoRA of rank R (alpha 2R) on InternViT's attn.qkv/proj and mlp.fc1/fc2; the ViT base is frozen
  --lora-dropout X       dropout on the LoRA inputs (default 0; the official scripts use 0.05)
  --drop-path-rate X     ViT drop-path rate (default: the config's vision_config.drop_path_rate)
  --resume               continue from the newest intact checkpoint in --out (a damaged newer one is
                         reported and renamed checkpoint-<step>.damaged)
Writes OUT/model.safetensors (bf16, LoRA merged) with the source's config and tokenizer files,
OUT/checkpoint-<step>/ (the same plus optimiser state), and OUT/train_log.jsonl (one JSON object per step).
Image samples need their tiles in the shards: \`internvl data pack\` stores them unless --no-tiles.

Examples:
  npx internvl data pack examples/data/meta.json --model ./InternVL2_5-1B --out shards/ --max-len 4096
  npx internvl train --model ./InternVL2_5-1B --data shards/ --stage 1 --out run/ --steps 2
  npx internvl train --model ./InternVL2_5-1B --data shards/ --stage 2 --out run/ --use-llm-lora 16 --epochs 1
  npx internvl train --model ./InternVL2_5-1B --data shards/ --stage 2 --out run/ --resume   # after a stop
`;

export type TrainIo = CommandIo;

const DEFAULT_LR: Record<string, number> = { '1': 2e-4, '1.5': 1e-5, '2': 4e-5 };

/** Pack order of one epoch (Fisher–Yates with a seed derived from the run seed and the epoch). */
export function epochOrder(count: number, seed: number, epoch: number): number[] {
  const next = mulberry32(seed * 1000003 + epoch * 7919 + 1);
  const order = Array.from({ length: count }, (_, i) => i);
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

const CHECKPOINT = /^checkpoint-(\d+)$/;
const STATE_FILE = 'trainer_state.json';
const TRAINER_ONLY_FILES = new Set([STATE_FILE, 'optimizer_state.safetensors']);

/** Complete checkpoints in `out` (a checkpoint-<step> folder holding its state file), newest first. */
export async function listCheckpoints(out: string): Promise<{ step: number; dir: string }[]> {
  const entries = await readdir(out, { withFileTypes: true }).catch(() => []);
  const found: { step: number; dir: string }[] = [];
  for (const e of entries) {
    const m = CHECKPOINT.exec(e.name);
    if (!e.isDirectory() || !m) continue;
    const dir = path.join(out, e.name);
    const complete = await readFile(path.join(dir, STATE_FILE), 'utf8').then(
      () => true,
      () => false,
    );
    if (complete) found.push({ step: Number(m[1]), dir });
  }
  return found.sort((a, b) => b.step - a.step);
}

/** Saves OUT/checkpoint-<step> atomically (temporary folder, then rename) and prunes old ones. */
async function saveCheckpoint(
  trainer: Trainer,
  out: string,
  extra: Record<string, unknown>,
  keep: number,
): Promise<string> {
  const step = trainer.stepCount;
  const final = path.join(out, `checkpoint-${step}`);
  const temp = path.join(out, `.checkpoint-${step}.tmp-${process.pid}`);
  await rm(temp, { recursive: true, force: true });
  await trainer.save(temp, extra);
  await rm(final, { recursive: true, force: true });
  await rename(temp, final);
  for (const old of (await listCheckpoints(out)).slice(keep))
    await rm(old.dir, { recursive: true, force: true });
  return final;
}

/** Publishes a checkpoint's model files at the top of `out` (hard links where possible). */
async function publishModel(checkpoint: string, out: string): Promise<void> {
  for (const name of await readdir(checkpoint)) {
    if (TRAINER_ONLY_FILES.has(name)) continue;
    const temp = path.join(out, `.${name}.tmp-${process.pid}`);
    await rm(temp, { force: true });
    await link(path.join(checkpoint, name), temp).catch(() => copyFile(path.join(checkpoint, name), temp));
    await rename(temp, path.join(out, name));
  }
}

/** Removes temporary folders and files a killed run left behind. */
async function removeLeftovers(out: string): Promise<void> {
  for (const name of await readdir(out).catch(() => [] as string[])) {
    if (name.startsWith('.') && name.includes('.tmp-'))
      await rm(path.join(out, name), { recursive: true, force: true });
  }
}

/** Errors that make one checkpoint unusable (damaged or missing files), as opposed to a wrong command. */
const DAMAGED_CHECKPOINT_CODES = new Set(['BAD_CHECKPOINT', 'NOT_FOUND', 'BAD_CONFIG', 'BAD_TOKENIZER']);

/**
 * `--resume`: the newest checkpoint that loads, trying older ones when a newer one is damaged (its
 * files differ from their saved checksums, or cannot be read). Each skipped checkpoint is reported with
 * its reason and renamed to checkpoint-<step>.damaged, out of the way of later resumes and pruning but
 * kept for inspection. Undefined when `out` holds no checkpoint; an error when none of them loads.
 */
async function resumeNewestIntact(
  out: string,
  load: (dir: string) => Promise<Trainer>,
  io: TrainIo,
): Promise<{ checkpoint: { step: number; dir: string }; trainer: Trainer } | undefined> {
  const candidates = await listCheckpoints(out);
  const skipped: { dir: string; reason: string }[] = [];
  for (const checkpoint of candidates) {
    let trainer: Trainer;
    try {
      trainer = await load(checkpoint.dir);
    } catch (err) {
      if (!(err instanceof InternVLError) || !DAMAGED_CHECKPOINT_CODES.has(err.code)) throw err;
      io.stderr.write(`internvl train: not resuming from ${checkpoint.dir}: ${err.message}\n`);
      skipped.push({ dir: checkpoint.dir, reason: err.message });
      continue;
    }
    for (const { dir } of skipped) {
      const taken = await stat(`${dir}.damaged`).then(
        () => true,
        () => false,
      );
      const aside = taken ? `${dir}.damaged-${Date.now()}` : `${dir}.damaged`;
      await rename(dir, aside);
      io.stderr.write(`internvl train: moved the damaged ${path.basename(dir)} to ${aside}\n`);
    }
    const newer = skipped.map(({ dir }) => path.basename(dir)).join(', ');
    io.stderr.write(
      `internvl train: resuming from ${checkpoint.dir} (step ${checkpoint.step})` +
        `${newer ? `, the newest intact checkpoint (${newer} damaged)` : ''}\n`,
    );
    return { checkpoint, trainer };
  }
  if (candidates.length === 0) return undefined;
  throw new InternVLError(
    'BAD_CHECKPOINT',
    `--resume: no checkpoint in ${out} can be resumed from (${skipped.map((s) => s.reason).join('; ')}); ` +
      'they are left as they are',
  );
}

const TRAIN_OPTIONS = {
  model: { type: 'string' },
  data: { type: 'string' },
  stage: { type: 'string' },
  out: { type: 'string' },
  lr: { type: 'string' },
  steps: { type: 'string' },
  epochs: { type: 'string' },
  'grad-accum': { type: 'string' },
  seed: { type: 'string' },
  'weight-decay': { type: 'string' },
  'warmup-steps': { type: 'string' },
  schedule: { type: 'string' },
  'max-grad-norm': { type: 'string' },
  'save-every': { type: 'string' },
  'stop-after': { type: 'string' },
  'freeze-llm': { type: 'boolean' },
  'freeze-backbone': { type: 'boolean' },
  'freeze-mlp': { type: 'boolean' },
  'unfreeze-vit-layers': { type: 'string' },
  'unfreeze-lm-head': { type: 'boolean' },
  'use-llm-lora': { type: 'string' },
  'use-backbone-lora': { type: 'string' },
  'lora-dropout': { type: 'string' },
  'drop-path-rate': { type: 'string' },
  'decay-all': { type: 'boolean' },
  'save-total-limit': { type: 'string' },
  resume: { type: 'boolean' },
} as const;

export const trainCommand = defineCommand({
  name: 'train',
  usage: USAGE,
  options: TRAIN_OPTIONS,
  run,
});

async function run({ values }: ParsedArgs<typeof TRAIN_OPTIONS>, io: CommandIo): Promise<number> {
  if (!values.model) throw new UsageError('needs --model DIR');
  if (!values.data) throw new UsageError('needs --data SHARDS');
  if (!values.out) throw new UsageError('needs --out DIR');
  const stageText = values.stage ?? '';
  if (!['1', '1.5', '2'].includes(stageText))
    throw new UsageError(`--stage must be 1, 1.5 or 2, got '${stageText}'`);
  const stage = Number(stageText) as TrainingStage;
  if (values.steps !== undefined && values.epochs !== undefined)
    throw new UsageError('give --steps or --epochs, not both');
  const schedule = values.schedule ?? 'cosine';
  if (schedule !== 'cosine' && schedule !== 'constant')
    throw new UsageError(`--schedule must be cosine or constant, got '${schedule}'`);
  const accum = integerOption(values['grad-accum'], 'grad-accum', 1) ?? 1;
  const seed = integerOption(values.seed, 'seed', 0) ?? 0;
  const saveEvery = integerOption(values['save-every'], 'save-every', 1);
  const stopAfter = integerOption(values['stop-after'], 'stop-after', 1);
  const keep = integerOption(values['save-total-limit'], 'save-total-limit', 1) ?? 3;
  const loraRank = integerOption(values['use-llm-lora'], 'use-llm-lora', 1);
  const vitLoraRank = integerOption(values['use-backbone-lora'], 'use-backbone-lora', 1);
  const loraDropout = numberOption(values['lora-dropout'], 'lora-dropout');
  if (loraDropout !== undefined && loraRank === undefined && vitLoraRank === undefined)
    throw new UsageError('--lora-dropout needs --use-llm-lora R or --use-backbone-lora R');
  if (loraDropout !== undefined && !(loraDropout >= 0 && loraDropout < 1))
    throw new UsageError(`--lora-dropout must be in [0, 1), got '${values['lora-dropout']}'`);
  const dropPathRate = numberOption(values['drop-path-rate'], 'drop-path-rate');
  if (dropPathRate !== undefined && !(dropPathRate >= 0 && dropPathRate < 1))
    throw new UsageError(`--drop-path-rate must be in [0, 1), got '${values['drop-path-rate']}'`);
  const out = path.resolve(values.out);

  const batches = await readShardFolder(path.resolve(values.data));
  const stepsPerEpoch = Math.max(1, Math.floor(batches.length / accum));
  const totalSteps =
    integerOption(values.steps, 'steps', 1) ??
    (integerOption(values.epochs, 'epochs', 1) ?? 1) * stepsPerEpoch;
  const warmupSteps =
    integerOption(values['warmup-steps'], 'warmup-steps', 0) ?? Math.min(100, Math.ceil(0.03 * totalSteps));
  const logFile = path.join(out, 'train_log.jsonl');
  const trainerOptions = (model: string, resume: boolean): TrainerOptions => ({
    model,
    resume,
    stage,
    seed,
    optimizer: {
      lr: numberOption(values.lr, 'lr') ?? DEFAULT_LR[stageText],
      weightDecay: numberOption(values['weight-decay'], 'weight-decay') ?? 0.05,
      schedule,
      warmupSteps,
      totalSteps,
      maxGradNorm: numberOption(values['max-grad-norm'], 'max-grad-norm') ?? 1.0,
      decayNormsAndBiases: Boolean(values['decay-all']),
    },
    llmLora: loraRank !== undefined ? { rank: loraRank, dropout: loraDropout ?? 0 } : undefined,
    vitLora: vitLoraRank !== undefined ? { rank: vitLoraRank, dropout: loraDropout ?? 0 } : undefined,
    dropPathRate,
    freezeLlm: values['freeze-llm'],
    freezeBackbone: values['freeze-backbone'],
    freezeMlp: values['freeze-mlp'],
    unfreezeVitLayers: integerOption(values['unfreeze-vit-layers'], 'unfreeze-vit-layers', -1_000_000),
    unfreezeLmHead: values['unfreeze-lm-head'],
  });
  const resumed = values.resume
    ? await resumeNewestIntact(out, (dir) => Trainer.create(trainerOptions(dir, true)), io)
    : undefined;
  const latest = resumed?.checkpoint;
  const trainer =
    resumed?.trainer ?? (await Trainer.create(trainerOptions(path.resolve(values.model), false)));
  try {
    await mkdir(out, { recursive: true });
    await removeLeftovers(out);
    // The data position: packs consumed so far, in the seeded order of each epoch.
    let position = trainer.stepCount * accum;
    if (latest) {
      const saved = trainer.resumedExtra ?? {};
      if (saved.seed !== undefined && (saved.seed !== seed || saved.packs !== batches.length)) {
        throw new InternVLError(
          'BAD_INPUT',
          `${latest.dir}: saved with --seed ${saved.seed} over ${saved.packs} packs; this run has --seed ${seed} over ${batches.length} packs (the data order would differ)`,
        );
      }
      if (Number.isInteger(saved.data_position)) position = saved.data_position as number;
      // Steps after the checkpoint are run again; their log lines (and a line cut by a kill) go.
      const kept = (await readFile(logFile, 'utf8').catch(() => '')).split('\n').filter((l) => {
        try {
          return (JSON.parse(l) as { step: number }).step <= trainer.stepCount;
        } catch {
          return false;
        }
      });
      await writeFile(logFile, kept.map((l) => `${l}\n`).join(''));
    } else {
      // A fresh run replaces an earlier run's log and checkpoints in the same folder; the log is
      // created by the first step, so a run that fails before it leaves no empty log.
      await rm(logFile, { force: true });
      for (const old of await listCheckpoints(out)) await rm(old.dir, { recursive: true, force: true });
    }
    let saved = latest?.dir;
    const extra = () => ({ data_position: position, seed, packs: batches.length, grad_accum: accum });
    const orders = new Map<number, number[]>();
    const packAt = (i: number) => {
      const epoch = Math.floor(i / batches.length);
      let order = orders.get(epoch);
      if (!order) {
        order = epochOrder(batches.length, seed, epoch);
        orders.set(epoch, order);
      }
      return batches[order[i % batches.length]];
    };
    const started = Date.now();
    const firstStep = trainer.stepCount;
    let tokensSeen = 0;
    let ranThisRun = 0;
    while (trainer.stepCount < totalSteps && (stopAfter === undefined || ranThisRun < stopAfter)) {
      const micro = Array.from({ length: accum }, (_, k) => packAt(position + k));
      const result = await trainer.step(micro);
      position += accum;
      ranThisRun++;
      tokensSeen += result.tokens;
      const elapsed = (Date.now() - started) / 1000;
      const tokensPerS = tokensSeen / Math.max(elapsed, 1e-3);
      const record = {
        step: result.step,
        loss: result.loss,
        lr: result.lr,
        grad_norm: result.gradNorm,
        tokens: result.tokens,
        tokens_per_s: tokensPerS,
        elapsed_s: elapsed,
      };
      await appendFile(logFile, `${JSON.stringify(record)}\n`);
      const eta = ((totalSteps - result.step) * elapsed) / (result.step - firstStep);
      io.stderr.write(
        `\rstep ${result.step}/${totalSteps}  loss ${result.loss.toFixed(4)}  ${tokensPerS.toFixed(0)} tok/s  ETA ${formatEta(eta)}${io.stderr.isTTY ? '' : '\n'}`,
      );
      if (saveEvery !== undefined && result.step % saveEvery === 0 && result.step < totalSteps)
        saved = await saveCheckpoint(trainer, out, extra(), keep);
    }
    if (io.stderr.isTTY) io.stderr.write('\n');
    const checkpoint =
      saved && path.basename(saved) === `checkpoint-${trainer.stepCount}`
        ? saved
        : await saveCheckpoint(trainer, out, extra(), keep);
    await publishModel(checkpoint, out);
    io.stdout.write(`saved step ${trainer.stepCount}/${totalSteps} to ${out}\n`);
    return 0;
  } finally {
    await trainer.close();
  }
}
