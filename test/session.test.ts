import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { afterEach, test } from 'node:test';
import { createSession, executionProviders } from '../src/engine/session.js';
import { InternVLError } from '../src/errors.js';
import { GraphBuilder } from '../src/onnx/graph.js';

const saved = process.env.INTERNVL_EXECUTION_PROVIDER;
afterEach(() => {
  if (saved === undefined) delete process.env.INTERNVL_EXECUTION_PROVIDER;
  else process.env.INTERNVL_EXECUTION_PROVIDER = saved;
});

function identityGraph() {
  const g = new GraphBuilder('identity');
  g.output(g.input('x', 'float32', [2]), 'x', 'float32', [2]);
  return g.graph;
}

test('execution providers: CPU by default, CUDA first when asked, anything else is a named error', () => {
  delete process.env.INTERNVL_EXECUTION_PROVIDER;
  assert.deepEqual(executionProviders(), ['cpu']);
  process.env.INTERNVL_EXECUTION_PROVIDER = 'CUDA';
  assert.deepEqual(executionProviders(), ['cuda', 'cpu']);
  process.env.INTERNVL_EXECUTION_PROVIDER = 'tpu';
  assert.throws(
    () => executionProviders(),
    (e: unknown) => e instanceof InternVLError && /'tpu'; supported: cpu, cuda/.test(e.message),
  );
});

test('without the CUDA libraries, asking for CUDA says how to install them', async (t) => {
  const binDir = path.dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
  const shared = path.join(binDir, 'bin/napi-v6/linux/x64/libonnxruntime_providers_shared.so');
  if (existsSync(shared)) {
    t.skip('onnxruntime-node was installed with its CUDA libraries here');
    return;
  }
  process.env.INTERNVL_EXECUTION_PROVIDER = 'cuda';
  await assert.rejects(
    createSession(identityGraph(), { threads: 1 }),
    (e: unknown) =>
      e instanceof InternVLError &&
      e.code === 'UNSUPPORTED' &&
      /--onnxruntime-node-install=cuda12/.test(e.message),
  );
});
