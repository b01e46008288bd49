import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HttpError } from '../src/server/errors.js';
import { SlotLimiter } from '../src/server/metrics.js';
import { chatGeneration, choiceConfigs } from '../src/server/openai-generation.js';
import { imageTileBudget } from '../src/server/openai-messages.js';
import { completionLogprobs, sumUsage } from '../src/server/openai-responses.js';
import { chatCompletionRequestSchema, parseRequest } from '../src/server/openai-schemas.js';

const limits = { defaultTiles: 12, maxTilesPerImage: 24 };

test('tile budget: max_dynamic_patch, then detail as LMDeploy reads it, then the default', () => {
  assert.equal(imageTileBudget({ max_dynamic_patch: 3, detail: 'high' }, limits, 'p'), 3);
  assert.equal(imageTileBudget({ detail: 'low' }, limits, 'p'), 6);
  assert.equal(imageTileBudget({ detail: 'medium' }, limits, 'p'), 12);
  assert.equal(imageTileBudget({ detail: 'high' }, limits, 'p'), 24);
  assert.equal(imageTileBudget({ detail: 'auto' }, limits, 'p'), 12);
  assert.equal(imageTileBudget({}, limits, 'p'), 12);
  assert.equal(
    imageTileBudget({ detail: 'high' }, { defaultTiles: 12, maxTilesPerImage: 8 }, 'p'),
    8,
    'capped',
  );
  assert.equal(imageTileBudget({}, { defaultTiles: 12, maxTilesPerImage: 4 }, 'p'), 4, 'capped');
  assert.throws(
    () => imageTileBudget({ max_dynamic_patch: 25 }, limits, 'messages[0].content[0].image_url'),
    (e: unknown) =>
      e instanceof HttpError && e.param === 'messages[0].content[0].image_url.max_dynamic_patch',
  );
});

test('request fields map to the generation config; n derives seeds', () => {
  const req = parseRequest(chatCompletionRequestSchema, {
    messages: [{ role: 'user', content: 'x' }],
    max_tokens: 5,
    max_completion_tokens: 7,
    temperature: 0.5,
    top_p: 0.9,
    top_k: -1,
    min_p: 0.1,
    repetition_penalty: 1.1,
    stop: 'END',
    seed: 42,
    logprobs: true,
    top_logprobs: 3,
    ignore_eos: true,
  });
  assert.deepEqual(chatGeneration(req), {
    maxNewTokens: 7,
    temperature: 0.5,
    topP: 0.9,
    topK: 0,
    minP: 0.1,
    repetitionPenalty: 1.1,
    stop: 'END',
    seed: 42,
    ignoreEos: true,
    logprobs: true,
    topLogprobs: 3,
  });
  assert.deepEqual(
    choiceConfigs({ seed: 42 }, 3).map((g) => g.seed),
    [42, 43, 44],
  );
  assert.deepEqual(
    choiceConfigs({}, 2).map((g) => g.seed),
    [undefined, undefined],
  );
  assert.throws(
    () =>
      chatGeneration(
        parseRequest(chatCompletionRequestSchema, {
          messages: [{ role: 'user', content: 'x' }],
          top_logprobs: 2,
        }),
      ),
    /top_logprobs needs logprobs/,
  );
  assert.throws(
    () => parseRequest(chatCompletionRequestSchema, { messages: [{ role: 'tool', content: 'x' }] }),
    (e: unknown) => e instanceof HttpError && e.param === 'messages[0].tool_call_id',
  );
  assert.throws(
    () => parseRequest(chatCompletionRequestSchema, { messages: [{ role: 'robot', content: 'x' }] }),
    (e: unknown) => e instanceof HttpError && e.param === 'messages[0].role',
  );
  assert.throws(() => parseRequest(chatCompletionRequestSchema, [1]), /must be a JSON object/);
});

test('usage counts each prompt once and sums completions; legacy logprob offsets', () => {
  const u = (p: number, c: number, cached = 0) => ({
    promptTokens: p,
    completionTokens: c,
    imageTokens: 0,
    cachedTokens: cached,
  });
  assert.deepEqual(sumUsage([u(10, 3, 6), u(10, 4, 10)], 1), {
    prompt_tokens: 10,
    completion_tokens: 7,
    total_tokens: 17,
    prompt_tokens_details: { cached_tokens: 6 },
  });
  assert.deepEqual(sumUsage([u(10, 3), u(5, 4, 2)], 2), {
    prompt_tokens: 15,
    completion_tokens: 7,
    total_tokens: 22,
    prompt_tokens_details: { cached_tokens: 2 },
  });
  const lp = completionLogprobs(
    [
      { id: 1, token: 'ab', logprob: -1, topLogprobs: [{ id: 1, token: 'ab', logprob: -1 }] },
      { id: 2, token: 'c', logprob: -2 },
    ],
    5,
  );
  assert.deepEqual(lp, {
    tokens: ['ab', 'c'],
    token_logprobs: [-1, -2],
    top_logprobs: [{ ab: -1 }, {}],
    text_offset: [5, 7],
  });
});

test('the slot limiter queues in order and drops waiters whose signal aborts', async () => {
  const limiter = new SlotLimiter(1, 2);
  const full = () => new HttpError(503, 'full');
  const first = await limiter.acquire(undefined, full);
  const order: string[] = [];
  const controller = new AbortController();
  const second = limiter.acquire(controller.signal, full);
  const third = limiter.acquire(undefined, full).then((release) => {
    order.push('third');
    return release;
  });
  await assert.rejects(limiter.acquire(undefined, full), /full/);
  assert.equal(limiter.queued, 2);
  controller.abort(new Error('gone'));
  await assert.rejects(second, /gone/);
  assert.equal(limiter.queued, 1);
  first();
  (await third)();
  assert.deepEqual(order, ['third']);
  assert.equal(limiter.running, 0);
  assert.equal(limiter.queued, 0);
});
