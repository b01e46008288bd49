/**
 * `internvl train`: trains a checkpoint on packed shards with the Trainer, one optimizer step per
 * `--grad-accum` packs in a seeded per-epoch order, a progress line (loss, tokens/s, ETA) on stderr,
 * a JSON-lines log in the output folder, checkpoints every `--save-every` steps and at the end, and
 * `--resume` from the last checkpoint (weights, optimiser state, step and data position).
 */
import { appendFile, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { readShardFolder } from '../train/shard-batches.js';
import { Trainer, type TrainingStage } from '../train/trainer.js';
import { integerOption, numberOption, parseCommandArgs, UsageError } from './args.js';

const USAGE = `Usage: internvl train --model DIR --data SHARDS --stage 1|1.5|2 --out DIR [options]

  --lr X                 peak learning rate (default: stage 1 2e-4, stage 1.5 1e-5, stage 2 4e-5)
  --steps N | --epochs N optimizer steps, or passes over the packs (default 1 epoch)
  --grad-accum N         packs per optimizer step (default 1)
  --seed N               data order seed (default 0)
  --weight-decay X       AdamW decoupled weight decay (default 0.05)
  --warmup-steps N       linear warm-up (default: 3% of the steps, at most 100)
  --schedule S           cosine | constant (default cosine)
  --max-grad-norm X      global-norm clipping (default 1.0)
  --save-every N         also save every N steps (default: only at the end)
  --stop-after N         stop after N steps of this run (resume later with --resume)
  --freeze-llm, --freeze-backbone, --freeze-mlp, --unfreeze-vit-layers K, --unfreeze-lm-head
  --resume               continue from the checkpoint in --out
Writes DIR/model.safetensors (bf16) with the source's config and tokenizer files, optimiser state,
and DIR/train_log.jsonl (one JSON object per step).
`;

export interface TrainIo {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown; isTTY?: boolean };
}

const DEFAULT_LR: Record<string, number> = { '1': 2e-4, '1.5': 1e-5, '2': 4e-5 };

/** mulberry32: a small seeded generator for the data order. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Pack order of one epoch (Fisher–Yates with a seed derived from the run seed and the epoch). */
export function epochOrder(count: number, seed: number, epoch: number): number[] {
  const next = rng(seed * 1000003 + epoch * 7919 + 1);
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

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}

export async function trainCommand(args: string[], io: TrainIo = process): Promise<number> {
  try {
    return await run(args, io);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`internvl train: ${err.message}\n${USAGE}`);
      return 2;
    }
    if (err instanceof InternVLError) {
      io.stderr.write(`internvl train: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}

async function run(args: string[], io: TrainIo): Promise<number> {
  const { values } = parseCommandArgs(args, {
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
    resume: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    io.stdout.write(USAGE);
    return 0;
  }
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
  const out = path.resolve(values.out);

  const batches = await readShardFolder(path.resolve(values.data));
  const stepsPerEpoch = Math.max(1, Math.floor(batches.length / accum));
  const totalSteps =
    integerOption(values.steps, 'steps', 1) ??
    (integerOption(values.epochs, 'epochs', 1) ?? 1) * stepsPerEpoch;
  const warmupSteps =
    integerOption(values['warmup-steps'], 'warmup-steps', 0) ?? Math.min(100, Math.ceil(0.03 * totalSteps));
  const logFile = path.join(out, 'train_log.jsonl');
  const resuming = Boolean(values.resume) && (await exists(path.join(out, 'trainer_state.json')));

  const trainer = await Trainer.create({
    model: resuming ? out : path.resolve(values.model),
    resume: resuming,
    stage,
    seed,
    optimizer: {
      lr: numberOption(values.lr, 'lr') ?? DEFAULT_LR[stageText],
      weightDecay: numberOption(values['weight-decay'], 'weight-decay') ?? 0.05,
      schedule,
      warmupSteps,
      totalSteps,
      maxGradNorm: numberOption(values['max-grad-norm'], 'max-grad-norm') ?? 1.0,
    },
    freezeLlm: values['freeze-llm'],
    freezeBackbone: values['freeze-backbone'],
    freezeMlp: values['freeze-mlp'],
    unfreezeVitLayers: integerOption(values['unfreeze-vit-layers'], 'unfreeze-vit-layers', -1_000_000),
    unfreezeLmHead: values['unfreeze-lm-head'],
  });
  try {
    await mkdir(out, { recursive: true });
    // Steps after the last checkpoint are run again on resume; their log lines are replaced.
    if (resuming) {
      const kept = (await readFile(logFile, 'utf8').catch(() => ''))
        .split('\n')
        .filter((l) => l.trim() !== '' && (JSON.parse(l) as { step: number }).step <= trainer.stepCount);
      await writeFile(logFile, kept.map((l) => `${l}\n`).join(''));
    } else {
      await writeFile(logFile, '');
    }
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
      const s = trainer.stepCount;
      const micro = Array.from({ length: accum }, (_, k) => packAt(s * accum + k));
      const result = await trainer.step(micro);
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
        await trainer.save(out);
    }
    if (io.stderr.isTTY) io.stderr.write('\n');
    await trainer.save(out);
    io.stdout.write(`saved step ${trainer.stepCount}/${totalSteps} to ${out}\n`);
    return 0;
  } finally {
    await trainer.close();
  }
}
