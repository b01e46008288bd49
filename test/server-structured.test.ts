import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { type Pipeline, pipeline } from '../src/pipeline/pipeline.js';
import { createServer, type InternVLServer } from '../src/server/server.js';
import { goldenModelDir } from './helpers.js';
import {
  assertBadChatRequest,
  assertValidJson,
  inWaves,
  range,
  type Schema,
  schemaFor,
} from './structured-fixtures.js';

const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-server-structured-cache-'));
let pipe: Pipeline;
let server: InternVLServer;
let base: string;
let client: OpenAI;

before(async () => {
  pipe = await pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), { cacheDir, threads: 1 });
  server = await createServer(pipe, { modelName: 'tiny', maxBatchSize: 8 });
  base = (await server.listen(0, '127.0.0.1')).url;
  client = new OpenAI({ apiKey: 'none', baseURL: `${base}/v1`, maxRetries: 0 });
});
after(async () => {
  await server.close();
  await pipe.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

/**
 * The schemas bound every string, array and integer, so their JSON is at most a few dozen tokens of
 * the golden byte-level vocabulary; 256 tokens leave room, and the test checks none ran out.
 */
function params(i: number, schema: Schema = schemaFor(i)) {
  return {
    model: 'tiny',
    messages: [{ role: 'user' as const, content: `Give item ${i} as JSON.` }],
    max_tokens: 256,
    temperature: i % 2 === 0 ? 0 : 1,
    top_k: 0,
    seed: i,
    response_format: {
      type: 'json_schema' as const,
      json_schema: { name: `item_${i}`, schema, strict: true },
    },
  };
}

async function plain(i: number): Promise<string> {
  const r = await client.chat.completions.create(params(i));
  assert.equal(r.choices[0].finish_reason, 'stop', `request ${i}`);
  const text = r.choices[0].message.content ?? '';
  assertValidJson(text, schemaFor(i), `request ${i}`);
  return text;
}

async function streamed(i: number): Promise<string> {
  const stream = await client.chat.completions.create({ ...params(i), stream: true });
  let text = '';
  let finish: string | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(finish, 'stop', `request ${i}`);
  assertValidJson(text, schemaFor(i), `streamed request ${i}`);
  return text;
}

test('100 requests with different JSON Schemas, plain and streamed, alone and 8 at once, all valid', async () => {
  const alone: string[] = [];
  for (const i of range(0, 8)) alone.push(await plain(i));
  for (const i of range(8, 12)) await streamed(i);
  // The same requests 8 at once in one decode batch give the same text as alone (greedy or seeded).
  assert.deepEqual(await inWaves(range(0, 8), 8, plain), alone);
  await inWaves(range(12, 52), 8, plain);
  await inWaves(range(52, 92), 8, streamed);
});

test('json_object and a json_schema without a schema give a JSON object', async () => {
  for (const response_format of [
    { type: 'json_object' as const },
    { type: 'json_schema' as const, json_schema: { name: 'anything' } },
  ]) {
    const r = await client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'JSON please' }],
      max_tokens: 256,
      temperature: 0,
      response_format,
    });
    const value = JSON.parse(r.choices[0].message.content ?? '');
    assert.ok(value !== null && typeof value === 'object' && !Array.isArray(value));
    assert.equal(r.choices[0].finish_reason, 'stop');
  }
});

test('/v1/completions takes response_format too (as vLLM does)', async () => {
  const schema = schemaFor(7);
  const res = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      prompt: 'JSON:',
      max_tokens: 256,
      temperature: 0,
      response_format: { type: 'json_schema', json_schema: { name: 'x', schema } },
    }),
  });
  const body = (await res.json()) as { choices: { text: string; finish_reason: string }[] };
  assert.equal(res.status, 200, JSON.stringify(body));
  assertValidJson(body.choices[0].text, schema, 'completions');
  assert.equal(body.choices[0].finish_reason, 'stop');
  const invalid = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      prompt: 'x',
      response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'nope' } } },
    }),
  });
  assert.equal(invalid.status, 400);
  assert.match(
    ((await invalid.json()) as { error: { message: string } }).error.message,
    /Unsupported type "nope"/,
  );
});

test('bad response formats are 400s in OpenAI shape naming the problem', async () => {
  const cases: [unknown, string, RegExp][] = [
    [{ type: 'nope' }, 'response_format.type', /type must be 'text', 'json_object' or 'json_schema'/],
    [
      { type: 'json_schema', json_schema: { name: 'a b', schema: {} } },
      'response_format.json_schema.name',
      /letters/,
    ],
    [
      { type: 'json_schema', json_schema: { name: 'a', schema: 3 } },
      'response_format.json_schema.schema',
      /JSON Schema object/,
    ],
    [
      { type: 'json_schema', json_schema: { name: 'a', schema: { type: 'nope' } } },
      'response_format.json_schema.schema',
      /invalid JSON schema: Unsupported type "nope"/,
    ],
    [
      { type: 'json_schema', json_schema: { name: 'a', schema: { type: 'string', pattern: '(' } } },
      'response_format.json_schema.schema',
      /Regex parsing error/,
    ],
    [
      { type: 'json_schema', json_schema: { name: 'a', schema: { $ref: '#/$defs/missing' } } },
      'response_format.json_schema.schema',
      /invalid JSON schema: .*missing/,
    ],
  ];
  for (const [response_format, param, message] of cases) {
    const body = { messages: [{ role: 'user', content: 'x' }], response_format, stream: true };
    await assertBadChatRequest(base, body, param, message);
  }
  // The official client sees a BadRequestError, and the server still answers constrained requests.
  await assert.rejects(
    client.chat.completions.create({
      ...params(0),
      response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'nope' } } },
    }),
    (err: unknown) => err instanceof OpenAI.BadRequestError && /Unsupported type/.test(err.message),
  );
  await plain(1);
});
