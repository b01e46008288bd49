import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type ChatMessage, type Pipeline, pipeline } from '../src/index.js';
import { GOLDEN_DIR, goldenModelDir } from './helpers.js';

const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-prefix-cache-'));
const IMAGE_A = path.join(GOLDEN_DIR, 'prep/sources/s0_500x300_rgb.png');
const IMAGE_B = path.join(GOLDEN_DIR, 'prep/sources/s2_37x61_rgb.png');
const greedy = { maxNewTokens: 6, ignoreEos: true };
const options = { cacheDir, threads: 1, maxTiles: 1 };

describe('prefix cache across requests', () => {
  let cached: Pipeline;
  let plain: Pipeline;
  before(async () => {
    cached = await pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), options);
    plain = await pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), { ...options, prefixCacheBytes: 0 });
  });
  after(async () => {
    await cached.close();
    await plain.close();
    rmSync(cacheDir, { recursive: true, force: true });
  });

  test('a resent conversation prefills only its new turn, with the tokens of a cold run', async () => {
    const first = await cached.infer({ prompt: 'What is in the picture?', images: [IMAGE_A] }, greedy);
    assert.equal(first.cache.reusedPromptTokens, 0);
    const conversation: ChatMessage[] = [
      {
        role: 'user',
        content: [
          { type: 'image_url', image_url: { url: IMAGE_A } },
          { type: 'text', text: 'What is in the picture?' },
        ],
      },
      { role: 'assistant', content: first.text },
      { role: 'user', content: 'And what colour is it?' },
    ];
    const second = await cached.infer(conversation, greedy);
    const cold = await plain.infer(conversation, greedy);
    assert.equal(cold.cache.reusedPromptTokens, 0);
    assert.deepEqual(second.tokenIds, cold.tokenIds);
    // Everything up to the first answer came from the cache: the image (256 tokens) included.
    assert.ok(second.cache.reusedPromptTokens > 256, `reused ${second.cache.reusedPromptTokens}`);
    assert.ok(second.cache.reusedPromptTokens < second.usage.promptTokens);
    assert.equal(second.cache.encodedTiles, 0, 'the image is not encoded again');
  });

  test('another image with the same token ids is not mistaken for the cached one', async () => {
    await cached.infer({ prompt: 'Describe it.', images: [IMAGE_A] }, greedy);
    const other = await cached.infer({ prompt: 'Describe it.', images: [IMAGE_B] }, greedy);
    const cold = await plain.infer({ prompt: 'Describe it.', images: [IMAGE_B] }, greedy);
    assert.deepEqual(other.tokenIds, cold.tokenIds);
    assert.equal(other.usage.promptTokens, cold.usage.promptTokens);
    // The system prompt before the image may come from the cache; the image and what follows may not.
    const imageStart = other.usage.promptTokens - other.usage.imageTokens - 10;
    assert.ok(other.cache.reusedPromptTokens <= imageStart, `reused ${other.cache.reusedPromptTokens}`);
    assert.equal(other.cache.encodedTiles, 1);
  });

  test('prefixCacheBytes must be a non-negative integer', async () => {
    await assert.rejects(
      pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), { ...options, prefixCacheBytes: -1 }),
      /prefixCacheBytes must be a non-negative integer/,
    );
  });
});
