import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { ResponseFormat } from '../src/engine/grammar-types.js';
import { InternVLError } from '../src/errors.js';
import type { GenerationConfigInput } from '../src/pipeline/generation-config.js';
import { type Pipeline, pipeline, type Response } from '../src/pipeline/pipeline.js';
import { goldenModelDir } from './helpers.js';
import { assertValidJson, schemaFor } from './structured-fixtures.js';

const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-structured-cache-'));

let pipe: Pipeline;
before(async () => {
  pipe = await pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), { cacheDir, threads: 1 });
});
after(async () => {
  await pipe.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

const schemaGen = (i: number): GenerationConfigInput => ({
  maxNewTokens: 256,
  temperature: i % 2 === 0 ? 0 : 1,
  topK: 0,
  seed: i,
  responseFormat: { type: 'json_schema', jsonSchema: schemaFor(i) },
});

test('greedy and sampled JSON-schema output is valid JSON of its schema and stops when complete', async () => {
  for (let i = 0; i < 12; i++) {
    const r = await pipe.infer(`Describe item ${i} as JSON.`, schemaGen(i));
    assertValidJson(r.text, schemaFor(i), `schema ${i}`);
    assert.equal(r.finishReason, 'stop', `schema ${i}`);
    assert.equal(r.usage.completionTokens, r.tokenIds.length, 'no end token: the grammar completed the text');
  }
});

test('streamed chunks add up to the non-streamed text', async () => {
  for (const i of [3, 4]) {
    const whole = await pipe.infer(`Item ${i}`, schemaGen(i));
    let text = '';
    let finish: string | undefined;
    for await (const chunk of pipe.stream(`Item ${i}`, schemaGen(i))) {
      text += chunk.text;
      finish = chunk.finishReason ?? finish;
    }
    assert.equal(text, whole.text);
    assert.equal(finish, 'stop');
  }
});

test('in one batch each constrained request gets what it gets alone, beside unconstrained ones', async () => {
  const gens = Array.from({ length: 8 }, (_, i) =>
    i % 4 === 3 ? { maxNewTokens: 20, temperature: 1, topK: 0, seed: i, ignoreEos: true } : schemaGen(i),
  );
  const alone: Response[] = [];
  for (const [i, g] of gens.entries()) alone.push(await pipe.infer(`Batch ${i}`, g));
  const together = await Promise.all(gens.map((g, i) => pipe.infer(`Batch ${i}`, g)));
  together.forEach((r, i) => {
    assert.deepEqual(r.tokenIds, alone[i].tokenIds, `request ${i}`);
    if (i % 4 !== 3) assertValidJson(r.text, schemaFor(i), `request ${i}`);
  });
});

test('json_object, regex and EBNF formats', async () => {
  const object = await pipe.infer('Any JSON', {
    maxNewTokens: 256,
    temperature: 0,
    responseFormat: { type: 'json_object' },
  });
  assert.equal(object.finishReason, 'stop');
  const value = JSON.parse(object.text);
  assert.ok(value !== null && typeof value === 'object' && !Array.isArray(value), object.text);
  for (let seed = 0; seed < 4; seed++) {
    const phone = await pipe.infer('A phone number', {
      maxNewTokens: 20,
      temperature: 1,
      seed,
      responseFormat: { type: 'regex', pattern: '\\+[0-9]{2} [0-9]{3}-[0-9]{4}' },
    });
    assert.match(phone.text, /^\+[0-9]{2} [0-9]{3}-[0-9]{4}$/);
    assert.equal(phone.finishReason, 'stop');
    const answer = await pipe.infer('Yes or no?', {
      maxNewTokens: 20,
      temperature: 1,
      seed,
      responseFormat: { type: 'grammar', ebnf: 'root ::= ("yes" | "no") " because " [a-z]{1,5} "."' },
    });
    assert.match(answer.text, /^(yes|no) because [a-z]{1,5}\.$/);
  }
});

test('maxNewTokens can cut the text before the grammar completes it (finishReason length)', async () => {
  const r = await pipe.infer('Cut short', { ...schemaGen(2), maxNewTokens: 3 });
  assert.equal(r.finishReason, 'length');
  assert.equal(r.tokenIds.length, 3);
  assert.ok(r.text.startsWith('{'));
});

test('bad response formats are clear errors', async () => {
  const cases: [unknown, RegExp][] = [
    [{ type: 'xml' }, /responseFormat must be \{type: 'json_object'\}/],
    [{ type: 'json_schema' }, /responseFormat\.jsonSchema must be a JSON Schema object/],
    [{ type: 'json_schema', jsonSchema: 'x' }, /responseFormat\.jsonSchema must be a JSON Schema object/],
    [{ type: 'regex', pattern: '' }, /responseFormat\.pattern must be a non-empty string/],
    [{ type: 'json_object', schema: {} }, /unknown field\(s\) schema in responseFormat/],
    [{ type: 'json_schema', jsonSchema: { type: 'nope' } }, /invalid JSON schema: Unsupported type "nope"/],
    [{ type: 'regex', pattern: '(a' }, /invalid regex: Regex parsing error/],
  ];
  for (const [format, message] of cases) {
    await assert.rejects(
      pipe.infer('x', { responseFormat: format as ResponseFormat, maxNewTokens: 4 }),
      (err: unknown) => err instanceof InternVLError && err.code === 'BAD_INPUT' && message.test(err.message),
      JSON.stringify(format),
    );
  }
  await assert.rejects(
    pipe.infer('x', { responseFormat: { type: 'regex', pattern: '[àé]x' }, maxNewTokens: 4 }),
    (err: unknown) =>
      err instanceof InternVLError &&
      err.code === 'BAD_INPUT' &&
      /write such characters as literal/.test(err.message),
  );
  await assert.rejects(
    pipe.infer('x', { responseFormat: { type: 'json_object' }, ignoreEos: true }),
    /responseFormat needs an end token/,
  );
  // The engine still serves constrained requests after the bad ones.
  const ok = await pipe.infer('x', schemaGen(0));
  assertValidJson(ok.text, schemaFor(0), 'after errors');
});

test('compileResponseFormat compiles once, then hits the cache', async () => {
  const format: ResponseFormat = {
    type: 'json_schema',
    jsonSchema: { type: 'array', items: { type: 'boolean' } },
  };
  const first = await pipe.compileResponseFormat(format);
  assert.ok(first.compileMs > 0);
  assert.deepEqual(await pipe.compileResponseFormat(format), { compileMs: 0 });
  await assert.rejects(pipe.compileResponseFormat({ type: 'grammar', ebnf: 'x ::= "a"' }), /root/);
});
