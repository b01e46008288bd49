/**
 * Two `internvl serve` replicas behind nginx on loopback (docs/deployment.md), checked end to end:
 * starts the replicas on free 127.0.0.1 ports, writes an nginx config into a temporary folder and
 * starts nginx in front (127.0.0.1 only), sends a bounded number of chat requests through it and checks
 * that all succeed and both replicas served some, sends SIGTERM to one replica and checks that requests
 * still succeed (nginx passes them to the other), then stops everything and removes the folder.
 * Prints one JSON object with the counts and the aggregate throughput; exits 1 when a check fails.
 *
 *   node --import tsx scripts/load-balancer.ts [--model DIR] [--requests 24] [--concurrency 4]
 *     [--max-tokens 16] [--time-limit-s 300]
 * Default model: the golden tiny model (../shared/golden/models/tiny-internvl2_5-qwen2). Needs nginx
 * on PATH (Debian: apt-get install -y nginx).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const root = path.resolve(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    model: { type: 'string', default: path.join(root, '../shared/golden/models/tiny-internvl2_5-qwen2') },
    requests: { type: 'string', default: '24' },
    concurrency: { type: 'string', default: '4' },
    'max-tokens': { type: 'string', default: '16' },
    'time-limit-s': { type: 'string', default: '300' },
  },
});

function positiveInt(text: string, name: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new Error(`--${name} must be a positive integer, got '${text}'`);
  return n;
}
const requests = positiveInt(values.requests, 'requests');
const concurrency = positiveInt(values.concurrency, 'concurrency');
const maxTokens = positiveInt(values['max-tokens'], 'max-tokens');
const deadline = Date.now() + positiveInt(values['time-limit-s'], 'time-limit-s') * 1000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A free TCP port on 127.0.0.1 (asked of the OS, then released). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

const children: ChildProcess[] = [];
function start(command: string, args: string[], env: NodeJS.ProcessEnv, log: string[]): ChildProcess {
  const child = spawn(command, args, { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout?.on('data', (d) => log.push(String(d)));
  child.stderr?.on('data', (d) => log.push(String(d)));
  children.push(child);
  return child;
}

function exited(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Polls GET url (/ready of a replica, /health of nginx) until it answers 200, at most until the deadline. */
async function waitHealthy(url: string, child: ChildProcess, log: string[]): Promise<void> {
  while (Date.now() < deadline) {
    if (child.exitCode !== null)
      throw new Error(`${url}: the process exited (${child.exitCode}):\n${log.join('')}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await sleep(250);
  }
  throw new Error(`${url} did not become healthy before the time limit:\n${log.join('')}`);
}

function nginxConfig(dir: string, listen: number, replicas: number[]): string {
  return `worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream internvl {
    least_conn;
${replicas.map((p) => `    server 127.0.0.1:${p} max_fails=1 fail_timeout=10s;`).join('\n')}
    keepalive 16;
  }
  server {
    listen 127.0.0.1:${listen};
    client_max_body_size 64m;
    location / {
      proxy_pass http://internvl;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
      proxy_next_upstream error timeout http_502 http_503;
      proxy_next_upstream_tries 2;
      add_header X-Upstream $upstream_addr always;
    }
  }
}
`;
}

interface Sent {
  ok: number;
  failed: string[];
  byUpstream: Record<string, number>;
  completionTokens: number;
  seconds: number;
}

async function send(base: string, model: string, count: number): Promise<Sent> {
  const result: Sent = { ok: 0, failed: [], byUpstream: {}, completionTokens: 0, seconds: 0 };
  let next = 0;
  const started = performance.now();
  const worker = async () => {
    while (next < count && Date.now() < deadline) {
      const i = next++;
      try {
        const res = await fetch(`${base}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            model,
            messages: [{ role: 'user', content: `Request ${i}: say something.` }],
            max_tokens: maxTokens,
            ignore_eos: true,
          }),
          signal: AbortSignal.timeout(Math.max(1000, deadline - Date.now())),
        });
        const body = (await res.json()) as { usage?: { completion_tokens: number } };
        if (!res.ok) throw new Error(`${res.status} ${JSON.stringify(body)}`);
        const upstream = res.headers.get('x-upstream') ?? 'unknown';
        result.byUpstream[upstream] = (result.byUpstream[upstream] ?? 0) + 1;
        result.completionTokens += body.usage?.completion_tokens ?? 0;
        result.ok++;
      } catch (err) {
        result.failed.push(`request ${i}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  result.seconds = (performance.now() - started) / 1000;
  return result;
}

/** The counts of a phase and its aggregate throughput. */
function rates(sent: Sent) {
  return {
    requests: sent.ok,
    byUpstream: sent.byUpstream,
    seconds: Number(sent.seconds.toFixed(2)),
    requestsPerSecond: Number((sent.ok / sent.seconds).toFixed(2)),
    completionTokensPerSecond: Number((sent.completionTokens / sent.seconds).toFixed(1)),
  };
}

const dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-lb-'));
let failures: string[] = [];
try {
  const [p1, p2, front] = [await freePort(), await freePort(), await freePort()];
  const env = { ...process.env, INTERNVL_CACHE: process.env.INTERNVL_CACHE ?? path.join(dir, 'cache') };
  const serve = (port: number, log: string[]) =>
    start(
      process.execPath,
      [
        '--import',
        'tsx',
        'src/cli/main-entry.ts',
        'serve',
        values.model,
        '--host',
        '127.0.0.1',
        '--port',
        String(port),
        '--threads',
        '1',
      ],
      env,
      log,
    );
  // The first replica converts the checkpoint into the graph cache; the second then loads it from there.
  const logs: string[][] = [[], [], []];
  const replica1 = serve(p1, logs[0]);
  // /health is liveness (200 while the model loads); /ready answers 200 once it can serve.
  await waitHealthy(`http://127.0.0.1:${p1}/ready`, replica1, logs[0]);
  const replica2 = serve(p2, logs[1]);
  await waitHealthy(`http://127.0.0.1:${p2}/ready`, replica2, logs[1]);
  await writeFile(path.join(dir, 'nginx.conf'), nginxConfig(dir, front, [p1, p2]));
  const nginx = start('nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf')], env, logs[2]);
  const base = `http://127.0.0.1:${front}`;
  await waitHealthy(`${base}/health`, nginx, logs[2]);
  const models = (await (await fetch(`${base}/v1/models`)).json()) as { data: { id: string }[] };
  const model = models.data[0].id;

  // One request straight to each replica first, so the timed requests do not include warm-up.
  for (const port of [p1, p2]) {
    const warm = await send(`http://127.0.0.1:${port}`, model, 1);
    if (warm.ok !== 1)
      failures.push(`warm-up request to 127.0.0.1:${port} failed: ${warm.failed.join('; ')}`);
  }
  const both = await send(base, model, requests);
  const upstreams = Object.keys(both.byUpstream);
  if (both.ok !== requests)
    failures.push(`${requests - both.ok} of ${requests} requests failed: ${both.failed.join('; ')}`);
  if (!upstreams.includes(`127.0.0.1:${p1}`) || !upstreams.includes(`127.0.0.1:${p2}`))
    failures.push(`requests were not spread over both replicas: ${JSON.stringify(both.byUpstream)}`);

  replica1.kill('SIGTERM');
  if (!(await exited(replica1, 30_000))) failures.push('replica 1 did not exit within 30 s of SIGTERM');
  const after = await send(base, model, requests);
  if (after.ok !== requests)
    failures.push(
      `after SIGTERM to replica 1, ${requests - after.ok} of ${requests} requests failed: ${after.failed.join('; ')}`,
    );

  const summary = {
    model: values.model,
    cpu: os.cpus()[0]?.model,
    replicas: 2,
    concurrency,
    maxTokens,
    bothReplicas: rates(both),
    afterSigterm: rates(after),
    failures,
  };
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
} catch (err) {
  failures = [...failures, err instanceof Error ? err.message : String(err)];
  process.stderr.write(`load-balancer: ${failures.at(-1)}\n`);
} finally {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      // nginx stops gracefully on SIGQUIT; the replicas on SIGTERM.
      child.kill(child.spawnfile === 'nginx' ? 'SIGQUIT' : 'SIGTERM');
      if (!(await exited(child, 15_000))) child.kill('SIGKILL');
    }
  }
  await rm(dir, { recursive: true, force: true });
}
if (failures.length > 0) {
  process.stderr.write(`load-balancer: FAILED\n${failures.join('\n')}\n`);
  process.exitCode = 1;
}
