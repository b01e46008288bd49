import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InternVLError } from '../src/errors.js';
import { loadTokenizer } from '../src/io/tokenizer-files.js';
import { OffThreadTokenizer } from '../src/pipeline/off-thread-tokenizer.js';
import { type Pipeline, pipeline } from '../src/pipeline/pipeline.js';
import { longestTokenChars, longestWord, PromptBounds } from '../src/pipeline/prompt-bounds.js';
import { goldenModelDir } from './helpers.js';

const isError = (code: string, pattern: RegExp) => (err: unknown) =>
  err instanceof InternVLError && err.code === code && pattern.test(err.message);

describe('longestWord', () => {
  test('finds the longest run without whitespace and where it starts', () => {
    assert.deepEqual(longestWord('ab  cde\tf'), { length: 3, start: 4 });
    assert.deepEqual(longestWord(''), { length: 0, start: 0 });
    assert.deepEqual(longestWord('   '), { length: 0, start: 0 });
    assert.deepEqual(longestWord('abcd'), { length: 4, start: 0 });
    // No-break and ideographic spaces separate words too.
    assert.deepEqual(longestWord('ab\u00a0abc\u3000a'), { length: 3, start: 3 });
  });
});

describe('PromptBounds', () => {
  const bounds = new PromptBounds(100, 10, 5);
  test('the character limit is the tokens left for the prompt times the longest token', () => {
    assert.equal(bounds.maxPromptChars(20), 800);
    assert.equal(bounds.maxPromptChars(100), 0);
    bounds.checkLength(800, 'messages[0]', 20);
    assert.throws(
      () => bounds.checkLength(801, 'messages[0]', 20),
      isError(
        'CONTEXT_OVERFLOW',
        /^messages\[0\] has 801 characters, above the limit of 800: sessionLen 100/,
      ),
    );
  });
  test('a run without whitespace longer than the word limit is refused, naming where it starts', () => {
    bounds.checkWords('abcde fghij', 'the prompt');
    assert.throws(
      () => bounds.checkWords('ab abcdef', 'the prompt'),
      isError(
        'BAD_PROMPT',
        /^the prompt has a run of 6 characters without whitespace \(from character 3\); the limit is 5$/,
      ),
    );
  });
});

describe('the bound on a golden tokenizer', () => {
  test('no text encodes to fewer tokens than its length over the longest token', async () => {
    for (const name of ['tiny-internvl2_5-qwen2', 'tiny-internvl2_5-internlm2']) {
      const tokenizer = await loadTokenizer(goldenModelDir(name));
      const longest = longestTokenChars(tokenizer);
      assert.equal(longest, '<IMG_CONTEXT>'.length, `${name}: the longest token is <IMG_CONTEXT>`);
      const texts = [
        'plain words, punctuation! and 12345',
        '<|im_start|><|im_end|><IMG_CONTEXT><img></img>'.repeat(20),
        'ééé 中文字符 🙂🙂 \u0000\u0001 \t\n'.repeat(30),
        '='.repeat(3000),
      ];
      for (const text of texts) {
        const ids = tokenizer.encode(text, { addSpecialTokens: false });
        assert.ok(
          ids.length * longest >= text.length,
          `${name}: ${ids.length} tokens for ${text.length} chars`,
        );
      }
    }
  });

  test('long texts encode in the worker to the same ids as inline', async () => {
    const dir = goldenModelDir('tiny-internvl2_5-qwen2');
    const tokenizer = await loadTokenizer(dir);
    const encoder = new OffThreadTokenizer(tokenizer, dir);
    try {
      const text = `<|im_start|>user\n${'Describe the tiger, élan 中文 🙂. '.repeat(400)}<|im_end|>`;
      assert.ok(text.length > 4096);
      assert.deepEqual(await encoder.encode(text), tokenizer.encode(text));
    } finally {
      await encoder.close();
    }
  });
});

describe('a pipeline refuses prompts that cannot fit before tokenizing them', () => {
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-bounds-cache-'));
  let pipe: Pipeline;
  before(async () => {
    pipe = await pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), {
      cacheDir,
      threads: 1,
      sessionLen: 1000,
    });
  });
  after(async () => {
    await pipe.close();
    rmSync(cacheDir, { recursive: true, force: true });
  });

  test('a 60 MB completion prompt is refused at once', async () => {
    const started = performance.now();
    await assert.rejects(
      pipe.complete('word '.repeat(12_000_000), { maxNewTokens: 10 }),
      isError('CONTEXT_OVERFLOW', /^the prompt has 60000000 characters, above the limit of 12870:/),
    );
    assert.ok(performance.now() - started < 200, 'no tokenizing');
  });

  test('chat messages are checked one by one, for length and for over-long words', async () => {
    await assert.rejects(
      pipe.infer(
        [
          { role: 'user', content: 'hi' },
          { role: 'assistant', content: 'hello' },
          { role: 'user', content: 'a '.repeat(7000) },
        ],
        { maxNewTokens: 10 },
      ),
      isError('CONTEXT_OVERFLOW', /^messages\[2\] has 14000 characters, above the limit of 12870/),
    );
    const big = await pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), { cacheDir, threads: 1 });
    try {
      await assert.rejects(
        big.infer([{ role: 'user', content: `look: ${'x'.repeat(70_000)}` }], { maxNewTokens: 4 }),
        isError(
          'BAD_PROMPT',
          /^messages\[0\] has a run of 70000 characters without whitespace \(from character 6\); the limit is 65536$/,
        ),
      );
    } finally {
      await big.close();
    }
  });

  test('a prompt within the bound still runs, tokenized in the worker when long', async () => {
    // Special tokens: many characters in few tokens (this tiny vocabulary has one token per letter).
    const prompt = 'a<|im_start|>'.repeat(400);
    assert.ok(prompt.length > 4096);
    const r = await pipe.complete(prompt, { maxNewTokens: 2, ignoreEos: true });
    assert.equal(r.usage.promptTokens, pipe.tokenizer.encode(prompt).length);
    assert.equal(r.usage.completionTokens, 2);
  });
});
