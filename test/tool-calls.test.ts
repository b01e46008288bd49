import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import OpenAI from 'openai';
import type {
  ChatCompletionMessageToolCall,
  ChatCompletionToolChoiceOption,
} from 'openai/resources/chat/completions';
import { type Pipeline, pipeline } from '../src/pipeline/pipeline.js';
import { createServer, type InternVLServer } from '../src/server/server.js';
import { goldenModelDir, REPO_ROOT } from './helpers.js';
import * as fixtures from './structured-fixtures.js';

const { assertBadChatRequest, assertValidJson, inWaves, range, schemaFor } = fixtures;
type Schema = fixtures.Schema;

const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-tool-calls-cache-'));

interface Served {
  pipe: Pipeline;
  server: InternVLServer;
  base: string;
  client: OpenAI;
}

const served: Record<'qwen2' | 'internlm2', Served> = {} as never;

before(async () => {
  for (const [key, model] of [
    ['qwen2', 'tiny-internvl2_5-qwen2'],
    ['internlm2', 'tiny-internvl2_5-internlm2'],
  ] as const) {
    const pipe = await pipeline(goldenModelDir(model), { cacheDir, threads: 1 });
    const server = await createServer(pipe, { modelName: 'tiny', maxBatchSize: 8 });
    const base = (await server.listen(0, '127.0.0.1')).url;
    const client = new OpenAI({ apiKey: 'none', baseURL: `${base}/v1`, maxRetries: 0 });
    served[key] = { pipe, server, base, client };
  }
});
after(async () => {
  for (const s of Object.values(served)) {
    await s.server.close();
    await s.pipe.close();
  }
  rmSync(cacheDir, { recursive: true, force: true });
});

interface FunctionTool {
  type: 'function';
  function: { name: string; description: string; parameters: Schema };
}

/** Three tools per request, each with its own bounded parameters schema (structured-fixtures.ts). */
function toolsFor(i: number): FunctionTool[] {
  return [0, 1, 2].map((k) => ({
    type: 'function' as const,
    function: {
      name: `fn_${i}_${k}`,
      description: `function ${k} of request ${i}`,
      parameters: schemaFor(100 + 3 * i + k),
    },
  }));
}

function schemaOf(tools: FunctionTool[], name: string): Schema {
  const tool = tools.find((t) => t.function.name === name);
  assert.ok(tool, `called '${name}', which is not among the tools`);
  return tool.function.parameters;
}

function callsOf(calls: ChatCompletionMessageToolCall[] | undefined): Call[] {
  return (calls ?? []).map((c) => {
    assert.equal(c.type, 'function');
    if (c.type !== 'function') throw new Error('not a function call');
    return { id: c.id, name: c.function.name, arguments: c.function.arguments };
  });
}

type Call = { id: string; name: string; arguments: string };

function assertValidCalls(calls: Call[], tools: FunctionTool[], label: string, only?: string): void {
  assert.ok(calls.length >= 1, `${label}: no tool call`);
  for (const call of calls) {
    assert.match(call.id, /^call_[A-Za-z0-9]{24}$/, label);
    if (only) assert.equal(call.name, only, label);
    assertValidJson(call.arguments, schemaOf(tools, call.name), `${label} ${call.name}`);
  }
  assert.equal(new Set(calls.map((c) => c.id)).size, calls.length, `${label}: ids repeat`);
}

function choiceFor(i: number, tools: FunctionTool[]): ChatCompletionToolChoiceOption {
  if (i % 3 !== 2) return 'required';
  const tool = tools[i % tools.length];
  return { type: 'function', function: { name: tool.function.name } };
}

function params(i: number) {
  const tools = toolsFor(i);
  return {
    tools,
    body: {
      model: 'tiny',
      messages: [{ role: 'user' as const, content: `Call a tool for request ${i}.` }],
      max_tokens: 400,
      temperature: i % 2 === 0 ? 0 : 1,
      top_k: 0,
      seed: i,
      tools,
      tool_choice: choiceFor(i, tools),
      // Parallel calls on every fourth request; a random model may go on calling, so the rest ask for one.
      parallel_tool_calls: i % 4 === 3,
    },
  };
}

function namedIn(choice: ChatCompletionToolChoiceOption): string | undefined {
  return typeof choice === 'object' && choice.type === 'function' ? choice.function.name : undefined;
}

async function plain(s: Served, i: number): Promise<Call[]> {
  const { tools, body } = params(i);
  const r = await s.client.chat.completions.create(body);
  const choice = r.choices[0];
  assert.equal(choice.finish_reason, 'tool_calls', `request ${i}: ${JSON.stringify(choice.message)}`);
  assert.equal(choice.message.content, null, `request ${i}`);
  const calls = callsOf(choice.message.tool_calls);
  assertValidCalls(calls, tools, `request ${i}`, namedIn(body.tool_choice));
  if (!body.parallel_tool_calls) assert.equal(calls.length, 1, `request ${i}`);
  return calls;
}

async function streamed(s: Served, i: number): Promise<Call[]> {
  const { tools, body } = params(i);
  const stream = await s.client.chat.completions.create({ ...body, stream: true });
  const calls: Call[] = [];
  let finish: string | null = null;
  let content = '';
  for await (const chunk of stream) {
    const delta = chunk.choices[0]?.delta;
    content += delta?.content ?? '';
    for (const d of delta?.tool_calls ?? []) {
      if (d.id) {
        // A call's first delta: index, id, type and name, arguments ''.
        assert.equal(d.index, calls.length, `streamed request ${i}`);
        assert.equal(d.type, 'function');
        assert.equal(d.function?.arguments, '');
        calls.push({ id: d.id, name: d.function?.name ?? '', arguments: '' });
      } else {
        assert.equal(d.id, undefined);
        calls[d.index].arguments += d.function?.arguments ?? '';
      }
    }
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(finish, 'tool_calls', `streamed request ${i}`);
  assert.equal(content, '', `streamed request ${i}`);
  assertValidCalls(calls, tools, `streamed request ${i}`, namedIn(body.tool_choice));
  return calls;
}

const withoutIds = (calls: Call[]) => calls.map(({ name, arguments: a }) => ({ name, arguments: a }));

for (const key of ['qwen2', 'internlm2'] as const) {
  test(`${key}: required and named tool_choice always give valid calls, plain and streamed, alone and 8 at once`, async () => {
    const s = served[key];
    const alone: Call[][] = [];
    for (const i of range(0, 8)) alone.push(await plain(s, i));
    for (const i of range(8, 12)) await streamed(s, i);
    // The same requests 8 at once in one decode batch make the same calls (greedy or seeded).
    assert.deepEqual(
      (await inWaves(range(0, 8), 8, (i) => plain(s, i))).map(withoutIds),
      alone.map(withoutIds),
    );
    await inWaves(range(12, 28), 8, (i) => plain(s, i));
    await inWaves(range(28, 44), 8, (i) => streamed(s, i));
  });
}

test('the pipeline returns parsed tool calls and streams their deltas', async () => {
  const pipe = served.qwen2.pipe;
  const tools = toolsFor(7);
  const r = await pipe.infer('Call one.', { tools, toolChoice: 'required', maxNewTokens: 400 });
  assert.equal(r.finishReason, 'tool_calls');
  assert.equal(r.text, '');
  assert.equal(r.toolCalls?.length, 1);
  const call = r.toolCalls![0];
  assertValidJson(call.function.arguments, schemaOf(toolsFor(7), call.function.name), 'pipeline');
  let args = '';
  let name = '';
  let last: string | undefined;
  for await (const chunk of pipe.stream('Call one.', { tools, toolChoice: 'required', maxNewTokens: 400 })) {
    for (const d of chunk.toolCalls ?? []) {
      name ||= d.name ?? '';
      args += d.arguments;
    }
    last = chunk.finishReason ?? last;
  }
  assert.equal(last, 'tool_calls');
  assert.deepEqual({ name, args }, { name: call.function.name, args: call.function.arguments });
  // A chat session keeps the call in its history, and a tool's answer continues it.
  const session = await pipe.chat('Call one.', { gen: { tools, toolChoice: 'required', maxNewTokens: 400 } });
  assert.deepEqual(session.history[1].toolCalls?.[0].function.name, call.function.name);
  const next = await pipe.chat([{ role: 'tool', content: '{"ok": true}', toolCallId: call.id }], {
    session,
    gen: { tools, toolChoice: 'none', maxNewTokens: 4 },
  });
  assert.equal(next.response?.toolCalls, undefined);
  await pipe.endSession(session);
});

test('a conversation with tool calls and tool messages is accepted; auto and none answer it', async () => {
  for (const s of Object.values(served)) {
    const tools = toolsFor(1);
    const name = tools[0].function.name;
    const messages = [
      { role: 'user' as const, content: 'What is it?' },
      {
        role: 'assistant' as const,
        content: null,
        tool_calls: [
          { id: 'call_1', type: 'function' as const, function: { name, arguments: '{"k00": 1}' } },
        ],
      },
      { role: 'tool' as const, tool_call_id: 'call_1', content: '{"answer": 42}' },
    ];
    for (const tool_choice of ['auto', 'none'] as const) {
      const r = await s.client.chat.completions.create({
        model: 'tiny',
        messages,
        tools,
        tool_choice,
        max_tokens: 8,
        temperature: 0,
      });
      const choice = r.choices[0];
      assert.ok(['stop', 'length', 'tool_calls'].includes(choice.finish_reason), choice.finish_reason);
      if (choice.finish_reason === 'tool_calls')
        assertValidCalls(callsOf(choice.message.tool_calls), tools, 'auto');
      else assert.equal(typeof choice.message.content, 'string');
    }
  }
});

test('bad tools and tool choices are 400s naming the problem', async () => {
  const { base, client } = served.qwen2;
  const fn = (name: string, parameters?: unknown) => ({ type: 'function', function: { name, parameters } });
  const user = [{ role: 'user', content: 'x' }];
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [{ tools: [{ type: 'nope' }] }, 'tools[0].type', /'function'/],
    [{ tools: [fn('a b')] }, 'tools[0].function.name', /letters, digits/],
    [{ tools: [fn('a', 3)] }, 'tools[0].function.parameters', /JSON Schema object/],
    [{ tools: [fn('a', { type: 'string' })] }, 'tools[0].function.parameters', /type 'object'/],
    [{ tools: [fn('a'), fn('a')] }, 'tools[1].function.name', /already named 'a'/],
    [{ tools: [fn('a')], tool_choice: 'sometimes' }, 'tool_choice', /'none', 'auto', 'required'/],
    [{ tool_choice: 'required' }, 'tool_choice', /needs tools/],
    [
      { tools: [fn('a')], tool_choice: { type: 'function', function: { name: 'b' } } },
      'tool_choice.function.name',
      /'b', which is not among the tools \(a\)/,
    ],
    [
      {
        tools: [
          fn('a', { type: 'object' }),
          fn('b', { type: 'object', properties: { x: { type: 'nope' } } }),
        ],
      },
      'tools[1].function.parameters',
      /invalid JSON schema: .*nope/,
    ],
    [
      { tools: [fn('a')], response_format: { type: 'json_object' } },
      'response_format',
      /cannot be combined with tools/,
    ],
    [
      {
        messages: [
          { role: 'user', content: 'x' },
          { role: 'tool', content: 'y' },
        ],
        tools: [fn('a')],
      },
      'messages[1].tool_call_id',
      /must name the call/,
    ],
    [
      {
        messages: [
          { role: 'user', content: 'x', tool_calls: [] },
          { role: 'assistant', content: null },
        ],
      },
      'messages[1].content',
      /content must be/,
    ],
  ];
  for (const [fields, param, message] of cases) {
    await assertBadChatRequest(base, { messages: user, ...fields }, param, message);
  }
  await assert.rejects(
    client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'x' }],
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', required: 3 } } }],
      tool_choice: 'required',
    }),
    (err: unknown) =>
      err instanceof OpenAI.BadRequestError && /tools\[0\]\.function\.parameters/.test(err.message),
  );
  // The server still answers tool requests after the bad ones.
  await plain(served.qwen2, 0);
});

test("the README's tool-call example runs as written (on the golden model)", async () => {
  const readme = readFileSync(path.join(REPO_ROOT, 'README.md'), 'utf8');
  const code = /```ts\n([\s\S]*?)```/.exec(readme.slice(readme.indexOf('## Tool calls')))?.[1] ?? '';
  const entry = pathToFileURL(path.join(REPO_ROOT, 'src/index.ts')).href;
  const runnable = code
    .replace("from 'internvl-ts'", `from ${JSON.stringify(entry)}`)
    .replace(
      "pipeline('OpenGVLab/InternVL2_5-1B')",
      `pipeline(${JSON.stringify(goldenModelDir('tiny-internvl2_5-qwen2'))}, { cacheDir: ${JSON.stringify(cacheDir)}, threads: 1 })`,
    );
  assert.equal(runnable.split(entry).length, 2, 'the example imports internvl-ts');
  assert.match(runnable, /tiny-internvl2_5-qwen2/, 'the example loads a model');
  const file = path.join(cacheDir, 'readme-tools.mts');
  writeFileSync(file, runnable);
  const logged: unknown[][] = [];
  const log = console.log;
  console.log = (...args: unknown[]) => logged.push(args);
  try {
    await import(pathToFileURL(file).href);
  } finally {
    console.log = log;
  }
  const [finishReason, calls] = logged[0] as [string, { function: { name: string; arguments: string } }[]];
  assert.equal(finishReason, 'tool_calls');
  assert.equal(calls[0].function.name, 'get_weather');
  const args = JSON.parse(calls[0].function.arguments);
  assert.deepEqual(Object.keys(args), ['city', 'unit']);
  assert.ok(typeof args.city === 'string' && args.city.length <= 20, calls[0].function.arguments);
  assert.ok(['celsius', 'fahrenheit'].includes(args.unit), calls[0].function.arguments);
  assert.equal(typeof logged[1][0], 'string');
});
