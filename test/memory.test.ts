import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { checkpointWeights } from '../src/engine/core.js';
import { planEngineGraphs, resolvePrecision } from '../src/engine/graph-plan.js';
import { availableMemory, checkMemory, parseByteSize } from '../src/engine/memory-check.js';
import { estimateMemory, parameterCounts } from '../src/engine/memory-estimate.js';
import { InternVLError } from '../src/errors.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadModelConfig } from '../src/models/model-config.js';
import { pipeline } from '../src/pipeline/pipeline.js';
import { createRandomCheckpoint } from '../src/tools/random-checkpoint.js';
import { type CliRun, GOLDEN_DIR, goldenModelDir, REPO_ROOT, runInternvl } from './helpers.js';

const MODEL = goldenModelDir('tiny-internvl2_5-qwen2');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'ivl-memory-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const GiB = 2 ** 30;

function run(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  return runInternvl(args, { INTERNVL_CACHE: path.join(tmp, 'cache'), HF_HUB_OFFLINE: '1', ...env });
}

describe('the estimate', () => {
  test('parameter counts of the published 1B shape add up to the README table', async () => {
    const dir = path.join(tmp, 'cfg-1b');
    await createRandomCheckpoint({ shape: 'InternVL2_5-1B', out: dir, weights: false });
    const p = parameterCounts(await loadModelConfig(dir));
    assert.equal(p.vit + p.projector + p.llm, p.total);
    assert.equal((p.total / 1e9).toFixed(3), '0.938');
    assert.equal((p.vit / 1e6).toFixed(1), '304.0');
    // Qwen2.5-0.5B's embedding table: 151674 × 896.
    assert.equal(p.embedding, 151674 * 896);
  });

  test('graph weights as estimated are the initializer bytes of the graphs built, fp32 and int4 + int8', async () => {
    const config = await loadModelConfig(MODEL);
    const checkpoint = await Checkpoint.open(MODEL);
    try {
      for (const precision of [
        { llmDtype: 'fp32', prefillDtype: 'fp32', vitDtype: 'fp32' },
        { llmDtype: 'int4', prefillDtype: 'int8', vitDtype: 'int8' },
      ] as const) {
        const plan = planEngineGraphs(
          config,
          checkpoint,
          checkpointWeights(checkpoint, config),
          await resolvePrecision(precision, config),
        );
        const estimate = estimateMemory(config, precision);
        assert.deepEqual(
          estimate.graphs.map((g) => `${g.role} ${g.dtype}`),
          plan.map((g) => `${g.role} ${g.dtype}`),
        );
        for (const [i, planned] of plan.entries()) {
          const graph = await planned.build();
          const built = graph.initializers.reduce((n, init) => n + init.data.byteLength, 0);
          const ratio = estimate.graphs[i].bytes / built;
          assert.ok(
            ratio > 0.97 && ratio < 1.03,
            `${planned.role} ${planned.dtype}: estimated ${estimate.graphs[i].bytes}, built ${built}`,
          );
        }
      }
    } finally {
      await checkpoint.close();
    }
  });

  test('the estimates in docs/memory.md are what estimateMemory gives, each within 15 % of its measured peak', async () => {
    // The table of measured peaks (scripts/measure-memory.sh); a change to the formula, its constants or the
    // graphs' weights that the measurements no longer bear out fails here until they are measured again.
    const doc = readFileSync(path.join(REPO_ROOT, 'docs/memory.md'), 'utf8');
    const rows = [
      ...doc.matchAll(
        /^\| (InternVL2_5-\w+) \| (fp32|int4 \+ int8 prefill) \| (first load|cached) \| ([\d.]+) GB \| ([\d.]+) GB \|/gm,
      ),
    ];
    assert.equal(rows.length, 8, 'the 1B and 2B rows: fp32 and int4, first load and cached');
    for (const [, shape, precision, run, measured, documented] of rows) {
      const dir = path.join(tmp, `cfg-${shape}`);
      await createRandomCheckpoint({ shape, out: dir, weights: false });
      const estimate = estimateMemory(
        await loadModelConfig(dir),
        precision === 'fp32'
          ? { llmDtype: 'fp32', prefillDtype: 'fp32', vitDtype: 'fp32' }
          : { llmDtype: 'int4', prefillDtype: 'int8', vitDtype: 'fp32' },
      );
      const gb = (run === 'cached' ? estimate.running : estimate.converting) / 1e9;
      const row = `${shape} ${precision} ${run}`;
      assert.equal(gb.toFixed(2), documented, `${row}: the documented estimate`);
      assert.ok(
        Math.abs(gb / Number(measured) - 1) <= 0.15,
        `${row}: ${gb} GB estimated, ${measured} GB measured`,
      );
    }
  });

  test('available memory: the cgroup limit or INTERNVL_MEMORY_LIMIT when lower; bad values named', () => {
    const v2 = path.join(tmp, 'memory.max');
    writeFileSync(v2, `${GiB}\n`);
    const none = path.join(tmp, 'memory.max.none');
    writeFileSync(none, 'max\n');
    assert.deepEqual(availableMemory([none], {}), { bytes: os.totalmem(), source: 'os.totalmem()' });
    assert.deepEqual(availableMemory([none, v2, path.join(tmp, 'absent')], {}), { bytes: GiB, source: v2 });
    assert.deepEqual(availableMemory([v2], { INTERNVL_MEMORY_LIMIT: '512M' }), {
      bytes: GiB / 2,
      source: 'INTERNVL_MEMORY_LIMIT',
    });
    assert.equal(parseByteSize('1.5G'), 1.5 * GiB);
    assert.equal(parseByteSize('12 GiB'), 12 * GiB);
    assert.equal(parseByteSize('lots'), undefined);
    assert.throws(
      () => availableMemory([], { INTERNVL_MEMORY_LIMIT: 'lots' }),
      /INTERNVL_MEMORY_LIMIT="lots" is not a size like 8G/,
    );
  });

  test('a load that does not fit is refused with the numbers and a precision that fits; force passes', async () => {
    const dir = path.join(tmp, 'cfg-2b');
    await createRandomCheckpoint({ shape: 'InternVL2_5-2B', out: dir, weights: false });
    const config = await loadModelConfig(dir);
    const fp32 = { llmDtype: 'fp32', prefillDtype: 'fp32', vitDtype: 'fp32' } as const;
    const small = { llmDtype: 'int4', prefillDtype: 'int8', vitDtype: 'fp32' } as const;
    const between = (estimateMemory(config, small).running + estimateMemory(config, fp32).running) / 2;
    const available = { bytes: between, source: 'test' };
    assert.throws(
      () => checkMemory(config, fp32, { converting: false, available }),
      (err: unknown) => {
        assert.ok(err instanceof InternVLError && err.code === 'OUT_OF_MEMORY');
        assert.match(
          err.message,
          /not enough memory for ViT fp32, LLM fp32: the estimated peak is [\d.]+ GiB, [\d.]+ GiB available \(test\)/,
        );
        assert.match(
          err.message,
          /use --llm-dtype int4 --prefill-dtype int8 \(ViT fp32, LLM int4 decode \+ int8 prefill: estimated [\d.]+ GiB\)/,
        );
        assert.match(err.message, /--ignore-memory-check/);
        return true;
      },
    );
    const forced = checkMemory(config, fp32, { converting: false, available, force: true });
    assert.ok(forced.peak > between);
    assert.throws(
      () => checkMemory(config, small, { converting: false, available: { bytes: 1, source: 'test' } }),
      /no precision fits; use a machine with more memory/,
    );
  });
});

describe('the commands', () => {
  test('chat names the precision and the estimate first, refuses what does not fit, and --ignore-memory-check loads', async () => {
    const args = ['chat', MODEL, '--max-new-tokens', '2', '--max-tiles', '1', 'Hi'];
    const refused = await run(args, { INTERNVL_MEMORY_LIMIT: '1M' });
    assert.equal(refused.code, 1);
    assert.match(
      refused.stderr,
      /internvl chat: not enough memory for ViT fp32, LLM fp32: .* 1\.0 MiB available \(INTERNVL_MEMORY_LIMIT\); no precision fits/,
    );
    const forced = await run([...args, '--ignore-memory-check'], { INTERNVL_MEMORY_LIMIT: '1M' });
    assert.equal(forced.code, 0, forced.stderr);
    assert.match(
      forced.stderr.split('\n')[0],
      /^internvl chat: precision: ViT fp32, LLM fp32; estimated peak memory [\d.]+ [MG]iB \(first load, converting the checkpoint\) of 1\.0 MiB available$/,
    );
    const again = await run([...args, '--llm-dtype', 'fp32']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(
      again.stderr.split('\n')[0],
      /^internvl chat: precision: ViT fp32, LLM fp32; estimated peak memory [\d.]+ [MG]iB \(graphs cached\) of /,
    );
  });

  test('info: architecture, parameters and memory per precision of a config-only folder; a hub id not cached is named', async () => {
    const info = await run(['info', path.join(tmp, 'cfg-1b')]);
    assert.equal(info.code, 0, info.stderr);
    assert.match(
      info.stdout,
      /^Architecture: InternViT \(24 layers × 1024\) → mlp1 → Qwen2ForCausalLM \(qwen2: 24 layers × 896, 14 heads, 2 KV heads, vocabulary 151674\)$/m,
    );
    assert.match(
      info.stdout,
      /^Parameters: ViT 304\.0 M, projector 4\.5 M, LLM 629\.7 M \(token embeddings 135\.9 M\), total 938\.2 M$/m,
    );
    assert.match(info.stdout, /^Weights on disk: none \(config only\)$/m);
    assert.match(info.stdout, /^ {2}ViT fp32, LLM fp32 +[\d.]+ GiB +[\d.]+ GiB +[\d.]+ GiB {2}\(default\)$/m);
    assert.match(
      info.stdout,
      /^ {2}ViT int8, LLM int4 decode \+ int8 prefill .* --llm-dtype int4 --prefill-dtype int8 --vit-dtype int8$/m,
    );
    const json = JSON.parse((await run(['info', MODEL, '--json'])).stdout);
    assert.equal(json.estimates.length, 3);
    assert.ok(
      json.estimates.every((e: { converting: number; running: number }) => e.converting >= e.running),
    );
    const absent = await run(['info', 'some-org/not-cached'], { HF_HUB_CACHE: path.join(tmp, 'hub') });
    assert.equal(absent.code, 1);
    assert.match(
      absent.stderr,
      /some-org\/not-cached is not a folder and not in the Hugging Face cache .*`npx internvl pull some-org\/not-cached` downloads it/,
    );
  });

  test('chat --json carries timings; without a terminal, loading, encoding and prefill progress are plain lines', async () => {
    const image = path.join(GOLDEN_DIR, 'prep/sources/s0_500x300_rgb.png');
    const r = await run([
      'chat',
      MODEL,
      '--image',
      image,
      '--max-tiles',
      '2',
      '--max-new-tokens',
      '4',
      '--json',
      'Hi',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const response = JSON.parse(r.stdout);
    const t = response.timings;
    assert.ok(t.vitSeconds > 0 && t.vitSeconds <= t.timeToFirstToken, JSON.stringify(t));
    assert.ok(t.prefillTokensPerSecond > 0, JSON.stringify(t));
    assert.equal(t.decodeTokensPerSecond === undefined, response.usage.completionTokens < 2);
    assert.ok(!r.stderr.includes('\r'));
    assert.match(r.stderr, /^loading model 100% 2 \/ 2$/m);
    assert.match(r.stderr, /^encoding tiles 100% 3 \/ 3$/m);
    // 3 tiles of 256 tokens and the text: more than one prefill chunk (512), so prefill reports progress.
    assert.match(r.stderr, /^prefill {2}\d\d% 512 \/ (\d+)\nprefill 100% \1 \/ \1$/m);
  });

  test('the pipeline reports decode speed once two tokens came', async () => {
    const pipe = await pipeline(MODEL, { cacheDir: path.join(tmp, 'cache'), threads: 1 });
    try {
      const r = await pipe.infer('Hi', { maxNewTokens: 4, ignoreEos: true });
      assert.equal(r.usage.completionTokens, 4);
      assert.ok(r.timings && r.timings.decodeTokensPerSecond! > 0, JSON.stringify(r.timings));
      assert.equal(r.timings.vitSeconds, 0);
    } finally {
      await pipe.close();
    }
  });
});
