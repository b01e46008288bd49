import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from './helpers.js';

const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as {
  exports: Record<string, string | { types: string; import: string }>;
  browser: Record<string, string>;
};
/** The source file a built path of package.json comes from. */
const source = (built: string) =>
  path.join(REPO_ROOT, built.replace(/^\.\/dist\//, 'src/').replace(/\.js$/, '.ts'));

const EXPECTED: Record<string, string[]> = {
  '.': [
    'pipeline',
    'Pipeline',
    'InternVLModel',
    'InternVLError',
    'loadImage',
    'dynamicPreprocess',
    'resolveModel',
  ],
  './server': ['createServer', 'InternVLServer', 'pipelineBackend'],
  './train': ['Trainer', 'transplantVit', 'lossWeights', 'tokenizeTrainingSample'],
  './tools': ['createRandomCheckpoint', 'RANDOM_SHAPES'],
  './web': ['WebInternVL', 'decodeImage', 'dynamicPreprocess', 'toPixelValues'],
};

test('each subpath export is built from an entry that exports its area, and no more areas than listed', async () => {
  const subpaths = Object.keys(pkg.exports).filter((k) => k !== './package.json');
  assert.deepEqual(subpaths.sort(), Object.keys(EXPECTED).sort());
  for (const [subpath, names] of Object.entries(EXPECTED)) {
    const entry = pkg.exports[subpath] as { types: string; import: string };
    assert.equal(entry.types, entry.import.replace(/\.js$/, '.d.ts'), subpath);
    const module = (await import(source(entry.import))) as Record<string, unknown>;
    for (const name of names) assert.ok(name in module, `${subpath} exports ${name}`);
  }
  // The main entry stays small: the server, trainer and tools are their own subpaths.
  const main = (await import(source((pkg.exports['.'] as { import: string }).import))) as Record<
    string,
    unknown
  >;
  for (const name of ['createServer', 'Trainer', 'createRandomCheckpoint']) assert.ok(!(name in main), name);
});

test('the browser map swaps each Node-only engine module for its browser twin, both present', () => {
  for (const [node, web] of Object.entries(pkg.browser)) {
    assert.ok(existsSync(source(node)), node);
    assert.ok(existsSync(source(web)), web);
    assert.match(web, /-web\.js$/);
  }
});
