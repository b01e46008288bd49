import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { dataCommand } from '../src/cli/data.js';
import { trainCommand } from '../src/cli/train.js';
import { memoryIo } from './data-fixture.js';
import { goldenModelDir, REPO_ROOT } from './helpers.js';

const README = readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');
const MODEL = goldenModelDir('tiny-internvl2_5-qwen2');
const work = mkdtempSync(path.join(os.tmpdir(), 'internvl-readme-'));
const startDir = process.cwd();
after(() => {
  process.chdir(startDir);
  rmSync(work, { recursive: true, force: true });
});

/** The lines of every ```sh block of the README. */
function shellLines(text: string): string[] {
  return [...text.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) => m[1].split('\n'));
}

test('every internvl command in the README runs through npx (npm install puts no bin on the PATH)', () => {
  const calls = shellLines(README).filter((l) => /(^|[\s|&;])internvl /.test(l));
  assert.ok(calls.length >= 15, `${calls.length} command lines`);
  for (const line of calls) assert.match(line, /(^|[\s|&;])npx internvl /, line);
});

test('npm in this folder keeps onnxruntime-node-install=skip and prints no warning about it', () => {
  const npmrc = readFileSync(path.join(REPO_ROOT, '.npmrc'), 'utf8');
  assert.match(npmrc, /^onnxruntime-node-install=skip$/m);
  const out = execFileSync('npm', ['config', 'get', 'onnxruntime-node-install'], {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  assert.equal(out.trim(), 'skip');
  const result = execFileSync('sh', ['-c', 'npm pkg get name 2>&1'], { cwd: REPO_ROOT, encoding: 'utf8' });
  assert.doesNotMatch(result, /npm warn/i, result);
});

/** Runs one README line (`npx internvl data|train …`) in this process with the golden model for ./InternVL2_5-1B. */
async function runLine(line: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const words = line
    .replace(/\s+#.*$/, '')
    .trim()
    .split(/\s+/);
  assert.deepEqual(words.slice(0, 2), ['npx', 'internvl'], line);
  assert.doesNotMatch(line, /["'\\]/, 'plain words only');
  const args = words.slice(2).map((w) => (w === './InternVL2_5-1B' ? MODEL : w));
  const { io, stdout, stderr } = memoryIo();
  const code =
    args[0] === 'data'
      ? await dataCommand(args.slice(1), io)
      : args[0] === 'train'
        ? await trainCommand(args.slice(1), io)
        : assert.fail(`unexpected command in the sequence: ${line}`);
  return { code, stdout: stdout(), stderr: stderr() };
}

test("the README's training-data sequence runs as written on examples/data", async () => {
  const section = README.slice(README.indexOf('## Training data'));
  const block = /```sh\n([\s\S]*?)```/.exec(section)?.[1] ?? '';
  const lines = block.split('\n').filter((l) => l.startsWith('npx internvl '));
  assert.deepEqual(
    lines.map((l) => l.split(' ').slice(2, 4).join(' ')),
    ['data stats', 'data filter', 'data pack', 'train --model'],
  );
  // The commands' relative paths (examples/…, cleaned/, shards/, run/) resolve in a scratch folder.
  cpSync(path.join(REPO_ROOT, 'examples/data'), path.join(work, 'examples/data'), { recursive: true });
  process.chdir(work);
  const results = [];
  for (const line of lines) {
    const r = await runLine(line);
    assert.equal(r.code, 0, `${line}\n${r.stderr}`);
    results.push(r);
  }
  assert.match(
    results[0].stdout,
    /^TOTAL\s+5\s+0\s+5\s+\d+\s+\d+$/m,
    'stats: 5 valid samples, tokens and tiles',
  );
  assert.match(results[1].stdout, /sample_images: kept 3 of 3/);
  const index = JSON.parse(readFileSync('shards/index.json', 'utf8'));
  assert.equal(index.tiles, true, 'image data is packed with its tiles');
  assert.equal(index.dropped.length, 0);
  assert.equal(
    index.shards.reduce((n: number, s: { samples: number }) => n + s.samples, 0),
    5,
  );
  const log = readFileSync('run/train_log.jsonl', 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const steps = Number(/--steps (\d+)/.exec(lines[3])?.[1]);
  assert.equal(log.length, steps);
  assert.ok(log.every((l: { loss: number }) => Number.isFinite(l.loss) && l.loss > 0));
  assert.ok(existsSync('run/model.safetensors'));
});

test('train refuses shards packed with --no-tiles before it writes anything, and says to pack with --tiles', async () => {
  process.chdir(work);
  const pack = await runLine(
    'npx internvl data pack examples/data/meta.json --model ./InternVL2_5-1B --out notiles/ --max-len 4096 --no-tiles',
  );
  assert.equal(pack.code, 0, pack.stderr);
  assert.match(pack.stderr, /--no-tiles: these shards hold no image tiles/);
  const r = await runLine(
    'npx internvl train --model ./InternVL2_5-1B --data notiles/ --stage 1 --out failed/ --steps 1',
  );
  assert.equal(r.code, 1);
  assert.match(r.stderr, /pack 0 has image samples \(\d+ tiles\) but the shard stores no tiles/);
  assert.match(r.stderr, /internvl data pack .* --tiles/);
  assert.ok(!existsSync('failed/train_log.jsonl'), 'no empty log is left behind');
});
