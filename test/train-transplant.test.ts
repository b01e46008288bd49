import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { transplantVitCommand } from '../src/cli/transplant-vit.js';
import { InternVLModel } from '../src/engine/model.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { Trainer } from '../src/train/trainer.js';
import { memoryIo } from './data-fixture.js';
import { goldenModelDir } from './helpers.js';

const FROM = goldenModelDir('tiny-internvl2_5-vit6b-qwen2');
const INTO = goldenModelDir('tiny-internvl2_5-internlm2');

describe('internvl transplant-vit', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-transplant-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('joins the 6B-style ViT to the InternLM2 model with a fresh mlp1 that stage 1 trains', async () => {
    const out = path.join(dir, 'joined');
    const { io, stdout, stderr } = memoryIo();
    assert.equal(
      await transplantVitCommand(['--from', FROM, '--into', INTO, '--out', out, '--seed', '4'], io),
      0,
      stderr(),
    );
    assert.match(stdout(), /new mlp1\.0\.weight \[256\]/);

    const config = JSON.parse(await readFile(path.join(out, 'config.json'), 'utf8'));
    const fromConfig = JSON.parse(await readFile(path.join(FROM, 'config.json'), 'utf8'));
    const intoConfig = JSON.parse(await readFile(path.join(INTO, 'config.json'), 'utf8'));
    assert.deepEqual(config.vision_config, fromConfig.vision_config);
    assert.deepEqual(config.llm_config, intoConfig.llm_config);
    assert.deepEqual(
      JSON.parse(await readFile(path.join(out, 'tokenizer_config.json'), 'utf8')),
      JSON.parse(await readFile(path.join(INTO, 'tokenizer_config.json'), 'utf8')),
    );

    const joined = await Checkpoint.open(out);
    const vit = await Checkpoint.open(FROM);
    const llm = await Checkpoint.open(INTO);
    try {
      const visionNames = vit.names().filter((n) => n.startsWith('vision_model.'));
      assert.ok(
        visionNames.some((n) => n.endsWith('attn.q_norm.weight')),
        'the 6B-style ViT (qk-norm)',
      );
      for (const n of visionNames) assert.deepEqual(await joined.readBytes(n), await vit.readBytes(n), n);
      for (const n of llm.names().filter((x) => x.startsWith('language_model.'))) {
        assert.deepEqual(await joined.readBytes(n), await llm.readBytes(n), n);
      }
      // mlp1 input = C_vit·(1/downsample_ratio)² = 64·4; output = the LLM's hidden size.
      const C = fromConfig.vision_config.hidden_size * 4;
      const D = intoConfig.llm_config.hidden_size;
      assert.deepEqual(joined.info('mlp1.0.weight').shape, [C]);
      assert.deepEqual(joined.info('mlp1.1.weight').shape, [D, C]);
      assert.deepEqual(joined.info('mlp1.3.weight').shape, [D, D]);
      assert.ok((await joined.readFloat32('mlp1.0.weight')).every((x) => x === 1));
      assert.ok((await joined.readFloat32('mlp1.0.bias')).every((x) => x === 0));
      const w = await joined.readFloat32('mlp1.1.weight');
      const bound = 1 / Math.sqrt(C);
      assert.ok(w.every((x) => Math.abs(x) <= bound * 1.01));
      const mean = w.reduce((a, x) => a + Math.abs(x), 0) / w.length;
      assert.ok(Math.abs(mean - bound / 2) < bound * 0.1, `mean |w| ${mean} ≈ bound/2`);
      assert.notDeepEqual(await joined.readBytes('mlp1.1.weight'), await llm.readBytes('mlp1.1.weight'));
    } finally {
      await joined.close();
      await vit.close();
      await llm.close();
    }

    const engine = await InternVLModel.load(out);
    await engine.close();
    const trainer = await Trainer.create({ model: out, stage: 1, optimizer: { lr: 1e-3 } });
    try {
      assert.ok(trainer.trainable.length === 6 && trainer.trainable.every((n) => n.startsWith('mlp1.')));
    } finally {
      await trainer.close();
    }
  });

  it('refuses to overwrite its inputs and names missing options', async () => {
    const { io, stderr } = memoryIo();
    assert.equal(await transplantVitCommand(['--from', FROM, '--into', INTO, '--out', INTO], io), 1);
    assert.match(stderr(), /must be a new folder/);
    assert.equal(await transplantVitCommand(['--from', FROM, '--out', path.join(dir, 'x')], io), 2);
    assert.match(stderr(), /needs --into DIR/);
  });
});
