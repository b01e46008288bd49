import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { runStructuredBench } from '../src/cli/bench-structured.js';
import { goldenModelDir } from './helpers.js';

const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-bench-structured-'));
after(() => rmSync(cacheDir, { recursive: true, force: true }));

test('bench --structured reports setup, cold and cached compile, and decode with and without the schema', async () => {
  const r = (await runStructuredBench({
    model: goldenModelDir('tiny-internvl2_5-qwen2'),
    engine: { threads: 1, cacheDir },
    reps: 2,
    maxNewTokens: 24,
  })) as {
    grammarSetupMs: number;
    schemaCompileMs: number;
    tokensPerAnswer: number[];
    completeJsonAnswers: number;
    decodeTokPerS: { greedy: number; greedyJsonSchema: number };
    jsonSchemaSlowdownPercent: number;
  };
  assert.ok(r.grammarSetupMs > 0 && r.schemaCompileMs > 0, JSON.stringify(r));
  // The bench schema's JSON is longer than 24 byte-level tokens: every answer is cut at 24.
  assert.deepEqual(r.tokensPerAnswer, [24, 24]);
  assert.equal(r.completeJsonAnswers, 0);
  assert.ok(r.decodeTokPerS.greedy > 0 && r.decodeTokPerS.greedyJsonSchema > 0);
  assert.ok(Number.isFinite(r.jsonSchemaSlowdownPercent));
});
