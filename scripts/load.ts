/**
 * Load test of `internvl serve` on loopback: starts the server in this process on 127.0.0.1 (a free
 * port), then for each client count runs that many concurrent streaming chat clients, each sending
 * --requests requests of --max-tokens tokens (ignore_eos, so every answer has the full length).
 * Prints one JSON object: aggregate completion tokens/s and time to first token (p50 and p99, nearest
 * rank over the level's requests) per level: the time to the first streamed chunk with text (every id
 * of a create-random tokenizer decodes to visible text). --logprobs also asks for logprobs (each token's
 * log-sum-exp over the vocabulary is then computed too), so a model whose ids may decode to nothing
 * still streams a chunk per token.
 * It stops by itself: the work is bounded, and --time-limit-s aborts whatever is still running.
 *
 *   node --import tsx scripts/load.ts [--shape InternVL2_5-1B | --model DIR] [--clients 1,2,4,8]
 *     [--requests 2] [--max-tokens 32] [--image] [--logprobs] [--threads N] [--time-limit-s 600] [--json FILE]
 *     [--llm-dtype fp32|int8|int4] [--prefill-dtype fp32|int8|int4] [--vit-dtype fp32|int8]
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { PRECISION_FLAGS, precisionOptions } from '../src/cli/args.js';
import { defaultGraphCacheDir } from '../src/engine/graph-cache.js';
import { pipeline } from '../src/pipeline/pipeline.js';
import { createServer } from '../src/server/server.js';
import { createRandomCheckpoint, hasWeights } from '../src/tools/random-checkpoint.js';

const { values } = parseArgs({
  options: {
    shape: { type: 'string', default: 'InternVL2_5-1B' },
    model: { type: 'string' },
    clients: { type: 'string', default: '1,2,4,8' },
    requests: { type: 'string', default: '2' },
    'max-tokens': { type: 'string', default: '32' },
    image: { type: 'boolean', default: false },
    logprobs: { type: 'boolean', default: false },
    threads: { type: 'string' },
    'time-limit-s': { type: 'string', default: '600' },
    json: { type: 'string' },
    ...PRECISION_FLAGS,
  },
});

function positiveInt(text: string, name: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new Error(`--${name} must be a positive integer, got '${text}'`);
  return n;
}

const levels = values.clients.split(',').map((c) => positiveInt(c.trim(), 'clients'));
const requestsPerClient = positiveInt(values.requests, 'requests');
const maxTokens = positiveInt(values['max-tokens'], 'max-tokens');
const deadline = AbortSignal.timeout(positiveInt(values['time-limit-s'], 'time-limit-s') * 1000);

const modelDir =
  values.model ?? path.join(path.dirname(defaultGraphCacheDir()), 'random-models', `${values.shape}-seed0`);
if (!values.model && !hasWeights(modelDir)) {
  process.stderr.write(`creating random ${values.shape} checkpoint in ${modelDir}\n`);
  await createRandomCheckpoint({ shape: values.shape, out: modelDir, seed: 0 });
}

const pipe = await pipeline(modelDir, {
  threads: values.threads ? positiveInt(values.threads, 'threads') : undefined,
  ...precisionOptions(values),
});
const server = await createServer(pipe, { modelName: 'load', maxBatchSize: Math.max(...levels) });
const { url } = await server.listen(0, '127.0.0.1');

let imagePart: unknown[] = [];
if (values.image) {
  // A 448×448 gradient: one tile (no thumbnail), the same for every request.
  const raw = Buffer.alloc(448 * 448 * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 7) % 256;
  const png = await sharp(raw, { raw: { width: 448, height: 448, channels: 3 } })
    .png()
    .toBuffer();
  imagePart = [{ type: 'image_url', image_url: { url: `data:image/png;base64,${png.toString('base64')}` } }];
}

interface RequestStats {
  completionTokens: number;
  ttftS: number;
}

async function oneRequest(seed: number): Promise<RequestStats> {
  const started = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    signal: deadline,
    body: JSON.stringify({
      messages: [
        { role: 'user', content: [...imagePart, { type: 'text', text: `Request ${seed}: tell a story.` }] },
      ],
      max_tokens: maxTokens,
      ignore_eos: true,
      temperature: 0.8,
      seed,
      logprobs: values.logprobs,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (res.status !== 200 || !res.body) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let ttftS = Number.NaN;
  let completionTokens = 0;
  let buffered = '';
  for await (const bytes of res.body) {
    buffered += Buffer.from(bytes).toString('utf8');
    const events = buffered.split('\n\n');
    buffered = events.pop() ?? '';
    for (const event of events) {
      const data = event.replace(/^data: /, '');
      if (data === '[DONE]') continue;
      const parsed = JSON.parse(data) as {
        choices?: { delta?: { content?: string }; logprobs?: unknown }[];
        usage?: { completion_tokens: number } | null;
        error?: { message: string };
      };
      if (parsed.error) throw new Error(parsed.error.message);
      const token = parsed.choices?.some((c) => c.delta?.content || c.logprobs);
      if (token && Number.isNaN(ttftS)) ttftS = (performance.now() - started) / 1000;
      if (parsed.usage) completionTokens = parsed.usage.completion_tokens;
    }
  }
  return { completionTokens, ttftS };
}

/** Nearest-rank percentile (p in (0, 100]). */
const percentile = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.max(0, Math.ceil((p / 100) * xs.length) - 1)];

const results = [];
try {
  await oneRequest(0); // warm-up: graphs built, caches filled
  for (const clients of levels) {
    const t0 = performance.now();
    const perClient = await Promise.all(
      Array.from({ length: clients }, async (_, c) => {
        const stats: RequestStats[] = [];
        for (let r = 0; r < requestsPerClient; r++)
          stats.push(await oneRequest(1 + c * requestsPerClient + r));
        return stats;
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const all = perClient.flat();
    const tokens = all.reduce((n, s) => n + s.completionTokens, 0);
    const level = {
      clients,
      requests: all.length,
      completionTokens: tokens,
      seconds: Number(seconds.toFixed(3)),
      tokensPerSecond: Number((tokens / seconds).toFixed(2)),
      ttftP50S: Number(
        percentile(
          all.map((s) => s.ttftS),
          50,
        ).toFixed(3),
      ),
      ttftP99S: Number(
        percentile(
          all.map((s) => s.ttftS),
          99,
        ).toFixed(3),
      ),
    };
    results.push(level);
    process.stderr.write(`${JSON.stringify(level)}\n`);
  }
} finally {
  await server.close();
  await pipe.close();
}

const report = {
  model: values.model ?? `${values.shape} (random weights)`,
  maxTokens,
  requestsPerClient,
  image: values.image,
  logprobs: values.logprobs,
  levels: results,
};
const text = `${JSON.stringify(report, null, 2)}\n`;
process.stdout.write(text);
if (values.json) await writeFile(values.json, text);
