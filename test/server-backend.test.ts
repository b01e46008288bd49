/**
 * The HTTP server on a small fake backend (no model at all): what the server itself does with a
 * backend's chunks, results and errors, and /ready while the backend loads.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InternVLError } from '../src/errors.js';
import type { ChatMessage } from '../src/pipeline/conversation.js';
import type { GenerationConfigInput } from '../src/pipeline/generation-config.js';
import type { BackendRun, ServerBackend } from '../src/server/backend.js';
import { createServer, InternVLServer } from '../src/server/server.js';

/** Answers a chat with the words of the last message in upper case, one chunk per word. */
class FakeBackend implements ServerBackend {
  readonly modelId = 'fake-model';
  readonly defaultImageTiles = 6;
  readonly seen: { messages: ChatMessage[]; gen: GenerationConfigInput }[] = [];
  closed = false;

  async chat(messages: ChatMessage[], gen: GenerationConfigInput, run: BackendRun) {
    this.seen.push({ messages, gen });
    const last = messages.at(-1)?.content;
    const text = typeof last === 'string' ? last : '';
    if (text === 'explode') throw new TypeError('the fake engine exploded');
    if (text === 'too long') throw new InternVLError('CONTEXT_OVERFLOW', 'the prompt does not fit');
    const words = text.toUpperCase().split(' ');
    const max = gen.maxNewTokens ?? words.length;
    for (const [i, word] of words.slice(0, max).entries()) {
      if (run.signal.aborted) throw run.signal.reason;
      run.onChunk({ text: i === 0 ? word : ` ${word}`, tokenIds: [100 + i] });
    }
    const completionTokens = Math.min(max, words.length);
    return {
      finishReason: max < words.length ? ('length' as const) : ('stop' as const),
      usage: { promptTokens: words.length + 3, completionTokens, imageTokens: 0, cachedTokens: 1 },
    };
  }

  async complete(prompt: string, gen: GenerationConfigInput, run: BackendRun) {
    return this.chat([{ role: 'user', content: prompt }], gen, run);
  }

  async compileResponseFormat(format: unknown) {
    if ((format as { type?: string }).type === 'json_object') {
      throw new InternVLError('BAD_INPUT', 'the fake backend writes no JSON');
    }
    return {};
  }

  async compileTools() {
    return {};
  }

  async close() {
    this.closed = true;
  }
}

async function withServer(
  backend: ServerBackend | Promise<ServerBackend>,
  run: (base: string, server: InternVLServer) => Promise<void>,
): Promise<void> {
  const server =
    backend instanceof Promise
      ? new InternVLServer(backend, 'fake-model', {}, true)
      : await createServer(backend);
  const { url } = await server.listen(0, '127.0.0.1');
  try {
    await run(url, server);
  } finally {
    await server.close();
  }
}

const post = (base: string, route: string, body: unknown) =>
  fetch(`${base}${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

test('a chat completion: the backend gets the messages and config, the reply carries its text and usage', async () => {
  const fake = new FakeBackend();
  await withServer(fake, async (base) => {
    const res = await post(base, '/v1/chat/completions', {
      model: 'fake-model',
      messages: [
        { role: 'developer', content: 'be loud' },
        { role: 'user', content: 'hello there world' },
      ],
      max_tokens: 2,
      seed: 7,
    });
    const body = (await res.json()) as Record<string, unknown> & {
      choices: { message: { content: string }; finish_reason: string }[];
    };
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(body.model, 'fake-model');
    assert.equal(body.object, 'chat.completion');
    assert.equal(body.choices[0].message.content, 'HELLO THERE');
    assert.equal(body.choices[0].finish_reason, 'length');
    assert.deepEqual(body.usage, {
      prompt_tokens: 6,
      completion_tokens: 2,
      total_tokens: 8,
      prompt_tokens_details: { cached_tokens: 1 },
    });
    assert.deepEqual(fake.seen[0].messages, [
      { role: 'system', content: 'be loud' },
      { role: 'user', content: 'hello there world' },
    ]);
    assert.equal(fake.seen[0].gen.maxNewTokens, 2);
    assert.equal(fake.seen[0].gen.seed, 7);
    const models = (await (await fetch(`${base}/v1/models`)).json()) as { data: { id: string }[] };
    assert.equal(models.data[0].id, 'fake-model');
  });
  // createServer did not load the backend, so it does not close it.
  assert.equal(fake.closed, false);
});

test('a streamed chat completion with n = 2: role, one delta per chunk, finish reasons, usage, [DONE]', async () => {
  const fake = new FakeBackend();
  await withServer(fake, async (base) => {
    const res = await post(base, '/v1/chat/completions', {
      messages: [{ role: 'user', content: 'a b c' }],
      stream: true,
      n: 2,
      seed: 1,
      stream_options: { include_usage: true },
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
    const events = (await res.text())
      .split('\n\n')
      .filter(Boolean)
      .map((e) => e.replace(/^data: /, ''));
    assert.equal(events.at(-1), '[DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
    const texts = ['', ''];
    const finished: (string | null)[] = [null, null];
    for (const chunk of chunks.filter((c) => c.choices.length > 0)) {
      const choice = chunk.choices[0];
      texts[choice.index] += choice.delta.content ?? '';
      if (choice.finish_reason) finished[choice.index] = choice.finish_reason;
    }
    assert.deepEqual(texts, ['A B C', 'A B C']);
    assert.deepEqual(finished, ['stop', 'stop']);
    assert.deepEqual(
      fake.seen.map((s) => s.gen.seed),
      [1, 2],
    );
    const usage = chunks.at(-1).usage;
    assert.equal(usage.completion_tokens, 6);
    assert.equal(usage.prompt_tokens, 6);
  });
});

test('a legacy completion goes to the backend as a prompt', async () => {
  await withServer(new FakeBackend(), async (base) => {
    const res = await post(base, '/v1/completions', { prompt: 'x y', max_tokens: 5 });
    const body = (await res.json()) as { choices: { text: string }[] };
    assert.equal(res.status, 200);
    assert.equal(body.choices[0].text, 'X Y');
  });
});

test('backend errors: a library error keeps its status, a crash is a 500, a bad format is a 400 naming the field', async () => {
  const lines: string[] = [];
  const fake = new FakeBackend();
  const server = await createServer(fake, { log: (line) => lines.push(line) });
  const { url } = await server.listen(0, '127.0.0.1');
  try {
    const overflow = await post(url, '/v1/chat/completions', {
      messages: [{ role: 'user', content: 'too long' }],
    });
    assert.equal(overflow.status, 400);
    assert.match(((await overflow.json()) as { error: { message: string } }).error.message, /does not fit/);
    const crash = await post(url, '/v1/chat/completions', {
      messages: [{ role: 'user', content: 'explode' }],
    });
    assert.equal(crash.status, 500);
    assert.match(((await crash.json()) as { error: { message: string } }).error.message, /exploded/);
    assert.ok(lines.some((l) => l.startsWith('internal error: TypeError: the fake engine exploded')));
    const regex = await post(url, '/v1/chat/completions', {
      messages: [{ role: 'user', content: 'hi' }],
      response_format: { type: 'json_object' },
    });
    const error = ((await regex.json()) as { error: { message: string; param: string } }).error;
    assert.equal(regex.status, 400);
    assert.equal(error.param, 'response_format');
    assert.match(error.message, /^response_format: the fake backend writes no JSON/);
    const wrongModel = await post(url, '/v1/chat/completions', {
      model: 'other',
      messages: [{ role: 'user', content: 'hi' }],
    });
    assert.equal(wrongModel.status, 404);
    assert.equal(fake.seen.length, 2);
  } finally {
    await server.close();
  }
});

test('/ready answers 503 while the backend loads and 200 after; the server closes a backend it owns', async () => {
  let finish!: (backend: ServerBackend) => void;
  const loading = new Promise<ServerBackend>((resolve) => {
    finish = resolve;
  });
  const fake = new FakeBackend();
  await withServer(loading, async (base, server) => {
    assert.equal((await fetch(`${base}/health`)).status, 200);
    const notReady = await fetch(`${base}/ready`);
    assert.equal(notReady.status, 503);
    assert.match(((await notReady.json()) as { error: { message: string } }).error.message, /still loading/);
    const early = await post(base, '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(early.status, 503);
    finish(fake);
    await server.ready;
    assert.deepEqual(await (await fetch(`${base}/ready`)).json(), { status: 'ready' });
    const res = await post(base, '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(res.status, 200);
  });
  assert.equal(fake.closed, true);
});
