import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { listCheckpoints, trainCommand } from '../src/cli/train.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { memoryIo } from './data-fixture.js';
import { goldenModelDir, REPO_ROOT } from './helpers.js';
import { packTextDataset, readTrainLog } from './train-fixture.js';

const MODEL = goldenModelDir('tiny-internvl2_5-qwen2');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('internvl train: kill, resume, freeze flags', () => {
  let dir: string;
  let shards: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-train-resume-'));
    shards = await packTextDataset(dir, MODEL, [
      ['Say hello.', 'Hello!'],
      ['Name a colour.', 'Blue.'],
      ['2+2?', '4.'],
      ['Greet me.', 'Hi there!'],
      ['Count to three.', 'One, two, three.'],
    ]);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a run killed with SIGKILL and resumed reproduces the uninterrupted loss curve', async () => {
    const common = ['--model', MODEL, '--data', shards, '--stage', '2', '--steps', '12', '--seed', '7'];
    common.push('--lr', '1e-3', '--warmup-steps', '2');
    const straight = path.join(dir, 'straight');
    const killed = path.join(dir, 'killed');
    const quiet = memoryIo();
    assert.equal(await trainCommand([...common, '--out', straight], quiet.io), 0, quiet.stderr());

    const child = spawn(
      process.execPath,
      ['--import', 'tsx', 'src/cli/main-entry.ts', 'train', ...common, '--out', killed, '--save-every', '2'],
      { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let childErr = '';
    child.stderr.on('data', (d) => (childErr += d));
    const exited = new Promise<NodeJS.Signals | number | null>((resolve) =>
      child.on('exit', (code, signal) => resolve(signal ?? code)),
    );
    const deadline = Date.now() + 60_000;
    while ((await listCheckpoints(killed)).length === 0) {
      assert.ok(Date.now() < deadline, `no checkpoint appeared: ${childErr}`);
      assert.equal(child.exitCode, null, `the run ended before a checkpoint: ${childErr}`);
      await sleep(20);
    }
    child.kill('SIGKILL');
    assert.equal(await exited, 'SIGKILL');
    const partial = await readTrainLog(killed);
    assert.ok(partial.length < 12, `killed after ${partial.length} steps`);
    const newest = (await listCheckpoints(killed))[0];
    // What a kill during a save would leave: a temporary folder, and (from a non-atomic writer) a
    // checkpoint folder without its state file. Neither may be resumed from.
    await mkdir(path.join(killed, '.checkpoint-11.tmp-1'));
    await writeFile(path.join(killed, '.checkpoint-11.tmp-1/model.safetensors'), 'half');
    await mkdir(path.join(killed, 'checkpoint-11'));
    await writeFile(path.join(killed, 'checkpoint-11/model.safetensors'), 'half');
    assert.equal((await listCheckpoints(killed))[0].step, newest.step);

    const resumed = memoryIo();
    assert.equal(
      await trainCommand([...common, '--out', killed, '--resume'], resumed.io),
      0,
      resumed.stderr(),
    );
    const a = await readTrainLog(straight);
    const b = await readTrainLog(killed);
    assert.deepEqual(
      b.map((l) => [l.step, l.loss, l.lr]),
      a.map((l) => [l.step, l.loss, l.lr]),
    );
    const state = JSON.parse(await readFile(path.join(killed, 'checkpoint-12/trainer_state.json'), 'utf8'));
    assert.deepEqual([state.extra.data_position, state.extra.seed, state.extra.grad_accum], [12, 7, 1]);
    const files = await readdir(killed);
    assert.ok(!files.some((f) => f.includes('.tmp-')), `leftovers removed: ${files}`);
    // The final weights are the same as the uninterrupted run's.
    const x = await Checkpoint.open(straight);
    const y = await Checkpoint.open(killed);
    try {
      for (const name of ['mlp1.1.weight', 'language_model.model.layers.1.mlp.down_proj.weight']) {
        assert.deepEqual(await y.readBytes(name), await x.readBytes(name), name);
      }
    } finally {
      await x.close();
      await y.close();
    }
  });

  it('--freeze-* flags train exactly the official set and leave the rest bit-identical', async () => {
    const out = path.join(dir, 'frozen');
    const quiet = memoryIo();
    const args = [
      '--model',
      MODEL,
      '--data',
      shards,
      '--stage',
      '2',
      '--out',
      out,
      '--steps',
      '2',
      '--lr',
      '2e-3',
    ];
    args.push('--freeze-backbone', '--unfreeze-vit-layers=-1', '--freeze-mlp');
    assert.equal(await trainCommand(args, quiet.io), 0, quiet.stderr());
    const state = JSON.parse(await readFile(path.join(out, 'checkpoint-2/trainer_state.json'), 'utf8'));
    const source = await Checkpoint.open(MODEL);
    const saved = await Checkpoint.open(out);
    try {
      const expected = source
        .names()
        .filter((n) => n.startsWith('language_model.') || n.startsWith('vision_model.encoder.layers.1.'));
      assert.deepEqual([...state.trainable].sort(), expected.sort());
      let changed = 0;
      for (const name of source.names()) {
        const same = Buffer.from(await saved.readBytes(name)).equals(
          Buffer.from(await source.readBytes(name)),
        );
        if (!expected.includes(name)) assert.ok(same, `${name} is frozen and must be bit-identical`);
        else if (!same) changed++;
      }
      assert.ok(changed > 10, `${changed} trainable tensors changed`);
    } finally {
      await source.close();
      await saved.close();
    }
  });
});
