import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { loadModelConfig } from '../src/config/model-config.js';
import { decoderDimsFromConfig } from '../src/engine/decoder.js';
import { visionDimsFromConfig } from '../src/engine/vision.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadTokenizer } from '../src/io/tokenizer-files.js';
import { internVitTensorSpecs } from '../src/models/internvit.js';
import { projectorTensorSpecs } from '../src/models/projector.js';
import { decoderTensorSpecs } from '../src/models/registry.js';
import { checkTensorShapes } from '../src/models/weights.js';
import { createRandomCheckpoint } from '../src/tools/random-checkpoint.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'ivl-random-'));
after(() => rmSync(root, { recursive: true, force: true }));

const layers = { vit: 1, llm: 1 };

for (const shape of ['InternVL2_5-1B', 'InternVL2_5-2B']) {
  test(`${shape}: real config, real tensor shapes, real special-token ids`, async () => {
    const a = await createRandomCheckpoint({ shape, out: path.join(root, `${shape}-a`), seed: 7, layers });

    const config = await loadModelConfig(a);
    const weights = await Checkpoint.open(a);
    const source = {
      has: (n: string) => weights.has(n),
      shape: (n: string) => weights.info(n).shape,
      float32: (n: string) => weights.readFloat32(n),
    };
    const vision = visionDimsFromConfig(config);
    const decoder = decoderDimsFromConfig(config);
    checkTensorShapes(source, [...internVitTensorSpecs(vision.vit, 1), ...decoderTensorSpecs(decoder)]);
    assert.equal(config.template, 'internvl2_5');

    const tokenizer = await loadTokenizer(a);
    const expected =
      shape === 'InternVL2_5-1B'
        ? { '<|im_start|>': 151644, '<|im_end|>': 151645, '<img>': 151665, '<IMG_CONTEXT>': 151667 }
        : { '<|im_start|>': 92543, '<|im_end|>': 92542, '<img>': 92544, '<IMG_CONTEXT>': 92546 };
    for (const [token, id] of Object.entries(expected)) assert.equal(tokenizer.tokenToId(token), id, token);
    assert.equal(
      tokenizer.decode(tokenizer.encode('héllo, 世界', { addSpecialTokens: false })),
      'héllo, 世界',
    );

    checkTensorShapes(
      source,
      projectorTensorSpecs({ inputSize: 4 * vision.vit.hiddenSize, llmHiddenSize: decoder.hiddenSize }),
    );
    const ln = await weights.readFloat32('mlp1.0.weight');
    assert.ok(
      ln.every((v) => v > 0.85 && v < 1.15),
      'norm weights are drawn around 1',
    );
    await weights.close();
    rmSync(a, { recursive: true, force: true });
  });
}

test('the same seed gives the same weights, another seed other weights', async () => {
  const shape = 'InternVL2_5-1B';
  const [a, b, c] = await Promise.all(
    [7, 7, 8].map((seed, i) =>
      createRandomCheckpoint({ shape, out: path.join(root, `seed-${i}`), seed, layers }),
    ),
  );
  const [ca, cb, cc] = await Promise.all([a, b, c].map((dir) => Checkpoint.open(dir)));
  for (const name of [ca.names()[0], 'mlp1.1.weight', ca.names().at(-1)!]) {
    assert.deepEqual(await ca.readBytes(name), await cb.readBytes(name), `${name} with the same seed`);
    assert.notDeepEqual(await ca.readBytes(name), await cc.readBytes(name), `${name} with another seed`);
  }
  await Promise.all([ca.close(), cb.close(), cc.close()]);
});

test('an unknown shape lists the known ones', async () => {
  await assert.rejects(
    createRandomCheckpoint({ shape: 'InternVL2_5-3B', out: path.join(root, 'x') }),
    /unknown shape "InternVL2_5-3B"; known shapes: InternVL2_5-1B, InternVL2_5-2B/,
  );
});
