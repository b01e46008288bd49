import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { type Pipeline, pipeline, type Response } from '../src/pipeline/pipeline.js';
import { GOLDEN_DIR, goldenModelDir } from './helpers.js';

const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-batching-cache-'));
const IMAGE = path.join(GOLDEN_DIR, 'prep/sources/s0_500x300_rgb.png');

let pipe: Pipeline;
before(async () => {
  pipe = await pipeline(goldenModelDir('tiny-internvl2_5-internlm2'), { cacheDir, threads: 1, maxTiles: 2 });
});
after(async () => {
  await pipe.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

const inputs = Array.from({ length: 8 }, (_, i) =>
  i % 3 === 0
    ? { prompt: `Picture ${i}?`, images: [IMAGE] }
    : `Question number ${i} ${'and more '.repeat(i)}`,
);
const gen = (i: number) => ({
  temperature: 0.7,
  topK: 0,
  seed: 100 + i,
  maxNewTokens: 10 + i,
  ignoreEos: true,
});

test('concurrent requests share decode steps and each gets the tokens it gets alone', async () => {
  const alone: Response[] = [];
  for (const [i, input] of inputs.entries()) alone.push(await pipe.infer(input, gen(i)));
  const together = await Promise.all(inputs.map((input, i) => pipe.infer(input, gen(i))));
  together.forEach((r, i) => {
    assert.deepEqual(r.tokenIds, alone[i].tokenIds, `request ${i}`);
    assert.equal(r.text, alone[i].text);
  });
});

test('aborting one of several concurrent streams stops only that one', async () => {
  const controller = new AbortController();
  const runs = inputs.slice(0, 4).map(async (input, i) => {
    let text = '';
    let finish: string | undefined;
    // The aborted stream asks for 400 tokens, so its abort (sent after its first token) reaches the
    // engine long before it could end by length, however fast the tiny model decodes.
    const stream = pipe.stream(
      input,
      { ...gen(i), maxNewTokens: i === 1 ? 400 : 40 },
      i === 1 ? { signal: controller.signal } : {},
    );
    for await (const chunk of stream) {
      text += chunk.text;
      if (i === 1 && chunk.tokenIds.length > 0) controller.abort();
      finish = chunk.finishReason ?? finish;
    }
    return { text, finish };
  });
  const results = await Promise.all(runs);
  assert.equal(results[1].finish, 'abort');
  for (const i of [0, 2, 3]) assert.equal(results[i].finish, 'length');
  const again = await pipe.infer(inputs[0], { ...gen(0), maxNewTokens: 40 });
  assert.equal(results[0].text, again.text);
});

test('a second call on a chat session that is still generating is refused; the first is unharmed', async () => {
  const first = await pipe.chat('Hello there.', { gen: { maxNewTokens: 4 } });
  // The second call starts once the first has produced a token; 400 tokens keep the first decoding
  // long after the second reaches the engine.
  const gen = { maxNewTokens: 400, ignoreEos: true };
  const expected = await pipe.infer([...first.history, { role: 'user', content: 'Go on.' }], gen);
  let generating!: () => void;
  const started = new Promise<void>((resolve) => {
    generating = resolve;
  });
  const running = pipe.chat('Go on.', { session: first, gen, onChunk: () => generating() });
  await started;
  await assert.rejects(pipe.chat('Go on.', { session: first, gen }), /already generating/);
  await running;
  assert.deepEqual(first.response?.tokenIds, expected.tokenIds);
});
