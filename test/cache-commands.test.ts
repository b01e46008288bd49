import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createTaskLines } from '../src/io/progress.js';
import { startFakeHub } from './fake-hub.js';
import { goldenModelDir } from './helpers.js';

const QWEN2 = goldenModelDir('tiny-internvl2_5-qwen2');
const REPO = 'test-org/tiny-qwen2';
const COMMIT = 'c'.repeat(40);

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs argument lists through `internvl` in one child process (not blocking: the fake hub answers here). */
function runAll(cases: string[][], env: Record<string, string>): Promise<Result[]> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'test/cli-capture.ts', JSON.stringify(cases)],
      { env: { ...process.env, ...env }, timeout: 120_000, maxBuffer: 16 << 20 },
      (err, stdout, stderr) =>
        err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(JSON.parse(stdout)),
    );
  });
}

let tmp: string;
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'internvl-cache-cmd-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

test('pull (resuming a partial download, plain progress lines), ls with graph entries, rm --yes', async () => {
  const hub = await startFakeHub({ repos: { [REPO]: { main: { commit: COMMIT, dir: QWEN2 } } } });
  try {
    const hubCache = path.join(tmp, 'hub');
    const env = {
      HF_ENDPOINT: hub.url,
      HF_HUB_CACHE: hubCache,
      HF_HUB_OFFLINE: '',
      HF_TOKEN: '',
      INTERNVL_CACHE: path.join(tmp, 'internvl'),
    };
    // Half of the weights are already there from an interrupted pull.
    const weights = await readFile(path.join(QWEN2, 'model.safetensors'));
    const sha = createHash('sha256').update(weights).digest('hex');
    const blobs = path.join(hubCache, 'models--test-org--tiny-qwen2', 'blobs');
    await mkdir(blobs, { recursive: true });
    const half = Math.floor(weights.length / 2);
    await writeFile(path.join(blobs, `${sha}.incomplete`), weights.subarray(0, half));

    const snapshot = path.join(hubCache, 'models--test-org--tiny-qwen2', 'snapshots', COMMIT);
    const [pull, convert, ls, lsJson] = await runAll(
      [['pull', REPO], ['convert', snapshot], ['ls'], ['ls', '--json']],
      env,
    );
    assert.equal(pull.code, 0, pull.stderr);
    assert.equal(pull.stdout, `${snapshot}\n`);
    assert.deepEqual(await readFile(path.join(snapshot, 'model.safetensors')), weights);
    const ranged = hub.requests.filter((r) => r.url === `/cdn/${sha}`);
    assert.deepEqual(
      ranged.map((r) => r.range),
      [`bytes=${half}-`],
      'the weights resumed from the partial file',
    );
    // Not a terminal: whole lines, no carriage returns, the weights reach 100 %.
    assert.ok(!pull.stderr.includes('\r'), pull.stderr);
    assert.match(pull.stderr, /^model\.safetensors 100% 606\.4 KiB \/ 606\.4 KiB$/m);
    assert.ok(pull.stderr.split('\n').filter((l) => l.startsWith('model.safetensors')).length <= 5);

    assert.equal(convert.code, 0, convert.stderr);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, new RegExp(`^Hugging Face cache: ${hubCache}$`, 'm'));
    assert.match(ls.stdout, /^ {2}test-org\/tiny-qwen2 {2}[\d.]+ KiB {2}revisions: main=cccccccc$/m);
    assert.match(ls.stdout, /^ {4}graphs: 2, [\d.]+ [KM]iB$/m);
    assert.match(ls.stdout, /^ {4}graph [0-9a-f]{32} {2}vision fp32 /m);
    assert.match(ls.stdout, /^ {4}graph [0-9a-f]{32} {2}decoder fp32 /m);
    const listing = JSON.parse(lsJson.stdout);
    assert.equal(listing.models.length, 1);
    const [model] = listing.models;
    assert.equal(model.repoId, REPO);
    assert.equal(model.refs.main, COMMIT);
    assert.equal(model.incompleteBytes, 0);
    // The blobs (config, tokenizer, weights) are the model's size.
    assert.ok(model.bytes > weights.length, String(model.bytes));
    assert.equal(model.graphs.length, 2);
    const graphDirs: string[] = model.graphs.map((g: { dir: string }) => g.dir);
    for (const dir of graphDirs) assert.ok(existsSync(path.join(dir, 'model.onnx')));

    const [notCached, withRevision, rmYes, lsAfter] = await runAll(
      [['rm', 'test-org/other', '--yes'], ['rm', `${REPO}@main`], ['rm', REPO, '--yes'], ['ls']],
      env,
    );
    assert.equal(notCached.code, 1);
    assert.match(notCached.stderr, /test-org\/other is not in the Hugging Face cache .*internvl ls/);
    assert.equal(withRevision.code, 1);
    assert.match(
      withRevision.stderr,
      /works on the whole model: write "test-org\/tiny-qwen2" without "@main"/,
    );
    assert.equal(rmYes.code, 0, rmYes.stderr);
    assert.ok(rmYes.stderr.startsWith(`This removes ${REPO}: ${path.dirname(path.dirname(snapshot))} (`));
    for (const dir of graphDirs) {
      assert.ok(rmYes.stderr.includes(`the graph-cache entry ${dir} (`), rmYes.stderr);
      assert.ok(!existsSync(dir), `${dir} removed`);
    }
    assert.ok(!existsSync(path.dirname(path.dirname(snapshot))));
    assert.match(lsAfter.stdout, /\(no models\)/);
  } finally {
    await hub.close();
  }
});

test('pull, ls and rm refuse bad arguments with the reason', async () => {
  const env = { HF_HUB_CACHE: path.join(tmp, 'empty'), HF_HUB_OFFLINE: '1' };
  const [pullPath, pullNone, pullOffline, rmNone, lsExtra] = await runAll(
    [['pull', './some/folder'], ['pull'], ['pull', 'org/absent'], ['rm'], ['ls', 'x']],
    env,
  );
  assert.equal(pullPath.code, 1);
  assert.match(pullPath.stderr, /pull takes a hub id like "Org\/Name"; ".\/some\/folder" is not one/);
  assert.equal(pullNone.code, 2);
  assert.match(pullNone.stderr, /expected one MODEL/);
  assert.equal(pullOffline.code, 1);
  assert.match(pullOffline.stderr, /offline mode: model org\/absent .* is not in the cache/);
  assert.equal(rmNone.code, 2);
  assert.equal(lsExtra.code, 2);
  assert.match(lsExtra.stderr, /unexpected argument 'x'/);
});

test('plain progress lines: at the start, each quarter and the end, at most five a task', () => {
  const lines: string[] = [];
  const draw = createTaskLines({ write: (t: string) => lines.push(t) });
  for (let done = 0; done <= 1000; done += 10) draw({ label: 'f', done, total: 1000 });
  draw({ label: 'g', done: 3, total: undefined });
  draw({ label: 'g', done: 9, total: undefined });
  assert.deepEqual(lines, [
    'f   0% 0 / 1000\n',
    'f  25% 250 / 1000\n',
    'f  50% 500 / 1000\n',
    'f  75% 750 / 1000\n',
    'f 100% 1000 / 1000\n',
    'g 3\n',
  ]);
});
