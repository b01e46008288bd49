/**
 * Structured output in the browser engine (headless Chromium, onnxruntime-web WASM, the tiny golden
 * Qwen2 model with random weights): XGrammar's WebAssembly bundle loads in the page, a JSON Schema
 * constrains greedy decoding to JSON that validates (ajv, here in Node, on the returned text) and
 * equals Node's constrained answer; the same requests without the schema give no such JSON; bad
 * schemas and missing setup get errors naming the problem. Compile time and decode tok/s with and
 * without the schema are reported as diagnostics (loaded machine: upper bounds).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Page } from 'playwright-core';
import { bundleForBrowser, DEMO_DIR, type DemoServer, startDemoServer } from '../scripts/browser-demo.js';
import { BENCH_SCHEMA } from '../src/cli/bench-structured.js';
import { convertModelForWeb } from '../src/cli/convert-web.js';
import { pipeline } from '../src/pipeline/pipeline.js';
import type { GenerationConfigInput, ResponseFormat } from '../src/web/index.js';
import { type Browser, chromiumMissing, launchChromium } from './browser-helpers.js';
import { goldenModelDir } from './helpers.js';
import { assertValidJson, type Schema, schemaFor } from './structured-fixtures.js';

const MODEL = 'tiny-internvl2_5-qwen2';

interface PageRun {
  ok: boolean;
  text?: string;
  tokenIds?: number[];
  finishReason?: string;
  /** Milliseconds from the first streamed chunk to the end. */
  decodeMs?: number;
  code?: string;
  message?: string;
}

/** One chat turn in the page (its loaded model, or `modelUrl` loaded with `options` first). */
function chatInPage(page: Page, question: string, generation: GenerationConfigInput): Promise<PageRun> {
  // No named inner functions in the page: tsx would wrap them in a helper the page does not have.
  return page.evaluate(
    async ({ question, generation }) => {
      const g = globalThis as unknown as { demo: { model: import('../src/web/index.js').WebInternVL } };
      try {
        const turn = g.demo.model.chat({ question }, generation);
        let first: number | undefined;
        let next = await turn.next();
        while (!next.done) {
          first ??= performance.now();
          next = await turn.next();
        }
        const decodeMs = performance.now() - (first ?? performance.now());
        return { ok: true, ...next.value, decodeMs };
      } catch (err) {
        return { ok: false, code: (err as { code?: string }).code, message: (err as Error).message };
      }
    },
    { question, generation },
  );
}

function compileInPage(page: Page, format: ResponseFormat): Promise<PageRun & { compileMs?: number }> {
  return page.evaluate(async (format) => {
    const g = globalThis as unknown as { demo: { model: import('../src/web/index.js').WebInternVL } };
    try {
      return { ok: true, ...(await g.demo.model.compileResponseFormat(format)) };
    } catch (err) {
      return { ok: false, code: (err as { code?: string }).code, message: (err as Error).message };
    }
  }, format);
}

const jsonSchema = (schema: Schema): ResponseFormat => ({ type: 'json_schema', jsonSchema: schema });

/** Decode tok/s of a run: the tokens after the first over the time from the first chunk to the end. */
const tokPerS = (run: PageRun) => (((run.tokenIds?.length ?? 0) - 1) * 1000) / (run.decodeMs ?? Number.NaN);

describe('structured output in the browser engine (Chromium, XGrammar WASM)', {
  skip: chromiumMissing,
}, () => {
  let tmp = '';
  let server: DemoServer;
  let browser: Browser;
  let page: Page;
  const pageErrors: string[] = [];

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'internvl-browser-structured-'));
    const bundle = path.join(tmp, 'demo.js');
    await convertModelForWeb(goldenModelDir(MODEL), path.join(tmp, 'model'));
    await bundleForBrowser(path.join(DEMO_DIR, 'main.ts'), bundle);
    server = await startDemoServer({ modelDir: path.join(tmp, 'model'), bundle });
    browser = await launchChromium();
    page = await browser.context.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    await page.goto(server.url);
    await page.click('#load');
    await page.waitForFunction("document.getElementById('status').dataset.ready", null, { timeout: 30_000 });
    assert.match((await page.textContent('#status')) ?? '', /loaded in/);
  });

  after(async () => {
    await browser?.close();
    await server?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  test('greedy answers under JSON schemas parse and validate, and equal Node’s', async (t) => {
    const setup = await compileInPage(page, { type: 'json_object' });
    assert.ok(setup.ok, setup.message);
    t.diagnostic(
      `XGrammar setup (load + vocabulary) and json_object compile: ${setup.compileMs?.toFixed(0)} ms`,
    );
    const bench = await compileInPage(page, jsonSchema(BENCH_SCHEMA));
    assert.ok(bench.ok, bench.message);
    t.diagnostic(`BENCH_SCHEMA compile: ${bench.compileMs?.toFixed(1)} ms`);
    const again = await compileInPage(page, jsonSchema(BENCH_SCHEMA));
    assert.equal(again.compileMs, 0, 'a compiled schema is cached');
    const schemas = [0, 1, 2, 3, 4, 5].map(schemaFor);
    const nodePipe = await pipeline(goldenModelDir(MODEL), {
      cacheDir: path.join(tmp, 'graphs'),
      threads: 1,
    });
    try {
      for (const [i, schema] of schemas.entries()) {
        const question = `Describe item ${i} as JSON.`;
        const compiled = await compileInPage(page, jsonSchema(schema));
        assert.ok(compiled.ok, compiled.message);
        const gen = { maxNewTokens: 128, temperature: 0, responseFormat: jsonSchema(schema) };
        const run = await chatInPage(page, question, gen);
        assert.ok(run.ok, run.message);
        assert.equal(run.finishReason, 'stop', `schema ${i}: ${run.text}`);
        assertValidJson(run.text ?? '', schema, `schema ${i}`);
        const reference = await nodePipe.infer({ prompt: question }, gen);
        assert.equal(run.text, reference.text, `schema ${i}: the browser and Node differ`);
      }
    } finally {
      await nodePipe.close();
    }
  });

  test('without the schema the same greedy requests give no valid JSON (the check can fail)', async () => {
    for (const [i, schema] of [0, 1, 2].map(schemaFor).entries()) {
      const run = await chatInPage(page, `Describe item ${i} as JSON.`, { maxNewTokens: 64, temperature: 0 });
      assert.ok(run.ok, run.message);
      assert.throws(() => assertValidJson(run.text ?? '', schema, `unconstrained ${i}`));
    }
  });

  test('decode tok/s with and without a JSON schema (diagnostic; loaded machine)', async (t) => {
    const rates: { free: number[]; schema: number[] } = { free: [], schema: [] };
    for (let rep = 0; rep < 3; rep++) {
      const question = `Describe film number ${rep} as JSON.`;
      const gen = { maxNewTokens: 96, temperature: 0, responseFormat: jsonSchema(BENCH_SCHEMA) };
      const constrained = await chatInPage(page, question, gen);
      assert.ok(constrained.ok, constrained.message);
      // Cut off at maxNewTokens, the JSON is incomplete (as in `internvl bench --structured`).
      if (constrained.finishReason === 'stop')
        assertValidJson(constrained.text ?? '', BENCH_SCHEMA, `rep ${rep}`);
      const tokens = constrained.tokenIds?.length ?? 0;
      const free = await chatInPage(page, question, {
        maxNewTokens: Math.max(2, tokens),
        temperature: 0,
        ignoreEos: true,
      });
      assert.ok(free.ok, free.message);
      assert.equal(free.tokenIds?.length, Math.max(2, tokens));
      rates.schema.push(tokPerS(constrained));
      rates.free.push(tokPerS(free));
      t.diagnostic(`rep ${rep}: ${tokens} tokens, ${constrained.finishReason}`);
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
    t.diagnostic(
      `decode tok/s (median of 3): greedy ${median(rates.free).toFixed(1)}, greedy + JSON schema ${median(rates.schema).toFixed(1)}`,
    );
    assert.ok(rates.free.every(Number.isFinite) && rates.schema.every(Number.isFinite));
  });

  test("the demo page's JSON Schema field constrains its streamed answer", async () => {
    const schema = schemaFor(7);
    await page.fill('#question', 'Describe the item as JSON.');
    await page.fill('#json-schema', JSON.stringify(schema));
    await page.fill('#max-new-tokens', '128');
    await page.click('#ask');
    await page.waitForFunction("document.getElementById('answer').dataset.done === 'true'", null, {
      timeout: 30_000,
    });
    assert.equal(await page.getAttribute('#answer', 'data-finish-reason'), 'stop');
    assertValidJson((await page.textContent('#answer')) ?? '', schema, 'demo page');
  });

  test('a bad schema is an error naming the problem, and good ones still work after it', async () => {
    const bad = jsonSchema({ type: 'nope' });
    const compiled = await compileInPage(page, bad);
    assert.equal(compiled.ok, false);
    assert.equal(compiled.code, 'BAD_INPUT');
    assert.match(compiled.message ?? '', /^invalid JSON schema: Unsupported type "nope"/);
    const run = await chatInPage(page, 'Hi', { maxNewTokens: 8, responseFormat: bad });
    assert.equal(run.code, 'BAD_INPUT');
    assert.match(run.message ?? '', /invalid JSON schema: Unsupported type "nope"/);
    const shape = await chatInPage(page, 'Hi', {
      maxNewTokens: 8,
      responseFormat: { type: 'json_schema', jsonSchema: 'nope' } as unknown as ResponseFormat,
    });
    assert.equal(shape.code, 'BAD_INPUT');
    assert.match(shape.message ?? '', /responseFormat\.jsonSchema/);
    const good = await chatInPage(page, 'Hi', {
      maxNewTokens: 64,
      temperature: 0,
      responseFormat: jsonSchema(schemaFor(5)),
    });
    assert.ok(good.ok, good.message);
    assertValidJson(good.text ?? '', schemaFor(5), 'after a bad schema');
  });

  test('tools are refused by name; a model loaded without xgrammarUrl says what it needs', async () => {
    const tools = await chatInPage(page, 'Hi', {
      tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }],
    });
    assert.equal(tools.code, 'UNSUPPORTED');
    assert.match(tools.message ?? '', /tools are not supported by the browser engine/);
    const missing = await page.evaluate(async () => {
      const lib = (globalThis as unknown as { internvl: typeof import('../src/web/index.js') }).internvl;
      const here = (globalThis as unknown as { location: { href: string } }).location.href;
      const model = await lib.WebInternVL.load(new URL('./model/', here).href, {
        wasmPaths: new URL('./ort/', here).href,
      });
      try {
        await model.compileResponseFormat({ type: 'json_object' });
        return { code: 'none', message: 'compiled without XGrammar' };
      } catch (err) {
        return { code: (err as { code?: string }).code, message: (err as Error).message };
      } finally {
        await model.close();
      }
    });
    assert.equal(missing.code, 'UNSUPPORTED');
    assert.match(missing.message, /WebLoadOptions\.xgrammarUrl/);
  });

  test('no uncaught errors in the page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
