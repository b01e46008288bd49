import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import {
  cachedGraph,
  type GraphCacheVerify,
  graphCacheKey,
  graphEntryProblem,
  removeStaleTempEntries,
  writeGraphDir,
} from '../src/engine/graph-cache.js';
import { createSession, ortErrorText, sessionForGraph } from '../src/engine/session.js';
import { GraphBuilder } from '../src/onnx/graph.js';

function scaleGraph(factor: number) {
  const g = new GraphBuilder('scale');
  const x = g.input('x', 'float32', [4096]);
  const w = g.initializer('w', 'float32', [4096], new Float32Array(4096).fill(factor));
  g.output(g.mul(x, w), 'y', 'float32', [4096]);
  return g.graph;
}

test('a cached graph is built once, written atomically, and runs from disk', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-cache-'));
  try {
    const ckpt = path.join(dir, 'model.safetensors');
    writeFileSync(ckpt, 'weights v1');
    const key = graphCacheKey([ckpt], { dtype: 'fp32' });
    let builds = 0;
    const build = async () => {
      builds++;
      return scaleGraph(3);
    };
    const first = await cachedGraph(path.join(dir, 'cache'), key, build);
    const second = await cachedGraph(path.join(dir, 'cache'), key, build);
    assert.equal(builds, 1);
    assert.equal(first.hit, false);
    assert.equal(second.hit, true);
    assert.deepEqual(readdirSync(path.join(dir, 'cache')), [key]);
    const session = await createSession(second.modelPath, { threads: 1 });
    const y = await session.run({ x: new ort.Tensor('float32', new Float32Array(4096).fill(2), [4096]) });
    assert.equal((y.y.data as Float32Array)[4095], 6);
    await session.release();

    assert.notEqual(graphCacheKey([ckpt], { dtype: 'int8' }), key, 'options change the key');
    writeFileSync(ckpt, 'weights v2, longer');
    assert.notEqual(graphCacheKey([ckpt], { dtype: 'fp32' }), key, 'a changed checkpoint changes the key');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a failed build leaves no cache entry behind', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-cache-'));
  try {
    await assert.rejects(
      cachedGraph(dir, 'k', async () => {
        throw new Error('tensor missing');
      }),
      /tensor missing/,
    );
    assert.deepEqual(readdirSync(dir), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('when another process finishes the same entry first, its complete entry is kept, not replaced', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-cache-'));
  try {
    const cache = path.join(dir, 'cache');
    const other = scaleGraph(5);
    const { modelPath } = await cachedGraph(cache, 'k', async () => {
      // The other process renames its entry into place while this one is still building.
      await writeGraphDir(other, path.join(cache, 'k'), { keepExisting: true });
      return scaleGraph(3);
    });
    assert.deepEqual(readdirSync(cache), ['k'], 'no temporary folder is left');
    const session = await createSession(modelPath, { threads: 1 });
    const y = await session.run({ x: new ort.Tensor('float32', new Float32Array(4096).fill(2), [4096]) });
    assert.equal((y.y.data as Float32Array)[0], 10, 'the first complete entry stays');
    await session.release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A cache holding one entry for `key` (scale 3), the warnings it gave, and a build counter. */
async function cacheWithEntry() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-cache-'));
  const warnings: string[] = [];
  let builds = 0;
  const build = async () => {
    builds++;
    return scaleGraph(3);
  };
  const onWarning = (m: string) => warnings.push(m);
  await cachedGraph(dir, 'k', build, { onWarning });
  return { dir, entry: path.join(dir, 'k'), warnings, onWarning, build, builds: () => builds };
}

async function runScale(modelPath: string): Promise<number> {
  const session = await createSession(modelPath, { threads: 1 });
  try {
    const y = await session.run({ x: new ort.Tensor('float32', new Float32Array(4096).fill(2), [4096]) });
    return (y.y.data as Float32Array)[4095];
  } finally {
    await session.release();
  }
}

function flipByte(file: string, at: number): void {
  const bytes = readFileSync(file);
  bytes[at] ^= 0x5a;
  writeFileSync(file, bytes);
}

test('an entry damaged after it was written is rebuilt with a warning naming it', async () => {
  const damages: [string, (entry: string) => void, RegExp, GraphCacheVerify][] = [
    [
      'truncated weights',
      (e) => truncateSync(path.join(e, 'weights.bin'), 100),
      /weights\.bin is 100 bytes, its checksums say \d+/,
      'sizes',
    ],
    [
      'a flipped byte in the graph',
      (e) => flipByte(path.join(e, 'model.onnx'), 20),
      /model\.onnx does not match its SHA-256/,
      'sizes',
    ],
    [
      'a flipped byte in the weights (full check)',
      (e) => flipByte(path.join(e, 'weights.bin'), 5000),
      /weights\.bin does not match its SHA-256/,
      'full',
    ],
    [
      'an entry without checksums',
      (e) => rmSync(path.join(e, 'checksums.json')),
      /checksums\.json is missing/,
      'sizes',
    ],
  ];
  for (const [what, damage, reason, verify] of damages) {
    const c = await cacheWithEntry();
    try {
      assert.equal(graphEntryProblem(c.entry, verify), undefined, what);
      damage(c.entry);
      assert.match(graphEntryProblem(c.entry, verify) ?? '', reason, what);
      const again = await cachedGraph(c.dir, 'k', c.build, { onWarning: c.onWarning, verify });
      assert.equal(again.hit, false, what);
      assert.equal(c.builds(), 2, what);
      assert.equal(c.warnings.length, 1, what);
      assert.ok(c.warnings[0].includes(c.entry), `${what}: ${c.warnings[0]}`);
      assert.match(c.warnings[0], reason, what);
      assert.equal(graphEntryProblem(c.entry, 'full'), undefined, `${what}: the rebuilt entry is intact`);
      assert.equal(await runScale(again.modelPath), 6, what);
      assert.deepEqual(readdirSync(c.dir), ['k'], `${what}: no temporary folder is left`);
    } finally {
      rmSync(c.dir, { recursive: true, force: true });
    }
  }
});

test('a flipped weight byte passes the load-time size check; only the full check sees it', async () => {
  const c = await cacheWithEntry();
  try {
    flipByte(path.join(c.entry, 'weights.bin'), 5000);
    assert.equal((await cachedGraph(c.dir, 'k', c.build, { onWarning: c.onWarning })).hit, true);
    assert.deepEqual(c.warnings, []);
  } finally {
    rmSync(c.dir, { recursive: true, force: true });
  }
});

test('an entry ONNX Runtime cannot load is rebuilt once, with its error as plain text', async () => {
  const c = await cacheWithEntry();
  try {
    // Damage that the checksums cannot see (they are rewritten to match): ORT refuses the protobuf.
    const model = path.join(c.entry, 'model.onnx');
    writeFileSync(model, Buffer.from('\u0008\u0007 not a protobuf graph \u00ff\u00ff\u00ff'));
    const checksums = JSON.parse(readFileSync(path.join(c.entry, 'checksums.json'), 'utf8'));
    const entry = checksums.files.find((f: { name: string }) => f.name === 'model.onnx');
    entry.bytes = statSync(model).size;
    entry.sha256 = createHash('sha256').update(readFileSync(model)).digest('hex');
    writeFileSync(path.join(c.entry, 'checksums.json'), JSON.stringify(checksums));
    await assert.rejects(createSession(model, { threads: 1 }), 'the damaged graph really fails to load');

    const session = await sessionForGraph(c.build, {
      threads: 1,
      cache: { dir: c.dir, key: 'k', onWarning: c.onWarning },
    });
    const y = await session.run({ x: new ort.Tensor('float32', new Float32Array(4096).fill(2), [4096]) });
    assert.equal((y.y.data as Float32Array)[0], 6);
    await session.release();
    assert.equal(c.builds(), 2);
    assert.equal(c.warnings.length, 1);
    assert.ok(c.warnings[0].includes(c.entry), c.warnings[0]);
    assert.match(c.warnings[0], /ONNX Runtime cannot load it: .+; rebuilding it/);
    assert.doesNotMatch(c.warnings[0], /\u001b|\n/);
  } finally {
    rmSync(c.dir, { recursive: true, force: true });
  }
});

test("ONNX Runtime's error text loses ANSI colour codes and extra lines", () => {
  const raw = new Error('\u001b[1;31m2026 [E:onnxruntime] Protobuf parsing failed.\u001b[m\nstack line');
  assert.equal(ortErrorText(raw), '2026 [E:onnxruntime] Protobuf parsing failed.');
});

test('temporary folders of dead conversions are removed; a live process keeps its own', async () => {
  const c = await cacheWithEntry();
  try {
    const finished = spawnSync(process.execPath, ['-e', '']);
    assert.equal(finished.status, 0);
    const dead = path.join(c.dir, `k2.tmp-${finished.pid}-1700000000000`);
    const live = path.join(c.dir, `k3.tmp-${process.pid}-1700000000000`);
    const hostTag = createHash('sha256').update(os.hostname()).digest('hex').slice(0, 8);
    const ours = `k5.tmp-${finished.pid}-1700000000000.2-${hostTag}`;
    const otherHost = path.join(c.dir, `k6.tmp-${finished.pid}-1700000000000-0badcafe`);
    for (const dir of [dead, live, path.join(c.dir, ours), otherHost]) {
      mkdirSync(dir);
      writeFileSync(path.join(dir, 'weights.bin'), 'half written');
    }
    const again = await cachedGraph(c.dir, 'k', c.build, { onWarning: c.onWarning });
    assert.equal(again.hit, true);
    assert.equal(existsSync(dead), false, 'the dead process folder is gone');
    assert.equal(existsSync(path.join(c.dir, ours)), false, "this host's dead process folder is gone");
    assert.equal(existsSync(path.join(live, 'weights.bin')), true, 'the live process folder stays');
    assert.equal(existsSync(otherHost), true, "another host's folder stays: its pid means nothing here");
    assert.deepEqual(
      c.warnings.sort(),
      [
        `removed ${dead}, left by a graph conversion whose process is gone`,
        `removed ${path.join(c.dir, ours)}, left by a graph conversion whose process is gone`,
      ].sort(),
    );
    assert.deepEqual(removeStaleTempEntries(c.dir), [], 'nothing else to remove');
  } finally {
    rmSync(c.dir, { recursive: true, force: true });
  }
});
