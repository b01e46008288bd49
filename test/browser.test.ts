/**
 * The in-browser demo (examples/browser) in headless Chromium: golden tiles byte-identical, the tiny
 * golden model on the WASM provider giving Node's greedy ids (golden case and image end to end; an int4
 * conversion against Node's int4 graphs), a
 * second visit loading from the Cache API with the model server gone, and the WebGPU path (run where
 * the browser has an adapter, reported otherwise).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Page } from 'playwright-core';
import { bundleForBrowser, DEMO_DIR, type DemoServer, startDemoServer } from '../scripts/browser-demo.js';
import { convertModelForWeb } from '../src/cli/convert-web.js';
import { InternVLModel } from '../src/engine/model.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { type Pipeline, pipeline } from '../src/pipeline/pipeline.js';
import { artifactPath, type Browser, chromiumMissing, launchChromium } from './browser-helpers.js';
import { GOLDEN_DIR, goldenModelDir } from './helpers.js';

const MODEL = 'tiny-internvl2_5-qwen2';
const IMAGE = path.join(GOLDEN_DIR, 'prep/sources/s0_500x300_rgb.png');
const QUESTION = 'What is in the image?';

interface Img1Case {
  inputIds: number[];
  greedy: number[];
}

interface PixelGolden {
  source: string;
  decoded_rgb_sha256: string;
  tiles_sha256: string;
  shape: number[];
}

describe('in-browser demo (Chromium, onnxruntime-web)', { skip: chromiumMissing }, () => {
  let tmp = '';
  let server: DemoServer;
  let browser: Browser;
  let page: Page;
  let nodePipe: Pipeline;
  const pageErrors: string[] = [];

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'internvl-browser-'));
    const bundle = path.join(tmp, 'demo.js');
    await convertModelForWeb(goldenModelDir(MODEL), path.join(tmp, 'model'));
    await bundleForBrowser(path.join(DEMO_DIR, 'main.ts'), bundle);
    // The golden img1 case as raw little-endian arrays the page can fetch.
    const cases = path.join(GOLDEN_DIR, 'cases');
    const expected = await Checkpoint.open(path.join(cases, MODEL, 'img1.safetensors'));
    const inputs = await Checkpoint.open(path.join(cases, '_inputs/img1.safetensors'));
    const pixels = await inputs.readFloat32('pixel_values');
    writeFileSync(
      path.join(tmp, 'img1.f32'),
      new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.byteLength),
    );
    writeFileSync(
      path.join(tmp, 'img1.json'),
      JSON.stringify({
        inputIds: Array.from(await expected.readInt64('input_ids'), Number),
        greedy: Array.from(await expected.readInt64('greedy_tokens'), Number),
      }),
    );
    await expected.close();
    await inputs.close();
    server = await startDemoServer({
      modelDir: path.join(tmp, 'model'),
      bundle,
      extra: { golden: GOLDEN_DIR, data: tmp },
    });
    browser = await launchChromium();
    page = await browser.context.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    await page.goto(server.url);
  });

  after(async () => {
    await browser?.close();
    await server?.close();
    await nodePipe?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  async function loadInPage(): Promise<string> {
    await page.evaluate("delete document.getElementById('status').dataset.ready");
    await page.click('#load');
    await page.waitForFunction("document.getElementById('status').dataset.ready", null, {
      timeout: 30_000,
    });
    const status = (await page.textContent('#status')) ?? '';
    assert.match(status, /loaded in/, status);
    return status;
  }

  test('the page is cross-origin isolated (WASM threads) and the golden tiles are byte-identical', async () => {
    assert.equal(await page.evaluate('crossOriginIsolated'), true);
    const { images } = JSON.parse(readFileSync(path.join(GOLDEN_DIR, 'prep/pixels.json'), 'utf8')) as {
      images: PixelGolden[];
    };
    // No named inner functions here: tsx would wrap them in a helper the page does not have.
    const results = await page.evaluate(
      async (sources: string[]) => {
        const lib = (globalThis as unknown as { internvl: typeof import('../src/web/index.js') }).internvl;
        const out = [];
        for (const source of sources) {
          const blob = await (await fetch(`/golden/prep/${source}`)).blob();
          const image = await lib.decodeImage(blob, { label: source });
          const { tiles } = lib.dynamicPreprocess(image, { minTiles: 1, maxTiles: 6, useThumbnail: true });
          const all = new Uint8Array(tiles.reduce((n, t) => n + t.data.length, 0));
          let offset = 0;
          for (const t of tiles) {
            all.set(t.data, offset);
            offset += t.data.length;
          }
          const digests = [];
          for (const data of [image.data, all]) {
            const bytes = new Uint8Array(await crypto.subtle.digest('SHA-256', data));
            digests.push(Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(''));
          }
          out.push({ source, decoded: digests[0], tiles: digests[1], count: tiles.length });
        }
        return out;
      },
      images.map((g) => g.source),
    );
    for (const [i, g] of images.entries()) {
      assert.equal(results[i].count, g.shape[0], g.source);
      assert.equal(results[i].decoded, g.decoded_rgb_sha256, `${g.source}: decoded RGB differs from Pillow`);
      assert.equal(results[i].tiles, g.tiles_sha256, `${g.source}: tiles differ from the golden tiles`);
    }
  });

  test('WASM: the demo loads the tiny model with progress and gives the golden greedy ids (img1)', async () => {
    const status = await loadInPage();
    assert.match(status, /on wasm \(\d+ thread/);
    const { got, expected } = await page.evaluate(async () => {
      const g = globalThis as unknown as {
        demo: { model: import('../src/web/index.js').WebInternVL };
      };
      const { inputIds, greedy } = (await (await fetch('/data/img1.json')).json()) as Img1Case;
      const pixelValues = new Float32Array(await (await fetch('/data/img1.f32')).arrayBuffer());
      return {
        got: await g.demo.model.greedyIds(inputIds, 8, { pixelValues, numTiles: 1 }),
        expected: greedy,
      };
    });
    assert.deepEqual(got, expected);
  });

  test('WASM: an image and a question through the page stream the same greedy ids as Node', async () => {
    nodePipe = await pipeline(goldenModelDir(MODEL), {
      cacheDir: path.join(tmp, 'graphs'),
      threads: 1,
      maxTiles: 6,
    });
    const reference = await nodePipe.infer({ prompt: QUESTION, images: [IMAGE] }, { maxNewTokens: 12 });
    assert.ok(reference.tokenIds.length > 0);

    await page.setInputFiles('#image', IMAGE);
    await page.fill('#question', QUESTION);
    await page.fill('#max-tiles', '6');
    await page.fill('#max-new-tokens', '12');
    await page.click('#ask');
    await page.waitForFunction("document.getElementById('answer').dataset.done === 'true'", null, {
      timeout: 30_000,
    });
    const ids = JSON.parse((await page.getAttribute('#answer', 'data-token-ids')) ?? '[]') as number[];
    await page.screenshot({ path: artifactPath('browser-demo-answer.png') });
    assert.deepEqual(ids.slice(0, reference.tokenIds.length), reference.tokenIds);
    assert.equal(await page.textContent('#answer'), reference.text);
  });

  test('a second visit loads the model from the Cache API with the model server offline', async () => {
    server.setModelOffline(true);
    try {
      await page.reload();
      await loadInPage();
      const bytes = (await page.getAttribute('#status', 'data-bytes')) ?? '';
      const [loaded, total] = bytes.split('/').map(Number);
      assert.ok(total > 2_000_000 && loaded === total, `progress ${bytes}`);
      assert.equal(Number(await page.getAttribute('#status', 'data-from-cache')), total);
      // The model still answers.
      const ids = await page.evaluate(async () => {
        const g = globalThis as unknown as { demo: { model: import('../src/web/index.js').WebInternVL } };
        const { inputIds } = (await (await fetch('/data/img1.json')).json()) as Img1Case;
        const pixelValues = new Float32Array(await (await fetch('/data/img1.f32')).arrayBuffer());
        return g.demo.model.greedyIds(inputIds, 2, { pixelValues, numTiles: 1 });
      });
      assert.equal(ids.length, 2);
    } finally {
      server.setModelOffline(false);
    }
  });

  test('WebGPU: the golden greedy ids on a GPU adapter (software SwiftShader when the test browser has none)', async (t) => {
    const hasAdapter = (p: Page) =>
      p.evaluate(() =>
        (
          globalThis as unknown as { internvl: typeof import('../src/web/index.js') }
        ).internvl.webGpuAvailable(),
      );
    let gpuPage = page;
    let gpuBrowser: Browser | undefined;
    if (!(await hasAdapter(page))) {
      t.diagnostic(
        'WebGPU: the test browser (--disable-gpu) exposes no adapter; retrying on SwiftShader (software WebGPU)',
      );
      gpuBrowser = await launchChromium([
        '--enable-unsafe-webgpu',
        '--use-webgpu-adapter=swiftshader',
        '--enable-features=Vulkan',
        '--use-angle=swiftshader',
      ]);
      gpuPage = await gpuBrowser.context.newPage();
      await gpuPage.goto(server.url);
    }
    try {
      if (!(await hasAdapter(gpuPage))) {
        t.diagnostic('WebGPU: no adapter, not even SwiftShader; the WebGPU path was not run');
        t.skip('no WebGPU adapter in this browser');
        return;
      }
      await gpuPage.selectOption('#provider', 'webgpu');
      await gpuPage.click('#load');
      await gpuPage.waitForFunction("document.getElementById('status').dataset.ready", null, {
        timeout: 30_000,
      });
      assert.match((await gpuPage.textContent('#status')) ?? '', /on webgpu, loaded/);
      const { got, expected } = await gpuPage.evaluate(async () => {
        const g = globalThis as unknown as { demo: { model: import('../src/web/index.js').WebInternVL } };
        const { inputIds, greedy } = (await (await fetch('/data/img1.json')).json()) as Img1Case;
        const pixelValues = new Float32Array(await (await fetch('/data/img1.f32')).arrayBuffer());
        return {
          got: await g.demo.model.greedyIds(inputIds, 8, { pixelValues, numTiles: 1 }),
          expected: greedy,
        };
      });
      assert.deepEqual(got, expected);
      t.diagnostic(
        `WebGPU: golden greedy ids matched on ${gpuBrowser ? 'SwiftShader (software)' : 'the browser adapter'}`,
      );
    } finally {
      await gpuBrowser?.close();
    }
  });

  /**
   * Converts the golden model for the web with `precision`, loads it in a page and checks its greedy ids
   * for img1 against Node's with `precision` plus `nodeExtra`.
   */
  async function webMatchesNode(
    label: string,
    precision: { llmDtype: 'int4'; prefillDtype?: 'int8' },
    nodeExtra: { int8Kernel?: 'u8u8' },
  ) {
    const modelDir = path.join(tmp, `model-${label}`);
    await convertModelForWeb(goldenModelDir(MODEL), modelDir, precision);
    const webServer = await startDemoServer({
      modelDir,
      bundle: path.join(tmp, 'demo.js'),
      extra: { data: tmp },
    });
    const page = await browser.context.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    // onnxruntime-web's WASM MatMulNBits computes in fp32 whatever the accuracy level: Node's ids at level 0
    // are the exact reference (at level 4, int8 activations, random tiny weights diverge after two tokens).
    const node = await InternVLModel.load(goldenModelDir(MODEL), {
      cacheDir: path.join(tmp, `graphs-${label}`),
      threads: 1,
      ...precision,
      ...nodeExtra,
      accuracyLevel: 0,
    });
    try {
      const { inputIds } = JSON.parse(readFileSync(path.join(tmp, 'img1.json'), 'utf8')) as Img1Case;
      const pixelValues = new Float32Array(new Uint8Array(readFileSync(path.join(tmp, 'img1.f32'))).buffer);
      const expected = await node.generateGreedy(inputIds, { pixelValues, numTiles: 1, maxNewTokens: 8 });
      await page.goto(webServer.url);
      await page.click('#load');
      await page.waitForFunction("document.getElementById('status').dataset.ready", null, {
        timeout: 30_000,
      });
      const got = await page.evaluate(async () => {
        const g = globalThis as unknown as { demo: { model: import('../src/web/index.js').WebInternVL } };
        const { inputIds } = (await (await fetch('/data/img1.json')).json()) as Img1Case;
        const pixelValues = new Float32Array(await (await fetch('/data/img1.f32')).arrayBuffer());
        return g.demo.model.greedyIds(inputIds, 8, { pixelValues, numTiles: 1 });
      });
      assert.deepEqual(got, expected);
    } finally {
      await node.close();
      await page.close();
      await webServer.close();
    }
  }

  test('WASM: an int4 conversion (fused MatMulNBits) gives the greedy ids of int4 graphs in Node', () =>
    webMatchesNode('int4', { llmDtype: 'int4' }, {}));

  // The decode graph attends by matmuls over the KV buffers; the web's int8 kernel is U8U8.
  test('WASM: a two-graph conversion (int4 decode, int8 prefill) gives the greedy ids of Node', () =>
    webMatchesNode('int4-int8', { llmDtype: 'int4', prefillDtype: 'int8' }, { int8Kernel: 'u8u8' }));

  test('no uncaught errors in the page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
