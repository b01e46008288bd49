import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { goldenModelDir, REPO_ROOT } from './helpers.js';

test('internvl serve listens, answers with the API key, and exits 0 on SIGTERM', async () => {
  const cache = mkdtempSync(path.join(os.tmpdir(), 'ivl-serve-cli-'));
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      'src/cli/main-entry.ts',
      'serve',
      goldenModelDir('tiny-internvl2_5-qwen2'),
      '--port',
      '0',
      '--api-key',
      'k1',
      '--threads',
      '1',
    ],
    { cwd: REPO_ROOT, env: { ...process.env, INTERNVL_CACHE: cache }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  try {
    let stderr = '';
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr.on('data', (d) => {
        stderr += d;
        const m = /on (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(stderr);
        if (m) resolve(m[1]);
      });
      child.on('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
    });
    assert.match(stderr, /tiny-internvl2_5-qwen2 on http/);
    assert.match(stderr, /chat page: http:\/\/127\.0\.0\.1:\d+\/\n/);
    assert.match(await (await fetch(`${url}/`)).text(), /<title>InternVL chat<\/title>/);
    assert.equal((await fetch(`${url}/v1/models`)).status, 401);
    const models = await fetch(`${url}/v1/models`, { headers: { authorization: 'Bearer k1' } });
    assert.equal(((await models.json()) as { data: { id: string }[] }).data[0].id, 'tiny-internvl2_5-qwen2');
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    rmSync(cache, { recursive: true, force: true });
  }
});

test('internvl serve drains on SIGTERM: the running stream finishes, new connections are refused, exit 0', async () => {
  const cache = mkdtempSync(path.join(os.tmpdir(), 'ivl-serve-drain-'));
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      'src/cli/main-entry.ts',
      'serve',
      goldenModelDir('tiny-internvl2_5-qwen2'),
      '--port',
      '0',
      '--threads',
      '1',
      '--drain-timeout',
      '60',
    ],
    { cwd: REPO_ROOT, env: { ...process.env, INTERNVL_CACHE: cache }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  try {
    let stderr = '';
    const listening = new Promise<string>((resolve, reject) => {
      child.stderr.on('data', (d) => {
        stderr += d;
        const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
        if (m) resolve(m[1]);
      });
      child.on('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
    });
    const url = await listening;
    // Listening comes before loading; readiness follows the load.
    while ((await fetch(`${url}/ready`)).status !== 200) await new Promise((r) => setTimeout(r, 50));
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      body: JSON.stringify({
        messages: [{ role: 'user', content: 'Count.' }],
        max_tokens: 2000,
        ignore_eos: true,
        stream: true,
      }),
    });
    const reader = res.body!.getReader();
    await reader.read();
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    child.kill('SIGTERM');
    while (!stderr.includes('draining')) await new Promise((r) => setTimeout(r, 10));
    await assert.rejects(fetch(`${url}/health`), 'no new connections while draining');
    let raw = '';
    for (let r = await reader.read(); !r.done; r = await reader.read())
      raw += new TextDecoder().decode(r.value);
    assert.match(raw, /"finish_reason":"length"/);
    assert.ok(raw.endsWith('data: [DONE]\n\n'));
    assert.ok(raw.split('data: ').length > 100, 'most of the stream came after SIGTERM');
    assert.equal(await exited, 0);
    assert.match(stderr, /internvl serve: stopped\n/);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    rmSync(cache, { recursive: true, force: true });
  }
});

test('internvl serve with a bad option exits 2 and names it', async () => {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', 'src/cli/main-entry.ts', 'serve', '--max-batch-size', '0'],
    {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  assert.equal(code, 2);
  assert.match(stderr, /--max-batch-size must be an integer ≥ 1/);
});

test('internvl serve --metrics-auth without an API key exits 2', async () => {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', 'src/cli/main-entry.ts', 'serve', '--metrics-auth'],
    { cwd: REPO_ROOT, env: { ...process.env, INTERNVL_API_KEY: '' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  assert.equal(code, 2);
  assert.match(stderr, /--metrics-auth needs --api-key/);
});
