/**
 * The chat page of `internvl serve` (GET /) in headless Chromium: an uploaded image and a question
 * stream an answer through the server's own /v1/chat/completions, a second turn carries the history,
 * and the stop button ends a running answer. Screenshots go to the test-artifacts folder.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Page } from 'playwright-core';
import { type Pipeline, pipeline } from '../src/pipeline/pipeline.js';
import { createServer, type InternVLServer } from '../src/server/server.js';
import { artifactPath, type Browser, chromiumMissing, launchChromium } from './browser-helpers.js';
import { GOLDEN_DIR, goldenModelDir } from './helpers.js';

const IMAGE = path.join(GOLDEN_DIR, 'prep/sources/s2_37x61_rgb.png');
const API_KEY = 'chat-page-key';

test('GET / serves the chat page (no browser needed)', async () => {
  const { CHAT_PAGE_HTML } = await import('../src/server/chat-page.js');
  assert.match(CHAT_PAGE_HTML, /<title>InternVL chat<\/title>/);
  assert.match(CHAT_PAGE_HTML, /\/v1\/chat\/completions/);
});

describe('chat page at / of internvl serve (Chromium)', { skip: chromiumMissing }, () => {
  let cacheDir = '';
  let pipe: Pipeline;
  let server: InternVLServer;
  let base = '';
  let browser: Browser;
  let page: Page;

  before(async () => {
    cacheDir = mkdtempSync(path.join(os.tmpdir(), 'internvl-chat-page-'));
    pipe = await pipeline(goldenModelDir('tiny-internvl2_5-qwen2'), { cacheDir, threads: 1, maxTiles: 6 });
    server = await createServer(pipe, { modelName: 'tiny', apiKey: API_KEY });
    base = (await server.listen(0, '127.0.0.1')).url;
    browser = await launchChromium();
    page = await browser.context.newPage();
    await page.goto(`${base}/`);
    await page.fill('#api-key', API_KEY);
    await page.dispatchEvent('#api-key', 'change');
  });

  after(async () => {
    await browser?.close();
    await server?.close();
    await pipe?.close();
    rmSync(cacheDir, { recursive: true, force: true });
  });

  async function apiAnswer(messages: unknown[], maxTokens: number): Promise<string> {
    const res = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` },
      body: JSON.stringify({ model: 'tiny', messages, max_tokens: maxTokens, temperature: 0 }),
    });
    assert.equal(res.status, 200);
    return ((await res.json()) as { choices: { message: { content: string } }[] }).choices[0].message.content;
  }

  async function sendTurn(text: string): Promise<{ answer: string; finish: string | null }> {
    const before = await page.locator('.msg.assistant').count();
    await page.fill('#input', text);
    await page.click('#send');
    const bubble = page.locator('.msg.assistant').nth(before);
    await bubble.and(page.locator('[data-done="true"]')).waitFor({ timeout: 30_000 });
    return {
      answer: (await bubble.locator('.text').textContent()) ?? '',
      finish: await bubble.getAttribute('data-finish'),
    };
  }

  test('an uploaded image and two turns: streamed answers equal the API, with history', async () => {
    const hint = () =>
      page.evaluate<string>("getComputedStyle(document.getElementById('messages'), '::before').content");
    assert.match(await hint(), /Ask a question/, 'an empty chat shows what to do');
    await page.fill('#max-tokens', '16');
    await page.fill('#max-tiles', '2');
    await page.setInputFiles('#image', IMAGE);
    await page.locator('#attachment img').waitFor();
    const first = await sendTurn('Describe the image.');
    await page.screenshot({ path: artifactPath('chat-page-turn1.png'), fullPage: true });
    const dataUrl = `data:image/png;base64,${readFileSync(IMAGE).toString('base64')}`;
    const turn1 = [
      {
        role: 'user',
        content: [
          { type: 'image_url', image_url: { url: dataUrl, max_dynamic_patch: 2 } },
          { type: 'text', text: 'Describe the image.' },
        ],
      },
    ];
    assert.equal(first.finish, 'stop');
    assert.equal(first.answer, await apiAnswer(turn1, 16));
    assert.ok(first.answer.length > 0);

    const second = await sendTurn('And the colours?');
    await page.screenshot({ path: artifactPath('chat-page-turn2.png'), fullPage: true });
    const turn2 = [
      ...turn1,
      { role: 'assistant', content: first.answer },
      { role: 'user', content: [{ type: 'text', text: 'And the colours?' }] },
    ];
    assert.equal(second.answer, await apiAnswer(turn2, 16));
    assert.deepEqual(
      await page
        .locator('.msg')
        .evaluateAll((els) => els.map((e) => (e as unknown as { dataset: { role: string } }).dataset.role)),
      ['user', 'assistant', 'user', 'assistant'],
    );
    assert.equal(await page.locator('.msg.user img').count(), 1);
    assert.equal(await hint(), 'none', 'the hint goes once there are messages');
  });

  test('"working…" until the first token, and an answer without visible text says so', async () => {
    // A server that takes 2.5 s to its first (empty) delta, then ends at the token limit.
    const chunk = (choice: unknown) => `data: ${JSON.stringify({ choices: [choice] })}\n\n`;
    await page.route('**/v1/chat/completions', async (route) => {
      await new Promise((r) => setTimeout(r, 2500));
      await route.fulfill({
        status: 200,
        headers: { 'content-type': 'text/event-stream' },
        body: `${chunk({ index: 0, delta: { role: 'assistant', content: '' } })}${chunk({ index: 0, delta: { content: ' ' } })}${chunk({ index: 0, delta: {}, finish_reason: 'length' })}data: [DONE]\n\n`,
      });
    });
    try {
      await page.fill('#input', 'Anything?');
      await page.click('#send');
      const bubble = page.locator('.msg.assistant').last();
      await page.waitForFunction(
        "/working… [12] s/.test(document.querySelector('.msg.assistant:last-child .text').textContent)",
        null,
        { timeout: 5_000 },
      );
      assert.match((await bubble.getAttribute('class')) ?? '', /pending/);
      await page.screenshot({ path: artifactPath('chat-page-working.png'), fullPage: true });
      await bubble.and(page.locator('[data-done="true"]')).waitFor({ timeout: 10_000 });
      assert.match((await bubble.locator('.text').textContent()) ?? '', /no visible text.*max-tokens limit/);
      assert.doesNotMatch((await bubble.getAttribute('class')) ?? '', /pending/);
    } finally {
      await page.unroute('**/v1/chat/completions');
    }
  });

  test('the stop button ends a running answer', async () => {
    // The tiny random model may end an answer at once; the test makes this request ignore eos.
    await page.route('**/v1/chat/completions', (route) =>
      route.continue({ postData: JSON.stringify({ ...route.request().postDataJSON(), ignore_eos: true }) }),
    );
    await page.fill('#max-tokens', '4000');
    await page.fill('#input', 'Write a very long story.');
    await page.click('#send');
    const bubble = page.locator('.msg.assistant').last();
    await page.waitForFunction(
      "!document.querySelector('.msg.assistant:last-child').classList.contains('pending')",
      null,
      { timeout: 30_000 },
    );
    await page.click('#stop');
    await bubble.and(page.locator('[data-done="true"]')).waitFor({ timeout: 10_000 });
    assert.equal(await bubble.getAttribute('data-finish'), 'abort');
    assert.equal(await page.isDisabled('#stop'), true);
    await page.screenshot({ path: artifactPath('chat-page-stopped.png'), fullPage: true });
  });
});
