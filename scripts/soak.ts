/**
 * Soak test of `internvl serve`: starts the CLI server as a child process on 127.0.0.1 (a free
 * port; nothing else is contacted) and runs --clients concurrent clients for --minutes, each
 * looping over a mix of requests: plain chat, chat with an image (data URL), streamed chat, a
 * streamed chat it aborts part-way, and a legacy completion. /health is polled throughout and the
 * server's RSS sampled. Prints one JSON object: requests and failures by kind, latency p50/p99,
 * /health latency, and RSS growth. Bounded: every request has a timeout, and the run stops at the
 * deadline (in-flight requests are then cut off and not counted).
 *
 *   node --import tsx scripts/soak.ts [--model DIR] [--minutes 30] [--clients 8] [--max-tokens 16]
 *     [--threads N] [--cache-dir DIR] [--json FILE]
 */
import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { goldenModelDir } from '../test/helpers.js';
import { startServe } from '../test/serve-process.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    minutes: { type: 'string', default: '30' },
    clients: { type: 'string', default: '8' },
    'max-tokens': { type: 'string', default: '16' },
    threads: { type: 'string' },
    'cache-dir': { type: 'string' },
    json: { type: 'string' },
  },
});

function positive(text: string, name: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got '${text}'`);
  return n;
}

const minutes = positive(values.minutes, 'minutes');
const clients = Math.round(positive(values.clients, 'clients'));
const maxTokens = Math.round(positive(values['max-tokens'], 'max-tokens'));
const REQUEST_TIMEOUT_MS = 120_000;
const model = values.model ?? goldenModelDir('tiny-internvl2_5-qwen2');

/** A few distinct images (so the feature cache does not answer every request), as data URLs. */
async function testImages(): Promise<string[]> {
  const sizes = [
    [448, 448],
    [640, 360],
    [300, 500],
    [96, 64],
  ];
  return Promise.all(
    sizes.map(async ([width, height], k) => {
      const raw = Buffer.alloc(width * height * 3);
      for (let i = 0; i < raw.length; i++) raw[i] = (i * (7 + k) + k * 31) % 256;
      const png = await sharp(raw, { raw: { width, height, channels: 3 } })
        .png()
        .toBuffer();
      return `data:image/png;base64,${png.toString('base64')}`;
    }),
  );
}

type Kind = 'chat' | 'image' | 'stream' | 'abort' | 'completion';
const KINDS: Kind[] = ['chat', 'image', 'stream', 'abort', 'completion'];

interface Outcome {
  kind: Kind;
  ok: boolean;
  ms: number;
  error?: string;
}

const quantile = (sorted: number[], q: number) =>
  sorted.length === 0
    ? null
    : Number(sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))].toFixed(1));

const flags = ['--max-batch-size', String(clients), '--max-tiles', '2'];
if (values.threads) flags.push('--threads', values.threads);
const serve = await startServe(model, flags, values['cache-dir']);
const images = await testImages();
const deadline = Date.now() + minutes * 60_000;
const stopAll = new AbortController();

async function oneRequest(kind: Kind, seed: number): Promise<Outcome> {
  const started = performance.now();
  const text = `Request ${seed}: describe what you see in a few words.`;
  const stream = kind === 'stream' || kind === 'abort';
  const body =
    kind === 'completion'
      ? { prompt: text, max_tokens: maxTokens, temperature: 0.8, seed }
      : {
          messages: [
            {
              role: 'user',
              content:
                kind === 'image'
                  ? [
                      { type: 'image_url', image_url: { url: images[seed % images.length] } },
                      { type: 'text', text },
                    ]
                  : text,
            },
          ],
          max_tokens: maxTokens,
          temperature: 0.8,
          seed,
          stream,
        };
  const cutOff = new AbortController();
  const signal = AbortSignal.any([cutOff.signal, stopAll.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]);
  try {
    const res = await fetch(`${serve.url}/v1/${kind === 'completion' ? 'completions' : 'chat/completions'}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal,
    });
    if (kind === 'abort') {
      await res.body?.getReader().read();
      cutOff.abort();
      return { kind, ok: res.status === 200, ms: performance.now() - started };
    }
    const reply = await res.text();
    const ms = performance.now() - started;
    if (res.status !== 200)
      return { kind, ok: false, ms, error: `HTTP ${res.status}: ${reply.slice(0, 200)}` };
    if (stream && (!reply.endsWith('data: [DONE]\n\n') || reply.includes('"error"'))) {
      return { kind, ok: false, ms, error: `bad stream: ${reply.slice(-200)}` };
    }
    return { kind, ok: true, ms };
  } catch (err) {
    const ms = performance.now() - started;
    if (kind === 'abort' && cutOff.signal.aborted) return { kind, ok: true, ms };
    return { kind, ok: false, ms, error: (err as Error).message };
  }
}

const outcomes: Outcome[] = [];
const health: number[] = [];
const rss: { atS: number; mib: number }[] = [];
const t0 = performance.now();

const client = async (c: number) => {
  for (let i = 0; Date.now() < deadline; i++) {
    const kind = KINDS[(c + i) % KINDS.length];
    const outcome = await oneRequest(kind, c * 1_000_000 + i);
    if (!stopAll.signal.aborted) outcomes.push(outcome);
  }
};
const healthPoll = async () => {
  while (Date.now() < deadline) {
    const started = performance.now();
    const res = await fetch(`${serve.url}/health`, { signal: AbortSignal.timeout(10_000) }).catch(
      () => undefined,
    );
    health.push(res?.status === 200 ? performance.now() - started : Number.POSITIVE_INFINITY);
    await res?.text();
    await new Promise((r) => setTimeout(r, 100));
  }
};
const rssSample = async () => {
  while (Date.now() < deadline) {
    rss.push({ atS: Math.round((performance.now() - t0) / 1000), mib: Math.round(serve.rssMiB()) });
    await new Promise((r) => setTimeout(r, 5000));
  }
};
const stopTimer = setTimeout(() => stopAll.abort(), deadline - Date.now() + 5000);

try {
  await Promise.all([...Array.from({ length: clients }, (_, c) => client(c)), healthPoll(), rssSample()]);
} finally {
  clearTimeout(stopTimer);
  stopAll.abort();
}
rss.push({ atS: Math.round((performance.now() - t0) / 1000), mib: Math.round(serve.rssMiB()) });
const metrics = await (await fetch(`${serve.url}/metrics`)).text();
await serve.stop();
const loopDelayMs = (q: string) =>
  Number(
    (
      Number(new RegExp(`internvl_event_loop_delay_seconds\\{quantile="${q}"\\} (\\S+)`).exec(metrics)?.[1]) *
      1000
    ).toFixed(1),
  );

const byKind = Object.fromEntries(
  KINDS.map((kind) => {
    const mine = outcomes.filter((o) => o.kind === kind);
    return [kind, { requests: mine.length, failed: mine.filter((o) => !o.ok).length }];
  }),
);
const latencies = outcomes
  .filter((o) => o.ok && o.kind !== 'abort')
  .map((o) => o.ms)
  .sort((a, b) => a - b);
const healthSorted = [...health].sort((a, b) => a - b);
// Growth is measured from the first sample after a minute's warm-up (or the first sample of a shorter run).
const warm = rss.find((s) => s.atS >= 60) ?? rss[0];
const report = {
  model,
  minutes,
  clients,
  maxTokens,
  requests: outcomes.length,
  failed: outcomes.filter((o) => !o.ok).length,
  byKind,
  firstFailures: outcomes
    .filter((o) => !o.ok)
    .slice(0, 5)
    .map((o) => `${o.kind}: ${o.error}`),
  latencyMs: { p50: quantile(latencies, 0.5), p99: quantile(latencies, 0.99) },
  healthMs: {
    polls: health.length,
    failed: health.filter((ms) => !Number.isFinite(ms)).length,
    p50: quantile(healthSorted, 0.5),
    p99: quantile(healthSorted, 0.99),
    max: quantile(healthSorted, 1),
  },
  serverEventLoopDelayMs: { p50: loopDelayMs('0.5'), p99: loopDelayMs('0.99'), max: loopDelayMs('1') },
  rssMiB: {
    first: rss[0].mib,
    afterWarmUp: warm.mib,
    max: Math.max(...rss.map((s) => s.mib)),
    end: rss[rss.length - 1].mib,
    growthAfterWarmUp: rss[rss.length - 1].mib - warm.mib,
  },
};
const text = `${JSON.stringify(report, null, 2)}\n`;
process.stdout.write(text);
if (values.json) await writeFile(values.json, text);
