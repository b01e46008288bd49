import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Pipeline, pipeline } from '../src/pipeline/pipeline.js';
import { hideServerPaths } from '../src/server/errors.js';
import { InternVLServer, pipelineBackend } from '../src/server/server.js';
import { goldenModelDir } from './helpers.js';

const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-server-ops-cache-'));
const KEY = 'sk-ops';
let pipe: Pipeline;

before(async () => {
  pipe = await pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), { cacheDir, threads: 1 });
});
after(async () => {
  await pipe.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

interface OpenAIErrorShape {
  error: { message: string; type: string; param: string | null; code: string | null };
}

async function errorOf(res: Response, status: number): Promise<OpenAIErrorShape['error']> {
  const text = await res.text();
  assert.equal(res.status, status, text);
  const body = JSON.parse(text) as OpenAIErrorShape;
  assert.equal(typeof body.error.message, 'string');
  assert.equal(typeof body.error.type, 'string');
  return body.error;
}

/** A server on 127.0.0.1 for one test, closed after it. */
async function withServer(
  loaded: Pipeline | Promise<Pipeline>,
  options: ConstructorParameters<typeof InternVLServer>[2],
  run: (base: string, server: InternVLServer) => Promise<void>,
): Promise<void> {
  const backend = loaded instanceof Promise ? loaded.then(pipelineBackend) : pipelineBackend(loaded);
  const server = new InternVLServer(backend, 'tiny', options, false);
  const { url } = await server.listen(0, '127.0.0.1');
  try {
    await run(url, server);
  } finally {
    await server.close();
  }
}

const chat = (base: string, body: unknown, key = KEY) =>
  fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

describe('readiness', () => {
  test('while the model loads: /health 200, /ready and generation 503; after: both ready', async () => {
    let finishLoading!: (p: Pipeline) => void;
    const loading = new Promise<Pipeline>((resolve) => {
      finishLoading = resolve;
    });
    await withServer(loading, { apiKey: KEY }, async (base, server) => {
      assert.equal((await fetch(`${base}/health`)).status, 200);
      const notReady = await errorOf(await fetch(`${base}/ready`), 503);
      assert.match(notReady.message, /the model is still loading/);
      assert.equal(notReady.code, 'model_not_ready');
      const busy = await errorOf(await chat(base, { messages: [{ role: 'user', content: 'hi' }] }), 503);
      assert.match(busy.message, /still loading/);
      finishLoading(pipe);
      await server.ready;
      assert.deepEqual(await (await fetch(`${base}/ready`)).json(), { status: 'ready' });
      const res = await chat(base, { messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
      assert.equal(res.status, 200, await res.clone().text());
    });
  });

  test('a model that failed to load keeps /ready at 503 naming the failure', async () => {
    const failing = Promise.reject(new Error('no such checkpoint'));
    await withServer(failing, {}, async (base, server) => {
      await assert.rejects(server.ready, /no such checkpoint/);
      const err = await errorOf(await fetch(`${base}/ready`), 503);
      assert.equal(err.message, 'the model failed to load: no such checkpoint');
    });
  });
});

describe('draining', () => {
  test('drain lets a running stream finish, refuses new connections, and reports none aborted', async () => {
    await withServer(pipe, {}, async (base, server) => {
      const res = await chat(base, {
        messages: [{ role: 'user', content: 'Count.' }],
        max_tokens: 2000,
        ignore_eos: true,
        stream: true,
      });
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      await reader.read();
      assert.equal(server.limiter.running, 1, 'the generation is still running when the drain starts');
      const drained = server.drain(30_000);
      await assert.rejects(fetch(`${base}/health`), 'no new connections while draining');
      let raw = '';
      for (let r = await reader.read(); !r.done; r = await reader.read())
        raw += new TextDecoder().decode(r.value);
      assert.match(raw, /"finish_reason":"length"/);
      assert.ok(raw.endsWith('data: [DONE]\n\n'));
      assert.deepEqual(await drained, { aborted: 0 });
    });
  });

  test('requests still running at the drain deadline are aborted', async () => {
    await withServer(pipe, {}, async (base, server) => {
      const res = await chat(base, {
        messages: [{ role: 'user', content: 'Count.' }],
        max_tokens: 4000,
        ignore_eos: true,
        stream: true,
      });
      const reader = res.body!.getReader();
      await reader.read();
      const started = performance.now();
      assert.deepEqual(await server.drain(50), { aborted: 1 });
      assert.ok(performance.now() - started < 5000);
      // The stream ends (the connection is closed) rather than hanging.
      await assert.doesNotReject(async () => {
        try {
          while (!(await reader.read()).done);
        } catch {
          // A reset connection is an end too.
        }
      });
    });
  });
});

describe('access and errors', () => {
  test('metricsAuth puts /metrics behind the API key', async () => {
    await withServer(pipe, { apiKey: KEY, metricsAuth: true }, async (base) => {
      const denied = await errorOf(await fetch(`${base}/metrics`), 401);
      assert.equal(denied.code, 'invalid_api_key');
      const ok = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${KEY}` } });
      assert.equal(ok.status, 200);
      const text = await ok.text();
      assert.match(text, /internvl_requests_total/);
      const maxDelay = /internvl_event_loop_delay_seconds\{quantile="1"\} (\S+)/.exec(text);
      assert.ok(maxDelay && Number(maxDelay[1]) >= 0 && Number(maxDelay[1]) < 60, text);
    });
    assert.throws(
      () => new InternVLServer(pipelineBackend(pipe), 'tiny', { metricsAuth: true }, false),
      /metricsAuth needs an apiKey/,
    );
  });

  test('odd request targets and list sizes are 4xx in the OpenAI shape', async () => {
    await withServer(pipe, {}, async (base) => {
      const badEscape = await errorOf(await fetch(`${base}/v1/models/%E0%A4%A`), 400);
      assert.match(badEscape.message, /not valid percent-encoding/);
      const prompts = Array.from({ length: 257 }, () => 'a');
      const tooMany = await fetch(`${base}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: prompts }),
      });
      assert.equal((await errorOf(tooMany, 400)).message, 'prompt: at most 256 prompts per request');
      const generations = await fetch(`${base}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: prompts.slice(0, 100), n: 16 }),
      });
      assert.match(
        (await errorOf(generations, 400)).message,
        /= 1600 generations, above the server's limit of 1024/,
      );
      const tools = await errorOf(
        await chat(base, { messages: [{ role: 'user', content: 'hi' }], tools: [{ type: 'function' }] }),
        400,
      );
      assert.match(tools.message, /^tools\[0\]\.function: /);
    });
  });

  test('a large body is parsed off the event loop and gets the same 400 as a small one', async () => {
    await withServer(pipe, {}, async (base) => {
      const numbers = JSON.stringify({ prompt: Array.from({ length: 2_000_000 }, () => 1) });
      assert.ok(numbers.length > 64 * 1024);
      const res = await fetch(`${base}/v1/completions`, { method: 'POST', body: numbers });
      const err = await errorOf(res, 400);
      assert.equal(err.message, 'prompt: at most 256 prompts per request');
      const small = await fetch(`${base}/v1/completions`, {
        method: 'POST',
        body: JSON.stringify({ prompt: Array.from({ length: 300 }, () => 1) }),
      });
      assert.deepEqual(await errorOf(small, 400), err);
      const bad = await errorOf(
        await fetch(`${base}/v1/completions`, { method: 'POST', body: `${'['.repeat(100_000)}` }),
        400,
      );
      assert.equal(bad.code, 'invalid_json');
    });
  });

  test('error messages do not show the server temporary or home directories', async () => {
    assert.equal(
      hideServerPaths(`ffmpeg failed on ${path.join(os.tmpdir(), 'internvl-video-x1', 'video')} (1): bad`),
      'ffmpeg failed on <server path> (1): bad',
    );
    assert.equal(hideServerPaths(`${os.tmpdir()}foo stays`), `${os.tmpdir()}foo stays`);
    await withServer(pipe, {}, async (base) => {
      const garbage = `data:video/mp4;base64,${Buffer.from('not a video at all').toString('base64')}`;
      const err = await errorOf(
        await chat(base, {
          messages: [{ role: 'user', content: [{ type: 'video_url', video_url: garbage }] }],
        }),
        400,
      );
      assert.equal(
        err.message,
        'ffmpeg failed on messages[0].content[0].video_url.url (exit code 1): ' +
          'messages[0].content[0].video_url.url: Invalid data found when processing input',
      );
      assert.ok(!err.message.includes(os.tmpdir()), err.message);
    });
  });
});
