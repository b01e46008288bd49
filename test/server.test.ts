import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { findFfmpeg } from '../src/io/video.js';
import { type Pipeline, pipeline } from '../src/pipeline/pipeline.js';
import { createServer, type InternVLServer } from '../src/server/server.js';
import { GOLDEN_DIR, goldenModelDir } from './helpers.js';

const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-server-cache-'));
const IMAGE = path.join(GOLDEN_DIR, 'prep/sources/s0_500x300_rgb.png');
const dataUrl = `data:image/png;base64,${readFileSync(IMAGE).toString('base64')}`;
const smallDataUrl = `data:image/png;base64,${readFileSync(path.join(GOLDEN_DIR, 'prep/sources/s2_37x61_rgb.png')).toString('base64')}`;
const API_KEY = 'sk-test-key';
/** Sampled, fixed length: the same seed must give the same tokens. */
const sampled = { temperature: 0.9, top_k: 0, seed: 1234, max_tokens: 12, ignore_eos: true };

let pipe: Pipeline;
let server: InternVLServer;
let base: string;
let client: OpenAI;

function imageMessage(text: string, url = dataUrl): OpenAI.Chat.ChatCompletionMessageParam[] {
  return [
    {
      role: 'user',
      content: [
        { type: 'image_url', image_url: { url } },
        { type: 'text', text },
      ],
    },
  ];
}

async function post(route: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${base}${route}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `metric ${name} missing`);
  return Number(line.split(' ')[1]);
}

async function assertHealthy(): Promise<void> {
  const res = await fetch(`${base}/health`);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { status: 'ok' });
}

/** The text of a streamed chat, read with fetch (SSE). */
async function streamText(body: Record<string, unknown>): Promise<{ text: string; events: unknown[] }> {
  const res = await post('/v1/chat/completions', { ...body, stream: true });
  assert.equal(res.status, 200, await res.clone().text());
  const raw = await res.text();
  const events = raw
    .split('\n\n')
    .filter((e) => e.startsWith('data: '))
    .map((e) => e.slice(6));
  assert.equal(events.at(-1), '[DONE]');
  const parsed = events.slice(0, -1).map((e) => JSON.parse(e));
  const text = parsed.map((e) => e.choices?.[0]?.delta?.content ?? '').join('');
  return { text, events: parsed };
}

before(async () => {
  pipe = await pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), { cacheDir, threads: 1, maxTiles: 2 });
  server = await createServer(pipe, {
    modelName: 'tiny',
    apiKey: API_KEY,
    maxBatchSize: 8,
    maxImages: 2,
    bodyLimitBytes: 1024 * 1024,
    bodyTimeoutMs: 500,
  });
  base = (await server.listen(0, '127.0.0.1')).url;
  client = new OpenAI({ apiKey: API_KEY, baseURL: `${base}/v1`, maxRetries: 0 });
});
after(async () => {
  await server.close();
  await pipe.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

describe('the official openai client', () => {
  test('lists the model', async () => {
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => [m.id, m.object]),
      [['tiny', 'model']],
    );
    assert.equal((await client.models.retrieve('tiny')).id, 'tiny');
  });

  test('plain and streaming chat with a data-URL image give the same text for the same seed', async () => {
    const plain = await client.chat.completions.create({
      model: 'tiny',
      messages: imageMessage('Describe the image.'),
      ...sampled,
    } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
    assert.equal(plain.object, 'chat.completion');
    assert.equal(plain.choices.length, 1);
    assert.equal(plain.choices[0].message.role, 'assistant');
    assert.equal(plain.choices[0].finish_reason, 'length');
    assert.equal(plain.usage?.completion_tokens, 12);
    assert.ok((plain.usage?.prompt_tokens ?? 0) > 256, 'image tokens count in the prompt');
    const ref = await pipe.infer(
      [
        {
          role: 'user',
          content: [
            { type: 'image', image: IMAGE, maxTiles: 2 },
            { type: 'text', text: 'Describe the image.' },
          ],
        },
      ],
      { temperature: 0.9, topK: 0, seed: 1234, maxNewTokens: 12, ignoreEos: true },
    );
    assert.equal(plain.choices[0].message.content, ref.text, 'the server answers what the pipeline answers');

    const stream = await client.chat.completions.create({
      model: 'tiny',
      messages: imageMessage('Describe the image.'),
      ...sampled,
      stream: true,
      stream_options: { include_usage: true },
    } as OpenAI.Chat.ChatCompletionCreateParamsStreaming);
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined | null;
    let role: string | undefined;
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices[0];
      if (!choice) continue;
      role ??= choice.delta.role;
      text += choice.delta.content ?? '';
      finish = choice.finish_reason ?? finish;
    }
    assert.equal(role, 'assistant');
    assert.equal(text, plain.choices[0].message.content);
    assert.equal(finish, 'length');
    assert.equal(usage?.prompt_tokens, plain.usage?.prompt_tokens);
    assert.equal(usage?.completion_tokens, plain.usage?.completion_tokens);
    // The same prompt a third time: all but its last token come from the prefix cache, same text.
    assert.equal(usage?.prompt_tokens_details?.cached_tokens, (plain.usage?.prompt_tokens ?? 0) - 1);
  });

  test('logprobs, stop, n with derived seeds', async () => {
    const r = await client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hello' }],
      ...sampled,
      logprobs: true,
      top_logprobs: 2,
      n: 2,
    } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
    assert.equal(r.choices.length, 2);
    const [a, b] = r.choices;
    assert.equal(a.logprobs?.content?.length, 12);
    for (const entry of a.logprobs?.content ?? []) {
      assert.equal(entry.top_logprobs.length, 2);
      assert.ok(entry.logprob <= 0);
      assert.deepEqual(entry.bytes, [...Buffer.from(entry.token)]);
    }
    assert.notEqual(a.message.content, b.message.content, 'choice 1 samples with seed + 1');
    const single = await client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hello' }],
      ...sampled,
    } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
    assert.equal(single.choices[0].message.content, a.message.content);
    assert.equal(r.usage?.completion_tokens, 24);
    assert.equal(r.usage?.prompt_tokens, single.usage?.prompt_tokens);

    const chars = [...(a.message.content ?? '')];
    const stop = chars.find((c, i) => i >= 2 && c !== '\uFFFD');
    if (stop) {
      const stopped = await client.chat.completions.create({
        model: 'tiny',
        messages: [{ role: 'user', content: 'Hello' }],
        ...sampled,
        stop: [stop],
      } as OpenAI.Chat.ChatCompletionCreateParamsNonStreaming);
      assert.equal(
        stopped.choices[0].message.content,
        a.message.content?.slice(0, a.message.content.indexOf(stop)),
      );
      assert.equal(stopped.choices[0].finish_reason, 'stop');
    }
  });

  test('completions continue the raw prompt; streamed equals plain', async () => {
    const params = { model: 'tiny', prompt: 'Once upon a time', ...sampled };
    const plain = await client.completions.create(params as OpenAI.CompletionCreateParamsNonStreaming);
    assert.equal(plain.object, 'text_completion');
    assert.equal(plain.usage?.prompt_tokens, pipe.tokenizer.encode('Once upon a time').length);
    let text = '';
    for await (const chunk of await client.completions.create({
      ...params,
      stream: true,
    } as OpenAI.CompletionCreateParamsStreaming)) {
      text += chunk.choices[0]?.text ?? '';
    }
    assert.equal(text, plain.choices[0].text);
    const two = await client.completions.create({
      ...params,
      prompt: ['a', 'b'],
      logprobs: 1,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    assert.deepEqual(
      two.choices.map((c) => c.index),
      [0, 1],
    );
    assert.equal(two.choices[0].logprobs?.tokens?.length, 12);
  });

  test('errors come back as APIError with status and message', async () => {
    const bad = new OpenAI({ apiKey: 'wrong', baseURL: `${base}/v1`, maxRetries: 0 });
    await assert.rejects(bad.models.list(), (e: unknown) => e instanceof OpenAI.APIError && e.status === 401);
    await assert.rejects(
      client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }),
      (e: unknown) => e instanceof OpenAI.NotFoundError && /model 'nope' does not exist/.test(e.message),
    );
  });
});

test('a video_url is sampled on the server into frames, as the pipeline samples a video file', async () => {
  const video = path.join(cacheDir, 'clip.mkv');
  const made = spawnSync(
    findFfmpeg(),
    [
      '-v',
      'error',
      '-f',
      'lavfi',
      '-i',
      'testsrc=size=64x48:rate=10',
      '-frames:v',
      '12',
      '-c:v',
      'ffv1',
      video,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  assert.equal(made.status, 0, made.stderr);
  const url = `data:video/x-matroska;base64,${readFileSync(video).toString('base64')}`;
  const res = await post('/v1/chat/completions', {
    messages: [
      {
        role: 'user',
        content: [
          { type: 'video_url', video_url: { url, num_segments: 4 } },
          { type: 'text', text: 'What happens?' },
        ],
      },
    ],
    max_tokens: 6,
  });
  const body = (await res.json()) as {
    choices: { message: { content: string } }[];
    usage: { prompt_tokens: number };
  };
  assert.equal(res.status, 200, JSON.stringify(body));
  const ref = await pipe.infer(
    { prompt: 'What happens?', video: { path: video, numSegments: 4 } },
    { maxNewTokens: 6 },
  );
  assert.equal(body.choices[0].message.content, ref.text);
  assert.equal(body.usage.prompt_tokens, ref.usage.promptTokens);
  assert.equal(ref.usage.imageTokens, 4 * 256, 'one tile per frame');
  const tooMany = await post('/v1/chat/completions', {
    messages: [{ role: 'user', content: [{ type: 'video_url', video_url: { url, num_segments: 33 } }] }],
  });
  assert.equal(tooMany.status, 400);
  assert.match(await tooMany.text(), /num_segments is 33, above the server's limit of 32 frames/);
});

describe('error cases: status, message, and the server stays healthy', () => {
  const chat = (body: Record<string, unknown>) => post('/v1/chat/completions', { model: 'tiny', ...body });
  const cases: [string, () => Promise<Response>, number, RegExp][] = [
    ['malformed JSON', () => post('/v1/chat/completions', '{"model": '), 400, /not valid JSON/],
    ['missing messages', () => chat({}), 400, /^messages: /],
    ['empty messages', () => chat({ messages: [] }), 400, /messages must not be empty/],
    [
      'unknown model',
      () => chat({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] }),
      404,
      /gpt-4o/,
    ],
    [
      'undecodable image',
      () =>
        chat({
          messages: imageMessage('x', `data:image/png;base64,${Buffer.from('not a png').toString('base64')}`),
        }),
      400,
      /messages\[0\]\.content\[0\]\.image_url\.url.*not a readable image/,
    ],
    [
      'oversized image (max_dynamic_patch above the limit)',
      () =>
        chat({
          messages: [
            {
              role: 'user',
              content: [{ type: 'image_url', image_url: { url: dataUrl, max_dynamic_patch: 99 } }],
            },
          ],
        }),
      400,
      /max_dynamic_patch is 99, above the server's limit of 24 tiles/,
    ],
    [
      'too many images',
      () =>
        chat({
          messages: [
            {
              role: 'user',
              content: [1, 2, 3].map(() => ({ type: 'image_url', image_url: { url: smallDataUrl } })),
            },
          ],
        }),
      400,
      /3 images, above the server's limit of 2/,
    ],
    [
      'URL fetch of a private address',
      () => chat({ messages: imageMessage('x', `${base}/health`) }),
      400,
      /not a public address/,
    ],
    [
      'local file without --allow-local-files',
      () => chat({ messages: imageMessage('x', IMAGE) }),
      400,
      /--allow-local-files/,
    ],
    [
      'prompt longer than the context',
      () => chat({ messages: [{ role: 'user', content: 'x' }], max_tokens: 9000 }),
      400,
      /sessionLen 8192/,
    ],
    [
      'bad sampling field',
      () => chat({ messages: [{ role: 'user', content: 'x' }], temperature: 5 }),
      400,
      /^temperature: /,
    ],
    [
      'unsupported feature',
      () => chat({ messages: [{ role: 'user', content: 'x' }], presence_penalty: 1 }),
      400,
      /presence_penalty is not supported/,
    ],
    [
      'last message not from the user',
      () => chat({ messages: [{ role: 'assistant', content: 'x' }] }),
      400,
      /last message must be from the user/,
    ],
    [
      'unknown content part',
      () => chat({ messages: [{ role: 'user', content: [{ type: 'audio' }] }] }),
      400,
      /type text, image_url or video_url/,
    ],
    ['missing API key', () => post('/v1/chat/completions', {}, { authorization: '' }), 401, /API key/],
    [
      'body too large',
      () => post('/v1/chat/completions', { pad: 'x'.repeat(2 * 1024 * 1024) }),
      413,
      /above the limit of 1048576/,
    ],
    [
      'wrong method',
      () => fetch(`${base}/v1/chat/completions`, { headers: { authorization: `Bearer ${API_KEY}` } }),
      405,
      /GET is not allowed/,
    ],
    [
      'bad field inside an image part',
      () => chat({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 3 } }] }] }),
      400,
      /^messages\[0\]\.content\[0\]\.image_url\.url: /,
    ],
    ['unknown route', () => fetch(`${base}/v2/everything`), 404, /no route/],
  ];
  for (const [name, send, status, pattern] of cases) {
    test(name, async () => {
      const res = await send();
      const body = (await res.json()) as { error: { message: string; type: string } };
      assert.equal(res.status, status, JSON.stringify(body));
      assert.match(body.error.message, pattern);
      assert.equal(typeof body.error.type, 'string');
      await assertHealthy();
    });
  }

  test('a body that does not arrive in time gets 408', async () => {
    const { port } = new URL(base);
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(Number(port), '127.0.0.1', () => {
        socket.write(
          `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${API_KEY}\r\ncontent-length: 100\r\n\r\n{"mod`,
        );
      });
      let data = '';
      socket.on('data', (d) => {
        data += d;
      });
      socket.on('close', () => resolve(data));
      socket.on('error', reject);
    });
    assert.match(reply, /^HTTP\/1\.1 408/);
    assert.match(reply, /did not arrive within 500 ms/);
    await assertHealthy();
  });

  test('an internal failure is a 500 and the next request succeeds', async () => {
    const broken = new Proxy(pipe, {
      get(target, key) {
        if (key === 'stream') {
          return () => {
            throw new TypeError('engine exploded');
          };
        }
        const value = Reflect.get(target, key, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const other = await createServer(broken, { modelName: 'tiny' });
    const { url } = await other.listen(0, '127.0.0.1');
    try {
      const res = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        body: JSON.stringify({ messages: [{ role: 'user', content: 'x' }] }),
      });
      assert.equal(res.status, 500);
      assert.match(((await res.json()) as { error: { message: string } }).error.message, /engine exploded/);
      assert.equal((await fetch(`${url}/health`)).status, 200);
    } finally {
      await other.close();
    }
    const ok = await post('/v1/chat/completions', {
      messages: [{ role: 'user', content: 'x' }],
      max_tokens: 2,
    });
    assert.equal(ok.status, 200);
  });
});

describe('concurrency', () => {
  test('8 concurrent streaming clients each get the text they get alone', async () => {
    const bodies = Array.from({ length: 8 }, (_, i) => ({
      model: 'tiny',
      messages: i % 2 ? imageMessage(`Client ${i}?`) : [{ role: 'user', content: `Client ${i}?` }],
      ...sampled,
      seed: 100 + i,
    }));
    const alone: string[] = [];
    for (const body of bodies) alone.push((await streamText(body)).text);
    const together = await Promise.all(bodies.map((body) => streamText(body)));
    assert.deepEqual(
      together.map((r) => r.text),
      alone,
    );
    assert.equal(await metric('internvl_running_sequences'), 0);
    assert.equal(await metric('internvl_queue_depth'), 0);
  });

  test('a client that disconnects mid-stream aborts its generation and frees its slot', async () => {
    let seen: AbortSignal | undefined;
    const spied = new Proxy(pipe, {
      get(target, key) {
        if (key === 'stream') {
          return (input: unknown, gen: unknown, options: { signal?: AbortSignal }) => {
            seen = options.signal;
            return target.stream(input as never, gen as never, options);
          };
        }
        const value = Reflect.get(target, key, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const limited = await createServer(spied, { modelName: 'tiny', maxBatchSize: 1 });
    const { url } = await limited.listen(0, '127.0.0.1');
    const metricOf = async (name: string) => {
      const text = await (await fetch(`${url}/metrics`)).text();
      return Number(
        text
          .split('\n')
          .find((l) => l.startsWith(`${name} `))
          ?.split(' ')[1],
      );
    };
    try {
      const controller = new AbortController();
      const res = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        body: JSON.stringify({
          messages: [{ role: 'user', content: 'Go on forever.' }],
          max_tokens: 4000,
          ignore_eos: true,
          stream: true,
        }),
        signal: controller.signal,
      });
      const reader = res.body!.getReader();
      let got = '';
      while (!got.includes('"content":"') || got.split('data: ').length < 4) {
        const { value } = await reader.read();
        got += new TextDecoder().decode(value);
      }
      controller.abort();
      await reader.cancel().catch(() => {});
      const deadline = Date.now() + 10_000;
      while ((await metricOf('internvl_aborted_requests_total')) < 1 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(seen?.aborted, true, 'the pipeline call was aborted');
      assert.equal(await metricOf('internvl_aborted_requests_total'), 1);
      assert.equal(await metricOf('internvl_running_sequences'), 0);
      assert.ok((await metricOf('internvl_completion_tokens_total')) < 4000, 'generation stopped early');
      // The only slot is free again: the next request runs at once.
      const next = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        body: JSON.stringify({ messages: [{ role: 'user', content: 'x' }], max_tokens: 2 }),
      });
      assert.equal(next.status, 200);
      const text = await (await fetch(`${url}/metrics`)).text();
      assert.match(text, /internvl_requests_total\{endpoint="\/v1\/chat\/completions",status="499"\} 1/);
      assert.match(text, /internvl_time_to_first_token_seconds_count [1-9]/);
    } finally {
      await limited.close();
    }
  });
});
