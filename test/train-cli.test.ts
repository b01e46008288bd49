import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { trainCommand } from '../src/cli/train.js';
import { memoryIo } from './data-fixture.js';
import { goldenModelDir } from './helpers.js';
import { packTextDataset, readTrainLog } from './train-fixture.js';

const MODEL = goldenModelDir('tiny-internvl2_5-qwen2');

describe('internvl train', () => {
  let dir: string;
  let shards: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-train-cli-'));
    shards = await packTextDataset(dir, MODEL, [
      ['Say hello.', 'Hello!'],
      ['Name a colour.', 'Blue.'],
      ['2+2?', '4.'],
      ['Greet me.', 'Hi there!'],
    ]);
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('lowers the loss on a tiny packed dataset and writes a JSON-lines log', async () => {
    const out = path.join(dir, 'run');
    const { io, stderr } = memoryIo();
    const args = [
      '--model',
      MODEL,
      '--data',
      shards,
      '--stage',
      '2',
      '--out',
      out,
      '--lr',
      '2e-3',
      '--steps',
      '40',
    ];
    assert.equal(
      await trainCommand([...args, '--schedule', 'constant', '--warmup-steps', '0'], io),
      0,
      stderr(),
    );
    const log = await readTrainLog(out);
    assert.deepEqual(
      log.map((l) => l.step),
      Array.from({ length: 40 }, (_, i) => i + 1),
    );
    const first = log.slice(0, 4).reduce((s, l) => s + l.loss, 0) / 4;
    const last = log.slice(-4).reduce((s, l) => s + l.loss, 0) / 4;
    // Random tiny model starts near ln(320) ≈ 5.8; 40 steps on 4 short answers must fall below a quarter of it.
    assert.ok(last < first * 0.25, `loss went from ${first} to ${last}`);
    assert.match(stderr(), /step 40\/40 {2}loss \d+\.\d+ {2}\d+ tok\/s {2}ETA/);
  });

  it('a run stopped and resumed reproduces the uninterrupted loss curve', async () => {
    const common = ['--model', MODEL, '--data', shards, '--stage', '2', '--steps', '6', '--seed', '5'];
    const straight = path.join(dir, 'straight');
    const resumed = path.join(dir, 'resumed');
    const quiet = memoryIo();
    assert.equal(await trainCommand([...common, '--out', straight], quiet.io), 0, quiet.stderr());
    assert.equal(
      await trainCommand([...common, '--out', resumed, '--save-every', '2', '--stop-after', '3'], quiet.io),
      0,
      quiet.stderr(),
    );
    assert.equal((await readTrainLog(resumed)).length, 3);
    assert.equal(await trainCommand([...common, '--out', resumed, '--resume'], quiet.io), 0, quiet.stderr());
    const a = await readTrainLog(straight);
    const b = await readTrainLog(resumed);
    assert.deepEqual(
      b.map((l) => [l.step, l.loss, l.lr]),
      a.map((l) => [l.step, l.loss, l.lr]),
    );
  });

  it('rejects a bad stage with usage text', async () => {
    const { io, stderr } = memoryIo();
    assert.equal(
      await trainCommand(['--model', MODEL, '--data', shards, '--out', dir, '--stage', '3'], io),
      2,
    );
    assert.match(stderr(), /--stage must be 1, 1.5 or 2/);
  });

  it('checks the LoRA flags', async () => {
    const base = ['--model', MODEL, '--data', shards, '--out', dir, '--stage', '2'];
    for (const [flags, message] of [
      [['--lora-dropout', '0.05'], /--lora-dropout needs --use-llm-lora R or --use-backbone-lora R/],
      [['--use-backbone-lora', '0'], /--use-backbone-lora/],
      [['--use-backbone-lora', '4', '--lora-dropout', '1'], /--lora-dropout must be in \[0, 1\)/],
    ] as const) {
      const { io, stderr } = memoryIo();
      assert.equal(await trainCommand([...base, ...flags], io), 2, flags.join(' '));
      assert.match(stderr(), message);
    }
  });
});
