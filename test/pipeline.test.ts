import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { numImageTokens } from '../src/config/model-config.js';
import { InternVLError } from '../src/errors.js';
import { loadImage } from '../src/io/image.js';
import { IMAGE_TOKEN } from '../src/pipeline/conversation.js';
import { type Pipeline, pipeline } from '../src/pipeline/pipeline.js';
import { toPixelValues } from '../src/preprocess/pixels.js';
import { dynamicPreprocess } from '../src/preprocess/tiles.js';
import { buildChatPrompt, expandImagePlaceholders } from '../src/text/prompt.js';
import { GOLDEN_DIR, goldenModelDir } from './helpers.js';

const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-pipeline-cache-'));
const IMAGE = path.join(GOLDEN_DIR, 'prep/sources/s0_500x300_rgb.png');
const IMAGE2 = path.join(GOLDEN_DIR, 'prep/sources/s2_37x61_rgb.png');
const sampled = { temperature: 0.9, topK: 0, seed: 1234, maxNewTokens: 12, ignoreEos: true };

let pipe: Pipeline;
before(async () => {
  pipe = await pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), { cacheDir, threads: 1, maxTiles: 2 });
});
after(async () => {
  await pipe.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

describe('InternVL3.5 (Qwen3 LLM) through pipeline()', () => {
  test('the golden text case: the same prompt tokens and greedy tokens as the reference', async () => {
    const model = 'tiny-internvl3_5-qwen3';
    const meta = JSON.parse(readFileSync(path.join(GOLDEN_DIR, 'cases', model, 'text.json'), 'utf8'));
    const p = await pipeline(goldenModelDir(model), { cacheDir, threads: 1 });
    try {
      const r = await p.infer(meta.question, { maxNewTokens: 8, ignoreEos: true });
      assert.equal(r.usage.promptTokens, meta.seq_len);
      assert.deepEqual(r.tokenIds, meta.greedy_tokens);
    } finally {
      await p.close();
    }
  });
});

describe('pipeline inputs', () => {
  test('greedy tokens of an image prompt equal the reference path (preprocessing + template + engine)', async () => {
    const image = await loadImage(IMAGE);
    const { tiles } = dynamicPreprocess(image, { maxTiles: 2 });
    const { prompt } = buildChatPrompt({
      template: pipe.template,
      question: 'What is it?',
      numTiles: tiles.length,
    });
    const ids = pipe.tokenizer.encode(
      expandImagePlaceholders(prompt, [tiles.length], numImageTokens(pipe.config)),
    );
    const reference = await pipe.model.generateGreedy(ids, {
      pixelValues: toPixelValues(tiles),
      numTiles: tiles.length,
      maxNewTokens: 8,
    });
    const r = await pipe.infer(
      { prompt: 'What is it?', images: [IMAGE] },
      { maxNewTokens: 8, ignoreEos: true },
    );
    assert.deepEqual(r.tokenIds, reference);
    assert.equal(r.usage.promptTokens, ids.length);
    assert.equal(r.usage.imageTokens, tiles.length * 256);
    assert.equal(r.usage.completionTokens, 8);
    assert.equal(r.finishReason, 'length');
  });

  test('every input form: string, prompt object, chat messages with a data URL, interleaved IMAGE_TOKEN', async () => {
    const dataUrl = `data:image/png;base64,${readFileSync(IMAGE).toString('base64')}`;
    const byObject = await pipe.infer({ prompt: 'Describe.', images: [IMAGE] }, { maxNewTokens: 4 });
    const byMessages = await pipe.infer(
      [
        {
          role: 'user',
          content: [
            { type: 'image_url', image_url: { url: dataUrl } },
            { type: 'text', text: 'Describe.' },
          ],
        },
      ],
      { maxNewTokens: 4 },
    );
    assert.deepEqual(byMessages.tokenIds, byObject.tokenIds);
    assert.equal(byMessages.usage.promptTokens, byObject.usage.promptTokens);

    const text = await pipe.infer('Hello there', { maxNewTokens: 3 });
    assert.equal(text.usage.imageTokens, 0);

    // Two images, default placement ("Image-1: <image>\nImage-2: <image>\n") vs explicit markers.
    const labelled = await pipe.infer({ prompt: 'Compare.', images: [IMAGE, IMAGE2] }, { maxNewTokens: 3 });
    const marked = await pipe.infer(
      { prompt: `Image-1: ${IMAGE_TOKEN}\nImage-2: ${IMAGE_TOKEN}\nCompare.`, images: [IMAGE, IMAGE2] },
      { maxNewTokens: 3 },
    );
    assert.deepEqual(marked.tokenIds, labelled.tokenIds);
    assert.equal(marked.usage.promptTokens, labelled.usage.promptTokens);
    const interleaved = await pipe.infer(
      { prompt: `First ${IMAGE_TOKEN} then ${IMAGE_TOKEN}?`, images: [IMAGE, IMAGE2] },
      { maxNewTokens: 3 },
    );
    assert.notEqual(interleaved.usage.promptTokens, labelled.usage.promptTokens);
  });

  test('a batch returns results in input order', async () => {
    const inputs = ['one', { prompt: 'two', images: [IMAGE] }, 'three'];
    const batch = await pipe.infer(inputs, { maxNewTokens: 4 });
    assert.equal(batch.length, 3);
    for (const [i, input] of inputs.entries()) {
      assert.deepEqual(
        batch[i].tokenIds,
        (await pipe.infer(input, { maxNewTokens: 4 })).tokenIds,
        `input ${i}`,
      );
    }
  });

  test('bad inputs are clear errors', async () => {
    await assert.rejects(
      pipe.infer({ prompt: `${IMAGE_TOKEN} ${IMAGE_TOKEN}`, images: [IMAGE] }),
      /marks 2 image/,
    );
    await assert.rejects(pipe.infer([]), /messages must not be empty|input/);
    await assert.rejects(pipe.infer({ prompt: 'x', images: ['/no/such/file.png'] }), /no\/such\/file\.png/);
    await assert.rejects(pipe.infer('x', { temperature: -1 }), /temperature/);
    await assert.rejects(
      pipe.infer([{ role: 'assistant', content: 'hi' }]),
      /last message must be from the user/,
    );
  });
});

describe('generation', () => {
  test('streamed text equals non-streamed text for the same seed', async () => {
    const whole = await pipe.infer({ prompt: 'Tell me.', images: [IMAGE] }, sampled);
    let text = '';
    const ids: number[] = [];
    let last: { finishReason?: string } = {};
    for await (const chunk of pipe.stream({ prompt: 'Tell me.', images: [IMAGE] }, sampled)) {
      text += chunk.text;
      ids.push(...chunk.tokenIds);
      last = chunk;
    }
    assert.equal(text, whole.text);
    assert.deepEqual(ids, whole.tokenIds);
    assert.equal(last.finishReason, whole.finishReason);
    const other = await pipe.infer({ prompt: 'Tell me.', images: [IMAGE] }, { ...sampled, seed: 99 });
    assert.notDeepEqual(other.tokenIds, whole.tokenIds, 'another seed samples other tokens');
  });

  test('a stop string ends generation and is not part of the text', async () => {
    const free = await pipe.infer('Say something long.', { ...sampled, maxNewTokens: 24 });
    const chars = [...free.text];
    const at = chars.findIndex((c, i) => i >= 2 && c !== '\uFFFD');
    assert.ok(at > 0, `need a decodable character in ${JSON.stringify(free.text)}`);
    const stop = chars[at];
    const cut = free.text.indexOf(stop);
    const r = await pipe.infer('Say something long.', { ...sampled, maxNewTokens: 24, stop: [stop] });
    assert.equal(r.text, free.text.slice(0, cut));
    assert.equal(r.finishReason, 'stop');
    assert.ok(r.tokenIds.length < free.tokenIds.length);
  });

  test('an AbortSignal stops a stream; finishReason is abort', async () => {
    const controller = new AbortController();
    let chunks = 0;
    let finish: string | undefined;
    for await (const chunk of pipe.stream(
      'Go on.',
      { maxNewTokens: 200, ignoreEos: true },
      {
        signal: controller.signal,
      },
    )) {
      chunks++;
      if (chunks === 2) controller.abort();
      finish = chunk.finishReason ?? finish;
    }
    assert.equal(finish, 'abort');
    assert.ok(chunks < 50);
    // The engine is free for the next request.
    assert.equal((await pipe.infer('next', { maxNewTokens: 2, ignoreEos: true })).tokenIds.length, 2);
  });

  test('the context guard rejects prompt + maxNewTokens > sessionLen before any work', async () => {
    await assert.rejects(
      pipe.infer({ prompt: 'x', images: [IMAGE] }, { maxNewTokens: 8000 }),
      (e: unknown) =>
        e instanceof InternVLError && e.code === 'CONTEXT_OVERFLOW' && /sessionLen 8192/.test(e.message),
    );
  });
});

describe('chat sessions', () => {
  test('turn two reuses the KV cache and image features, and equals a fresh run of the whole conversation', async () => {
    const gen = { maxNewTokens: 6 };
    // An image no other test uses, so its features are not cached yet.
    const data = new Uint8Array(300 * 200 * 3).map((_, i) => (i * 37) % 251);
    const image = { width: 300, height: 200, data };
    const session = await pipe.chat({ prompt: 'What is this?', images: [image] }, { gen });
    const first = session.response!;
    // Earlier requests' prompts (prefix cache) may supply the system prompt, never the new image.
    assert.ok(first.cache.reusedPromptTokens < first.usage.promptTokens - first.usage.imageTokens);
    assert.ok(first.cache.encodedTiles > 0);

    await pipe.chat('And the colours?', { session, gen });
    const second = session.response!;
    assert.equal(second.cache.encodedTiles, 0, 'the image is not encoded again');
    assert.ok(
      second.cache.reusedPromptTokens >= first.usage.promptTokens,
      `reused ${second.cache.reusedPromptTokens} of ${second.usage.promptTokens}`,
    );
    assert.equal(session.history.length, 4);

    const fresh = await pipe.infer(session.history.slice(0, 3), gen);
    assert.deepEqual(second.tokenIds, fresh.tokenIds);
    assert.equal(second.usage.promptTokens, fresh.usage.promptTokens);
    await pipe.endSession(session);
  });
});

describe('weight precision', () => {
  test('int4 decode with int8 prefill runs through the pipeline and stays close to fp32', async () => {
    const quantised = await pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), {
      cacheDir,
      threads: 1,
      maxTiles: 2,
      llmDtype: 'int4',
      prefillDtype: 'int8',
    });
    try {
      const input = { prompt: 'What is it?', images: [IMAGE] };
      const q = await quantised.infer(input, { maxNewTokens: 4, ignoreEos: true, topLogprobs: 1 });
      const f = await pipe.infer(input, { maxNewTokens: 4, ignoreEos: true, topLogprobs: 1 });
      assert.equal(q.tokenIds.length, 4);
      assert.equal(q.usage.promptTokens, f.usage.promptTokens);
      // Random tiny weights have small margins; the first token's logprob stays close.
      assert.ok(Math.abs(q.logprobs![0].logprob - f.logprobs![0].logprob) < 0.5);
    } finally {
      await quantised.close();
    }
  });
});

describe('progress', () => {
  test('onProgress reports loading the engine and encoding a new image tile by tile', async () => {
    const events: { label: string; done: number; total: number | undefined }[] = [];
    const p = await pipeline(goldenModelDir('tiny-internvl2_5-vit6b-qwen2'), {
      cacheDir,
      threads: 1,
      maxTiles: 2,
      onProgress: (e) => events.push(e),
    });
    try {
      const loading = events.filter((e) => e.label === 'loading model');
      assert.deepEqual(
        loading.map((e) => [e.done, e.total]),
        [
          [0, 2],
          [1, 2],
          [2, 2],
        ],
      );
      await p.infer({ prompt: 'x', images: [IMAGE] }, { maxNewTokens: 1 });
      const encoding = events.filter((e) => e.label === 'encoding tiles');
      assert.deepEqual(
        encoding.map((e) => e.done),
        [1, 2, 3],
      );
      assert.ok(encoding.every((e) => e.total === 3));
    } finally {
      await p.close();
    }
  });
});
