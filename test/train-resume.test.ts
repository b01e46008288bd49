import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
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

  it('--resume falls back past damaged newer checkpoints to the newest intact one, bit-exact', async () => {
    const common = ['--model', MODEL, '--data', shards, '--stage', '2', '--steps', '8', '--seed', '5'];
    common.push('--lr', '1e-3', '--warmup-steps', '2');
    const straight = path.join(dir, 'fallback-straight');
    const quiet = memoryIo();
    assert.equal(await trainCommand([...common, '--out', straight], quiet.io), 0, quiet.stderr());
    const partial = path.join(dir, 'fallback-partial');
    const first = memoryIo();
    const stopped = [...common, '--out', partial, '--save-every', '2', '--stop-after', '6'];
    assert.equal(await trainCommand(stopped, first.io), 0, first.stderr());
    assert.deepEqual(
      (await listCheckpoints(partial)).map((c) => c.step),
      [6, 4, 2],
    );
    const state = JSON.parse(await readFile(path.join(partial, 'checkpoint-6/trainer_state.json'), 'utf8'));
    assert.ok(state.files['model.safetensors'].sha256, 'the state records checksums');

    // One copy with a flipped optimizer byte in checkpoint-6 (only a checksum sees it): back to step 4.
    // Another with checkpoint-6's weights truncated and checkpoint-4's state file garbled: back to step 2.
    const flipped = path.join(dir, 'fallback-flipped');
    const twice = path.join(dir, 'fallback-twice');
    await cp(partial, flipped, { recursive: true });
    await cp(partial, twice, { recursive: true });
    const optimizer = path.join(flipped, 'checkpoint-6/optimizer_state.safetensors');
    const bytes = await readFile(optimizer);
    bytes[bytes.length - 3] ^= 0x10;
    await writeFile(optimizer, bytes);
    await truncate(path.join(twice, 'checkpoint-6/model.safetensors'), 1000);
    await writeFile(path.join(twice, 'checkpoint-4/trainer_state.json'), '{"step": 4, "trai');

    for (const [out, from, damaged] of [
      [flipped, 4, ['checkpoint-6']],
      [twice, 2, ['checkpoint-6', 'checkpoint-4']],
    ] as const) {
      const resumed = memoryIo();
      assert.equal(
        await trainCommand([...common, '--out', out, '--resume'], resumed.io),
        0,
        resumed.stderr(),
      );
      const err = resumed.stderr();
      for (const name of damaged) {
        assert.match(err, new RegExp(`not resuming from ${path.join(out, name)}: `), err);
        assert.ok((await readdir(out)).includes(`${name}.damaged`), `${name} is kept aside`);
      }
      if (damaged.length === 1) assert.match(err, /optimizer_state\.safetensors does not match the SHA-256/);
      else {
        assert.match(err, /model\.safetensors is 1000 bytes; it was saved with \d+/);
        assert.match(err, /trainer_state\.json: not a readable trainer state/);
      }
      assert.match(
        err,
        new RegExp(`resuming from ${path.join(out, `checkpoint-${from}`)} \\(step ${from}\\)`),
      );
      const a = await readTrainLog(straight);
      const b = await readTrainLog(out);
      assert.deepEqual(
        b.map((l) => [l.step, l.loss, l.lr]),
        a.map((l) => [l.step, l.loss, l.lr]),
      );
      const x = await Checkpoint.open(straight);
      const y = await Checkpoint.open(out);
      try {
        for (const name of x.names())
          assert.deepEqual(await y.readBytes(name), await x.readBytes(name), name);
      } finally {
        await x.close();
        await y.close();
      }
    }

    // With every checkpoint damaged, --resume stops with the reasons and deletes nothing.
    const none = path.join(dir, 'fallback-none');
    await cp(partial, none, { recursive: true });
    for (const step of [2, 4, 6]) await truncate(path.join(none, `checkpoint-${step}/model.safetensors`), 10);
    const failed = memoryIo();
    assert.equal(await trainCommand([...common, '--out', none, '--resume'], failed.io), 1);
    assert.match(failed.stderr(), /--resume: no checkpoint in .* can be resumed from/);
    assert.deepEqual(
      (await listCheckpoints(none)).map((c) => c.step),
      [6, 4, 2],
    );
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
