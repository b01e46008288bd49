/**
 * Fuzzing `internvl serve` (a child process on 127.0.0.1, the tiny golden model): the requests the
 * fuzz run of issue #17 found fatal, then a few thousand seeded random requests. No request may get
 * a 5xx, every error is in OpenAI's shape, /health stays fast, and memory comes back.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { type FuzzRequest, fuzzRequests } from './fuzz-requests.js';
import { goldenModelDir } from './helpers.js';
import { type ServeProcess, startServe } from './serve-process.js';

const MiB = 1024 * 1024;
const HEALTH_LIMIT_MS = 100;
let serve: ServeProcess;

interface Reply {
  status: number;
  body: string;
  ms: number;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
const healthAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });

/** One raw request; resolves with the reply, or undefined when `abortAfterMs` cut it off first. */
function send(
  method: string,
  target: string,
  body?: Buffer | string,
  options: { headers?: Record<string, string>; abortAfterMs?: number; useAgent?: http.Agent } = {},
): Promise<Reply | undefined> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const { hostname, port } = new URL(serve.url);
    const req = http.request({
      hostname,
      port,
      path: target,
      method,
      agent: options.useAgent ?? agent,
      headers:
        body === undefined ? options.headers : { 'content-type': 'application/json', ...options.headers },
    });
    let aborted = false;
    // No request may stall: one without a reply in 20 s fails the test, naming it.
    const stalled = setTimeout(() => {
      aborted = true;
      req.destroy();
      reject(new Error(`${method} ${target.slice(0, 80)}: no reply within 20 s`));
    }, 20_000);
    if (options.abortAfterMs !== undefined) {
      setTimeout(() => {
        aborted = true;
        clearTimeout(stalled);
        req.destroy();
        resolve(undefined);
      }, options.abortAfterMs);
    }
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(stalled);
        resolve({
          status: res.statusCode ?? 0,
          body: Buffer.concat(chunks).toString('utf8'),
          ms: performance.now() - started,
        });
      });
      res.on('error', (err) => (aborted ? undefined : reject(err)));
    });
    let answered = false;
    req.on('response', () => {
      answered = true;
    });
    req.on('error', (err) => {
      if (aborted || answered) return;
      clearTimeout(stalled);
      reject(err);
    });
    req.end(body);
  });
}

/** OpenAI's error shape, with a message. */
function assertOpenAIError(reply: Reply, what: string): { message: string; code: string | null } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(reply.body);
  } catch {
    assert.fail(`${what}: ${reply.status} with a body that is not JSON: ${reply.body.slice(0, 200)}`);
  }
  const error = (parsed as { error?: Record<string, unknown> }).error;
  assert.ok(error && typeof error === 'object', `${what}: no error object in ${reply.body.slice(0, 200)}`);
  assert.equal(typeof error.message, 'string', what);
  assert.ok((error.message as string).length > 0, what);
  assert.equal(typeof error.type, 'string', what);
  assert.ok('param' in error && 'code' in error, `${what}: param and code are present`);
  return { message: error.message as string, code: error.code as string | null };
}

/** Polls /health until stopped; resolves with the slowest answer and how many there were. */
function pollHealth(): { stop: () => Promise<{ maxMs: number; polls: number; latencies: number[] }> } {
  let running = true;
  const latencies: number[] = [];
  const loop = (async () => {
    while (running) {
      const reply = await send('GET', '/health', undefined, { useAgent: healthAgent });
      assert.equal(reply?.status, 200, '/health answers while the server is under load');
      latencies.push(reply.ms);
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return { maxMs: Math.max(...latencies), polls: latencies.length, latencies };
    },
  };
}

before(async () => {
  serve = await startServe(goldenModelDir('tiny-internvl2_5-qwen2'), ['--threads', '1']);
});
after(async () => {
  agent.destroy();
  healthAgent.destroy();
  await serve?.stop();
});

const chatBody = (content: unknown, extra: Record<string, unknown> = {}) =>
  JSON.stringify({ messages: [{ role: 'user', content }], max_tokens: 2, ...extra });

test('the requests that stalled or killed the server get a 4xx within a second while /health stays fast', async () => {
  // Warm both workers (request parsing, tokenizing) so that their start-up is not measured.
  const warm = await send(
    'POST',
    '/v1/completions',
    JSON.stringify({ prompt: `${'a<|im_start|>'.repeat(400)}`, max_tokens: 1 }),
  );
  assert.equal(warm?.status, 200, warm?.body);
  assert.equal(
    (await send('POST', '/v1/completions', JSON.stringify({ prompt: [1], pad: 'x'.repeat(70_000) })))?.status,
    400,
  );

  // The requests of the issue must be answered within a second, /health within 100 ms meanwhile.
  // Bodies that are megabytes of JSON structure take the parsing worker longer; the event loop stays
  // free, but receiving and handing over 15 MB on a loaded two-core machine has taken /health to
  // 148 ms (main-thread GC or CPU contention), so those two get a looser /health bound.
  const cases: {
    name: string;
    target: string;
    body: Buffer;
    status: number;
    message: RegExp;
    withinMs?: number;
    healthWithinMs?: number;
  }[] = [
    {
      name: '60 MB completion prompt',
      target: '/v1/completions',
      body: Buffer.from(JSON.stringify({ prompt: 'hello world '.repeat(5 * MiB) })),
      status: 413,
      message: /above the limit of 16777216/,
    },
    {
      name: '32 MB completion prompt',
      target: '/v1/completions',
      body: Buffer.from(JSON.stringify({ prompt: 'x '.repeat(16_000_000) })),
      status: 413,
      message: /above the limit of 16777216/,
    },
    {
      name: '8 MB completion prompt',
      target: '/v1/completions',
      body: Buffer.from(JSON.stringify({ prompt: 'hello world '.repeat(700_000) })),
      status: 400,
      message: /^the prompt has 8400000 characters, above the limit of 106288: sessionLen 8192/,
    },
    {
      name: 'chat message of one 4 MB word',
      target: '/v1/chat/completions',
      body: Buffer.from(chatBody('w'.repeat(4 * MiB))),
      status: 400,
      message: /^messages\[0\] has 4194304 characters, above the limit of 106470/,
    },
    {
      name: 'chat message of one 70 000-character word',
      target: '/v1/chat/completions',
      body: Buffer.from(chatBody(`see ${'w'.repeat(70_000)}`)),
      status: 400,
      message:
        /^messages\[0\] has a run of 70000 characters without whitespace \(from character 4\); the limit is 65536$/,
    },
    {
      name: '100 000 characters that fit the character bound but not sessionLen (tokenized in the worker)',
      target: '/v1/completions',
      body: Buffer.from(JSON.stringify({ prompt: 'ab '.repeat(33_000) })),
      status: 400,
      message:
        /^the prompt has \d+ tokens \(0 of them for images\) and maxNewTokens is 16: \d+ > sessionLen 8192$/,
    },
    {
      name: '15 MB of numbers',
      target: '/v1/completions',
      body: Buffer.from(JSON.stringify({ prompt: Array.from({ length: 7_000_000 }, () => 1) })),
      status: 400,
      message: /^prompt: at most 256 prompts per request$/,
      withinMs: 5000,
      healthWithinMs: 250,
    },
    {
      name: '15 MB of empty messages',
      target: '/v1/chat/completions',
      body: Buffer.from(
        JSON.stringify({ messages: Array.from({ length: 500_000 }, () => ({ role: 'user', content: '' })) }),
      ),
      status: 400,
      message: /^messages: at most 4096 messages per request$/,
      withinMs: 5000,
      healthWithinMs: 250,
    },
  ];
  for (const c of cases) {
    const health = pollHealth();
    const reply = await send('POST', c.target, c.body);
    const { maxMs, polls } = await health.stop();
    assert.ok(reply, c.name);
    process.stderr.write(
      `fuzz case: ${c.name}: ${reply.status} in ${reply.ms.toFixed(0)} ms, /health max ${maxMs.toFixed(0)} ms\n`,
    );
    assert.equal(reply.status, c.status, `${c.name}: ${reply.body.slice(0, 300)}`);
    assert.match(assertOpenAIError(reply, c.name).message, c.message, c.name);
    assert.ok(reply.ms < (c.withinMs ?? 1000), `${c.name}: answered in ${reply.ms.toFixed(0)} ms`);
    assert.ok(
      maxMs < (c.healthWithinMs ?? HEALTH_LIMIT_MS),
      `${c.name}: /health took ${maxMs.toFixed(0)} ms (${polls} polls)`,
    );
  }
});

/** Sends `requests` from 8 concurrent clients, checking every reply; returns the statuses seen. */
async function runFuzz(requests: FuzzRequest[]): Promise<Map<number, number>> {
  const statuses = new Map<number, number>();
  let next = 0;
  const client = async () => {
    while (next < requests.length) {
      const index = next++;
      const r = requests[index];
      const what = `request ${index} (${r.method} ${r.target.slice(0, 60)} ${String(r.body ?? '').slice(0, 120)})`;
      const reply = await send(r.method, r.target, r.body, {
        headers: r.headers,
        abortAfterMs: r.abortAfterMs,
      }).catch((err: Error) => assert.fail(`${what}: ${err.message}`));
      if (!reply) continue;
      statuses.set(reply.status, (statuses.get(reply.status) ?? 0) + 1);
      assert.ok(reply.status < 500, `${what}: ${reply.status} ${reply.body.slice(0, 300)}`);
      if (reply.status >= 400) assertOpenAIError(reply, what);
      if (reply.status === 200 && reply.body.startsWith('data: ')) {
        assert.ok(reply.body.endsWith('data: [DONE]\n\n'), `${what}: the stream ends with [DONE]`);
        assert.doesNotMatch(
          reply.body,
          /"type":"internal_server_error"/,
          `${what}: no internal error mid-stream`,
        );
      }
    }
  };
  await Promise.all(Array.from({ length: 8 }, client));
  return statuses;
}

test('a few thousand random requests: no 5xx, every error in OpenAI shape, /health fast, memory back', async () => {
  // A first round warms what stays allocated (engine arenas, worker heaps, caches); the baseline follows it.
  await runFuzz(fuzzRequests(2000, 16));
  await new Promise((r) => setTimeout(r, 1000));
  const baseline = serve.rssMiB();
  const requests = fuzzRequests(2000, 17);
  const health = pollHealth();
  const started = performance.now();
  const statuses = await runFuzz(requests);
  const seconds = (performance.now() - started) / 1000;
  const { latencies, polls } = await health.stop();
  latencies.sort((a, b) => a - b);
  const p99 = latencies[Math.floor(latencies.length * 0.99)];
  // Answered 2xx and 4xx alike, and the generations that ran did run.
  assert.ok((statuses.get(200) ?? 0) > 100, `statuses: ${JSON.stringify([...statuses])}`);
  assert.ok((statuses.get(400) ?? 0) > 500, `statuses: ${JSON.stringify([...statuses])}`);
  // Memory: what the requests allocated is given back (V8 keeps some heap; allow 64 MiB).
  await new Promise((r) => setTimeout(r, 2000));
  const rss = serve.rssMiB();
  process.stderr.write(
    `fuzz: ${requests.length} requests in ${seconds.toFixed(1)} s, statuses ${JSON.stringify(Object.fromEntries(statuses))}, ` +
      `/health p50 ${latencies[Math.floor(latencies.length / 2)].toFixed(1)} p99 ${p99.toFixed(1)} max ` +
      `${latencies.at(-1)?.toFixed(1)} ms over ${polls} polls, RSS ${baseline.toFixed(0)} → ${rss.toFixed(0)} MiB\n`,
  );
  // Generation competes for the CPU here (8 clients, the engine worker and this test on as few as two
  // cores), so /health gets a looser bound than beside a single hostile request.
  assert.ok(p99 < 2 * HEALTH_LIMIT_MS, `/health p99 ${p99.toFixed(0)} ms over ${polls} polls`);
  assert.ok(rss - baseline < 64, `RSS grew from ${baseline.toFixed(0)} to ${rss.toFixed(0)} MiB`);
  const alive = await send('GET', '/health');
  assert.equal(alive?.status, 200);
});
