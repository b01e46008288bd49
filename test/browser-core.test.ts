/**
 * The isomorphic core without a browser: the import graph of what the browser bundle loads holds no
 * Node-only module, the bundle builds, `convert --target web` writes a loadable folder, and the web
 * engine and PNG decoder give Node's results (run here on onnxruntime-node through the same adapter).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { BROWSER_ADAPTERS, bundleForBrowser } from '../scripts/browser-demo.js';
import { convertModelForWeb } from '../src/cli/convert-web.js';
import { InternVLError } from '../src/errors.js';
import { loadImage } from '../src/io/image.js';
import { decodeImage } from '../src/io/image-browser.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { WebInternVL } from '../src/web/engine.js';
import { parseWebManifest, WEB_MANIFEST_FILE } from '../src/web/manifest.js';
import { GOLDEN_DIR, goldenModelDir, REPO_ROOT } from './helpers.js';

const NODE_ONLY =
  /^(node:|fs$|fs\/|path$|os$|crypto$|child_process$|worker_threads$|http$|https$|net$|url$|sharp$|onnxruntime-node$|@ffmpeg-installer\/)/;

/** The folders and files the browser runs; every module they reach statically is checked. */
const BROWSER_ROOTS = [
  'src/preprocess',
  'src/text',
  'src/onnx',
  'src/models',
  'src/web',
  'src/engine/sampler.ts',
  'src/engine/generation-config.ts',
  'src/pipeline/stop.ts',
  'src/pipeline/generation-config.ts',
  'src/pipeline/conversation.ts',
  'src/engine/vision.ts',
  'src/engine/decoder.ts',
  'src/engine/generate.ts',
  'src/io/image-browser.ts',
];

/** Static (non-type) imports and re-exports of a TypeScript file. */
function staticImports(source: string): string[] {
  const out: string[] = [];
  const re = /^\s*(import|export)\s+(type\s+)?([^'";]*?\s+from\s+)?['"]([^'"]+)['"]/gm;
  for (const m of source.matchAll(re)) {
    if (m[2]) continue;
    if (m[1] === 'export' && !m[3]) continue;
    out.push(m[4]);
  }
  return out;
}

function rootFiles(): string[] {
  return BROWSER_ROOTS.flatMap((root) => {
    const abs = path.join(REPO_ROOT, root);
    return root.endsWith('.ts')
      ? [abs]
      : readdirSync(abs)
          .filter((f) => f.endsWith('.ts'))
          .map((f) => path.join(abs, f));
  });
}

test('nothing the browser loads imports a Node-only module (adapters swapped as in the bundle)', () => {
  const adapters = new Map(
    Object.entries(BROWSER_ADAPTERS).map(([n, w]) => [path.join(REPO_ROOT, n), path.join(REPO_ROOT, w)]),
  );
  const seen = new Set<string>();
  const violations: string[] = [];
  const queue = rootFiles().map((f) => adapters.get(f) ?? f);
  while (queue.length > 0) {
    const file = queue.pop() as string;
    if (seen.has(file)) continue;
    seen.add(file);
    for (const spec of staticImports(readFileSync(file, 'utf8'))) {
      if (spec.startsWith('.')) {
        const target = path.resolve(path.dirname(file), spec.replace(/\.js$/, '.ts'));
        queue.push(adapters.get(target) ?? target);
      } else if (NODE_ONLY.test(spec)) {
        violations.push(`${path.relative(REPO_ROOT, file)} imports ${spec}`);
      }
    }
  }
  assert.ok(seen.size > 30, `the scan reached only ${seen.size} files`);
  assert.deepEqual(violations, []);
});

test('the scan catches a Node-only import (it can fail)', () => {
  assert.deepEqual(staticImports("import os from 'node:os';\nimport type { X } from 'sharp';\n"), [
    'node:os',
  ]);
  assert.ok(NODE_ONLY.test('onnxruntime-node') && NODE_ONLY.test('worker_threads') && !NODE_ONLY.test('zod'));
});

let tmp = '';
let webDir = '';
let server: http.Server;
let base = '';

before(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'internvl-web-core-'));
  webDir = path.join(tmp, 'web');
  await convertModelForWeb(goldenModelDir('tiny-internvl2_5-qwen2'), webDir);
  server = http.createServer(async (req, res) => {
    try {
      res.end(await readFile(path.join(webDir, new URL(req.url ?? '/', 'http://x').pathname)));
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
});
after(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  rmSync(tmp, { recursive: true, force: true });
});

test('the browser bundle builds, with onnxruntime-web left to the page and no Node built-in', async () => {
  const out = path.join(tmp, 'bundle.js');
  await bundleForBrowser(path.join(REPO_ROOT, 'src/web/index.ts'), out);
  const code = readFileSync(out, 'utf8');
  assert.match(code, /from "onnxruntime-web"/);
  assert.doesNotMatch(code, /onnxruntime-node|from "node:/);
});

test('convert --target web writes a manifest that lists every file at its size', () => {
  const manifest = parseWebManifest(JSON.parse(readFileSync(path.join(webDir, WEB_MANIFEST_FILE), 'utf8')));
  assert.equal(manifest.name, 'tiny-internvl2_5-qwen2');
  assert.deepEqual(manifest.embeddings.shape, [320, 64]);
  assert.equal(manifest.embeddings.dtype, 'bf16');
  for (const entry of [manifest.graphs.vision.model, ...manifest.graphs.decoder.externalData]) {
    assert.equal(readFileSync(path.join(webDir, entry.path)).byteLength, entry.bytes, entry.path);
  }
  assert.throws(
    () => parseWebManifest({ format: 'internvl-web', version: 99 }, 'm.json'),
    (e: unknown) => e instanceof InternVLError && e.code === 'BAD_CONFIG' && /m\.json/.test(e.message),
  );
});

test('the web engine loads by URL and gives the golden greedy tokens (img1)', async () => {
  const progress: number[] = [];
  const model = await WebInternVL.load(base, {
    cacheName: false,
    onProgress: (p) => progress.push(p.loaded / p.total),
  });
  try {
    assert.equal(progress.at(-1), 1);
    const cases = path.join(GOLDEN_DIR, 'cases');
    const expected = await Checkpoint.open(path.join(cases, 'tiny-internvl2_5-qwen2/img1.safetensors'));
    const inputs = await Checkpoint.open(path.join(cases, '_inputs/img1.safetensors'));
    const ids = Array.from(await expected.readInt64('input_ids'), Number);
    const greedy = Array.from(await expected.readInt64('greedy_tokens'), Number);
    const pixelValues = await inputs.readFloat32('pixel_values');
    await expected.close();
    await inputs.close();
    assert.deepEqual(await model.greedyIds(ids, 8, { pixelValues, numTiles: 1 }), greedy);
  } finally {
    await model.close();
  }
});

test('the web engine names a missing model folder', async () => {
  await assert.rejects(
    WebInternVL.load(`${base}missing/`, { cacheName: false }),
    (e: unknown) => e instanceof InternVLError && /missing\/internvl-web\.json/.test(e.message),
  );
});

test('the browser PNG decoder equals loadImage (Pillow convert RGB) on the golden PNGs, alpha included', async () => {
  const sources = path.join(GOLDEN_DIR, 'prep/sources');
  for (const name of readdirSync(sources).filter((f) => f.endsWith('.png'))) {
    const bytes = new Uint8Array(readFileSync(path.join(sources, name)));
    const web = await decodeImage(bytes, { label: name });
    const node = await loadImage(path.join(sources, name));
    assert.deepEqual([web.width, web.height], [node.width, node.height], name);
    assert.ok(Buffer.from(web.data).equals(Buffer.from(node.data)), `${name}: pixels differ`);
  }
  const truncated = new Uint8Array(readFileSync(path.join(sources, 's0_500x300_rgb.png'))).subarray(0, 400);
  await assert.rejects(
    decodeImage(truncated, { label: 'cut.png' }),
    (e: unknown) => e instanceof InternVLError && e.code === 'BAD_IMAGE' && /cut\.png/.test(e.message),
  );
});
