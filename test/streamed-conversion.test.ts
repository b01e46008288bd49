import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { checkpointWeights } from '../src/engine/core.js';
import { ExternalDataFile, withWeightSink } from '../src/engine/external-data.js';
import { buildGraphDir } from '../src/engine/graph-cache.js';
import { planEngineGraphs, resolvePrecision } from '../src/engine/graph-plan.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadModelConfig } from '../src/models/model-config.js';
import { type Graph, GraphBuilder, initializerBytes, isExternalCandidate } from '../src/onnx/graph.js';
import { modelToBytes, serializeModel } from '../src/onnx/serialize.js';
import { GOLDEN_MODELS, goldenModelDir } from './helpers.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'ivl-stream-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

test('a weight goes to the external data file as it is added; the graph keeps only where it went', async () => {
  const file = path.join(tmp, 'weights.bin');
  const sink = new ExternalDataFile(file);
  const graph = await withWeightSink(sink, async () => {
    const g = new GraphBuilder('scale');
    const x = g.input('x', 'float32', [1024]);
    g.initializer('w', 'float32', [1024], new Float32Array(1024).fill(3));
    assert.equal(statSync(file).size, 4096, 'written before the build ends');
    g.output(g.mul(x, g.reshape('w', [1024])), 'y', 'float32', [1024]);
    // A second builder in the same build (a helper graph) keeps its weights in memory.
    const helper = new GraphBuilder('helper');
    helper.initializer('h', 'float32', [1024], new Float32Array(1024));
    assert.equal(helper.graph.external, undefined);
    return g.graph;
  });
  const { sha256 } = sink.close();
  assert.deepEqual(
    graph.initializers.map((i) => i.name),
    [graph.nodes[0].inputs[1]],
    'only the int64 shape',
  );
  assert.deepEqual(graph.external?.initializers, [
    { name: 'w', dtype: 'float32', dims: [1024], offset: 0, length: 4096 },
  ]);
  assert.equal(initializerBytes(graph), 4096 + 8);
  assert.equal(sha256.length, 64);
  assert.throws(() => modelToBytes(graph), /weights were written to weights\.bin while it was built/);
});

/** Every initializer of an in-memory graph, as bytes, by name. */
function initializerTable(graph: Graph): Map<string, Buffer> {
  return new Map(
    graph.initializers.map((i) => [i.name, Buffer.from(i.data.buffer, i.data.byteOffset, i.data.byteLength)]),
  );
}

for (const name of [GOLDEN_MODELS[0], GOLDEN_MODELS[2]]) {
  test(`${name}: the engine graphs stream their weights, and weights.bin holds what the in-memory build holds`, async () => {
    const dir = goldenModelDir(name);
    const config = await loadModelConfig(dir);
    const checkpoint = await Checkpoint.open(dir);
    try {
      const precision = await resolvePrecision({ llmDtype: 'int4', prefillDtype: 'int8' }, config);
      const plan = planEngineGraphs(config, checkpoint, checkpointWeights(checkpoint, config), precision);
      for (const planned of plan) {
        let streamed: Graph | undefined;
        const out = path.join(tmp, name, planned.role);
        await buildGraphDir(async () => {
          streamed = await planned.build();
          return streamed;
        }, out);
        assert.ok(streamed?.external, `${planned.role}: built with the sink`);
        const kept = streamed.initializers.filter((i) => isExternalCandidate(i.dtype, i.data.byteLength));
        assert.deepEqual(
          kept.map((i) => i.name),
          [],
          `${planned.role}: only small and integer initializers stay in memory`,
        );
        const reference = await planned.build();
        assert.equal(reference.external, undefined);
        const table = initializerTable(reference);
        const weights = readFileSync(path.join(out, 'weights.bin'));
        for (const e of streamed.external.initializers) {
          const expected = table.get(e.name);
          assert.ok(expected, `${e.name} is in the in-memory graph`);
          assert.ok(
            weights.subarray(e.offset, e.offset + e.length).equals(expected),
            `${e.name}: same bytes`,
          );
        }
        assert.equal(streamed.external.initializers.length + streamed.initializers.length, table.size);
        // The in-memory build serialised with external data lays weights.bin out the same way.
        const { externalBytes } = serializeModel(reference, { externalData: { location: 'weights.bin' } });
        assert.equal(weights.byteLength, externalBytes);
      }
    } finally {
      await checkpoint.close();
    }
  });
}
