import assert from 'node:assert/strict';
import path from 'node:path';
import { after, test } from 'node:test';
import { checkpointWeights } from '../src/engine/core.js';
import { argmax, DecoderRunner, decoderDimsFromConfig, type Sequence } from '../src/engine/decoder.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadModelConfig } from '../src/models/model-config.js';
import { GOLDEN_DIR, goldenModelDir, maxAbsDiff } from './helpers.js';

// The runners read embedding rows from their checkpoints, so those stay open until the end.
const checkpoints: Checkpoint[] = [];
after(() => Promise.all(checkpoints.map((c) => c.close())));

async function runner(model: string) {
  const dir = goldenModelDir(model);
  const ckpt = await Checkpoint.open(dir);
  checkpoints.push(ckpt);
  const config = await loadModelConfig(dir);
  const dims = decoderDimsFromConfig(config);
  // A small capacity step makes the batch pool grow while the test runs.
  const r = await DecoderRunner.create(dims, checkpointWeights(ckpt, config), {
    threads: 1,
    capacityStep: 16,
  });
  const text = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases', model, 'text.safetensors'));
  const ids = Array.from(await text.readInt64('input_ids'), Number);
  await text.close();
  return { r, ids, vocab: dims.vocabSize };
}

for (const model of ['tiny-internvl2_5-qwen2', 'tiny-internvl2_5-internlm2']) {
  test(`${model}: batched decode (sequences joining and leaving) equals decoding each alone`, async () => {
    const { r, ids, vocab } = await runner(model);
    const prompts = [ids.slice(0, 40), ids.slice(0, 95), ids.slice(10, 70), ids.slice(0, 21)];
    const steps = 12;

    // Reference: each prompt alone, greedy through its own cache.
    const reference: { tokens: number[]; logits: Float32Array[] }[] = [];
    for (const p of prompts) {
      const seq = r.newSequence();
      let logits = await r.forward(seq, r.embed(p), p.length);
      const out = { tokens: [] as number[], logits: [] as Float32Array[] };
      for (let s = 0; s < steps; s++) {
        const id = argmax(logits);
        out.tokens.push(id);
        out.logits.push(logits);
        logits = await r.forward(seq, r.embed([id]), 1);
      }
      reference.push(out);
    }

    // Batched: sequences 0–2 start together; 3 joins at step 4; 1 leaves at step 7 and finishes alone.
    const state = prompts.map(() => ({
      seq: undefined as Sequence | undefined,
      tokens: [] as number[],
      next: 0,
    }));
    const start = async (i: number) => {
      const seq = r.newSequence();
      const logits = await r.forward(seq, r.embed(prompts[i]), prompts[i].length);
      assert.ok(maxAbsDiff(logits, reference[i].logits[0]) < 1e-5);
      state[i].seq = seq;
      state[i].next = argmax(logits);
      r.joinBatch(seq);
    };
    await Promise.all([0, 1, 2].map(start));
    for (let step = 0; state.some((s) => s.tokens.length < steps); step++) {
      if (step === 4) await start(3);
      if (step === 7) r.leaveBatch(state[1].seq!);
      for (const s of state)
        if (s.seq && s.tokens.length === steps && s.seq.slot !== undefined) r.leaveBatch(s.seq);
      const members = [...r.batch];
      if (members.length > 0) {
        const entries = members.map((seq) => state.find((s) => s.seq === seq)!);
        for (const e of entries) e.tokens.push(e.next);
        const logits = await r.decodeBatch(entries.map((e) => e.tokens.at(-1)!));
        entries.forEach((e, b) => {
          const i = state.indexOf(e);
          const row = logits.subarray(b * vocab, (b + 1) * vocab);
          if (e.tokens.length < steps) {
            assert.ok(
              maxAbsDiff(row, reference[i].logits[e.tokens.length]) < 1e-4,
              `seq ${i} step ${e.tokens.length}`,
            );
          }
          e.next = argmax(row);
        });
      }
      // The sequence that left keeps decoding on its own cache.
      const alone = state[1];
      if (step >= 7 && alone.tokens.length < steps) {
        alone.tokens.push(alone.next);
        alone.next = argmax(await r.forward(alone.seq!, r.embed([alone.tokens.at(-1)!]), 1));
      }
      assert.ok(step < 100);
    }
    for (const [i, s] of state.entries()) assert.deepEqual(s.tokens, reference[i].tokens, `sequence ${i}`);
    await r.release();
  });
}

test('the in-graph argmax (greedy without fetching logits) picks what argmax over the logits picks', async () => {
  const { r, ids, vocab } = await runner('tiny-internvl2_5-qwen2');
  const a = r.newSequence();
  const b = r.newSequence();
  const logits = await r.forward(a, r.embed(ids.slice(0, 60)), 60);
  assert.equal(await r.forwardArgmax(b, r.embed(ids.slice(0, 60)), 60), argmax(logits));
  r.joinBatch(a);
  r.joinBatch(b);
  const next = [argmax(logits), 7];
  const rows = await r.decodeBatch(next);
  for (const seq of [a, b]) seq.truncate(seq.length - 1);
  const picked = await r.decodeBatchArgmax(next);
  assert.deepEqual(
    picked,
    [0, 1].map((i) => argmax(rows.subarray(i * vocab, (i + 1) * vocab))),
  );
  await r.release();
});
