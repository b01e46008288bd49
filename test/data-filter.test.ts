import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { dataCommand } from '../src/cli/data.js';
import { filterMeta, ngramRepetitionRatio, textRuleViolations } from '../src/data/filter.js';
import { createOpenAIJudge, parseJudgeScore } from '../src/data/judge.js';
import { loadMeta, readDataset } from '../src/data/meta.js';
import { createDataFixture, type DataFixture, memoryIo } from './data-fixture.js';
import { REPO_ROOT } from './helpers.js';

/** A fake OpenAI-compatible judge: scores by markers in the conversation, with scripted failures. */
interface FakeJudge {
  url: string;
  requests: { sample: string; aspect: string }[];
  delayMs: number;
  close(): Promise<void>;
}

async function startJudge(): Promise<FakeJudge> {
  const seen = new Set<string>();
  const judge: Partial<FakeJudge> = { requests: [], delayMs: 0 };
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => {
      body += chunk;
    });
    req.on('end', () => {
      const { messages } = JSON.parse(body) as { messages: { role: string; content: string }[] };
      const prompt = messages[messages.length - 1].content;
      const aspect = /free the assistant's answers/.test(prompt) ? 'repetition' : 'quality';
      const sample =
        /sample (\d+)/.exec(prompt)?.[1] ?? /Image-\d|What is shown|Tiny/.exec(prompt)?.[0] ?? '?';
      judge.requests?.push({ sample, aspect });
      const first = !seen.has(`${sample}/${aspect}`);
      seen.add(`${sample}/${aspect}`);
      setTimeout(() => {
        if (sample === '0' && aspect === 'quality' && first) {
          res.writeHead(503).end('busy');
          return;
        }
        let reply = aspect === 'quality' ? (prompt.includes('LOWQ') ? '2' : 'Score: **9**') : '9/10';
        if (aspect === 'repetition' && prompt.includes('LOOPY')) reply = '1';
        if (sample === '1' && first) reply = 'I cannot decide.';
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ choices: [{ message: { role: 'assistant', content: reply } }] }));
      }, judge.delayMs);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  judge.url = `http://127.0.0.1:${port}/v1`;
  judge.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return judge as FakeJudge;
}

const NUM_TEXT = 24;
/** 60 distinct words: written twice, 51 of its 111 10-grams recur (ratio 0.46 > 0.4). */
const PASSAGE = Array.from({ length: 60 }, (_, i) => `w${i}`).join(' ');

async function writeJudgeDataset(dir: string, name: string): Promise<string> {
  const lines = Array.from({ length: NUM_TEXT }, (_, i) => {
    let answer = `Answer to sample ${i}: a fine, specific reply.`;
    if (i === 5) answer = `Sample ${i} is LOWQ.`;
    if (i === 6) answer = `Sample ${i} goes LOOPY.`;
    if (i === 7) answer = `${PASSAGE} ${PASSAGE}`;
    if (i === 8) answer = ['Point A', 'Point A', 'Point A', 'Point A', 'Point B'].join('\n');
    return JSON.stringify({
      conversations: [
        { from: 'human', value: `Question for sample ${i}?` },
        { from: 'gpt', value: answer },
      ],
    });
  });
  await writeFile(path.join(dir, `data/${name}.jsonl`), `${lines.join('\n')}\n`);
  const meta = path.join(dir, `${name}-meta.json`);
  const fixtureMeta = JSON.parse(await readFile(path.join(dir, 'meta.json'), 'utf8'));
  await writeFile(
    meta,
    JSON.stringify({
      [name]: { root: '', annotation: `data/${name}.jsonl`, data_augment: false, repeat_time: 1 },
      images: fixtureMeta.images,
    }),
  );
  return meta;
}

let fixture: DataFixture;
let judge: FakeJudge;
before(async () => {
  fixture = await createDataFixture();
  judge = await startJudge();
});
after(async () => {
  await judge.close();
  await fixture.cleanup();
});

describe('filter rules', () => {
  test('n-gram repetition ratio as calculate_ngram_repetition', () => {
    assert.equal(ngramRepetitionRatio('a b c', 10), 0);
    assert.equal(ngramRepetitionRatio('a b a b', 2), 1 / 3);
    assert.equal(ngramRepetitionRatio('x x x x', 1), 1 / 4);
    assert.equal(ngramRepetitionRatio(`${PASSAGE} ${PASSAGE}`, 10), 51 / 111);
    // The reference counts distinct repeated n-grams, so a short loop repeated many times scores low.
    const loop = Array.from({ length: 10 }, () => 'one two three four five').join(' ');
    assert.equal(ngramRepetitionRatio(loop, 10), 5 / 41);
  });

  test('heuristic rules flag repetitive, duplicated and abnormal answers only', () => {
    const rules = (value: string) =>
      textRuleViolations([
        { from: 'human', value: value },
        { from: 'gpt', value },
      ]).map((r) => r.rule);
    assert.deepEqual(rules('A normal answer. It has two sentences.'), []);
    assert.deepEqual(rules(`${PASSAGE} ${PASSAGE}`), ['ngram-repetition']);
    assert.deepEqual(rules('x\nx\nx\nx\ny'), ['duplicate-lines']);
    assert.deepEqual(rules(`Wow${'!'.repeat(100)}`), ['char-run']);
    assert.deepEqual(rules('word '.repeat(500).replace(/ /g, '_')), ['long-sentence']);
  });

  test('judge replies are parsed robustly', () => {
    assert.equal(parseJudgeScore('8'), 8);
    assert.equal(parseJudgeScore('Score: **7**'), 7);
    assert.equal(parseJudgeScore('9/10'), 9);
    assert.equal(parseJudgeScore('<think>maybe 3 or 4</think>\nRating: 6.5'), 6.5);
    assert.equal(parseJudgeScore('I would give it a 10.'), 10);
    assert.equal(parseJudgeScore('no number'), undefined);
    assert.equal(parseJudgeScore('42'), undefined);
  });

  test('the judge client retries 5xx and unparseable replies, and gives up with an error', async () => {
    const client = createOpenAIJudge({ url: judge.url, retries: 2, retryDelayMs: 1 });
    assert.equal(await client.score('quality', 'User: sample 0?'), 9);
    assert.equal(await client.score('quality', 'User: sample 1?'), 9);
    const failing = createOpenAIJudge({ url: 'http://127.0.0.1:1/v1', retries: 1, retryDelayMs: 1 });
    await assert.rejects(failing.score('quality', 'x'), /gave up after 2 attempts/);
  });
});

describe('internvl data filter', () => {
  test('drop report, cleaned JSONL and meta in the official format', async () => {
    const meta = await writeJudgeDataset(fixture.dir, 'chat');
    const out = path.join(fixture.dir, 'filtered');
    const report = await filterMeta(await loadMeta(meta), {
      outDir: out,
      judge: createOpenAIJudge({ url: judge.url, retryDelayMs: 1 }),
      concurrency: 3,
    });
    const reasons = (dataset: string) =>
      report.dropped
        .filter((d) => d.dataset === dataset)
        .map((d) => [d.line, d.reasons.map((r) => r.rule).join(',')]);
    assert.deepEqual(reasons('chat'), [
      [6, 'llm-quality'],
      [7, 'llm-repetition'],
      [8, 'ngram-repetition'],
      [9, 'duplicate-lines'],
    ]);
    assert.deepEqual(reasons('images'), [
      [3, 'invalid'],
      [4, 'invalid'],
      [5, 'invalid'],
      [6, 'invalid'],
      [8, 'image-anomaly'],
    ]);
    assert.deepEqual(report.datasets.chat.reasons, {
      'llm-quality': 1,
      'llm-repetition': 1,
      'ngram-repetition': 1,
      'duplicate-lines': 1,
    });
    assert.equal(report.datasets.chat.kept, NUM_TEXT - 4);
    assert.deepEqual(
      JSON.parse(await readFile(path.join(out, 'report.json'), 'utf8')).dropped,
      report.dropped,
    );

    const cleaned = await loadMeta(path.join(out, 'meta.json'));
    const chat = cleaned.datasets.find((d) => d.name === 'chat');
    assert.ok(chat);
    assert.equal(chat.entry.length, NUM_TEXT - 4);
    const kept = await readDataset(chat);
    assert.equal(kept.samples.length, NUM_TEXT - 4);
    assert.equal(kept.issues.length, 0);
    const images = cleaned.datasets.find((d) => d.name === 'images');
    assert.ok(images);
    assert.equal(images.dataAugment, true);
    assert.equal(
      (await readDataset(images)).samples.length,
      2,
      'kept image lines still resolve their images',
    );
  });

  test('without a judge only the offline checks run', async () => {
    const meta = await writeJudgeDataset(fixture.dir, 'offline');
    const { io, stdout } = memoryIo();
    const out = path.join(fixture.dir, 'filtered-offline');
    assert.equal(await dataCommand(['filter', meta, '--out', out, '--json'], io), 0);
    const { datasets } = JSON.parse(stdout());
    assert.deepEqual(datasets.offline.reasons, { 'ngram-repetition': 1, 'duplicate-lines': 1 });
  });

  test('resumes after being killed mid-run without re-scoring what was done', async () => {
    const meta = await writeJudgeDataset(fixture.dir, 'resume');
    const out = path.join(fixture.dir, 'filtered-resume');
    const progressFile = path.join(out, 'progress.jsonl');
    const args = [
      '--import',
      'tsx',
      'src/cli/main-entry.ts',
      'data',
      'filter',
      meta,
      '--out',
      out,
      '--judge-url',
      judge.url,
      '--concurrency',
      '2',
      '--retry-delay-ms',
      '5',
    ];
    const readProgress = async () => {
      const text = await readFile(progressFile, 'utf8').catch(() => '');
      return text
        .split('\n')
        .filter((l) => l.endsWith('}'))
        .map((l) => JSON.parse(l) as { line: number; dataset: string });
    };
    judge.delayMs = 40;
    const first = spawn(process.execPath, args, { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => first.on('exit', (code) => resolve(code)));
    let doneAtKill: { line: number; dataset: string }[] = [];
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      doneAtKill = await readProgress();
      if (doneAtKill.length >= 4) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    first.kill('SIGKILL');
    assert.equal(await exited, null, 'the first run was killed, not finished');
    doneAtKill = await readProgress();
    const judgedCount = NUM_TEXT - 2 + 2; // text lines passing the rules, plus the 2 valid normal images
    assert.ok(doneAtKill.length >= 4 && doneAtKill.length < judgedCount, `${doneAtKill.length} done at kill`);

    judge.delayMs = 0;
    judge.requests.length = 0;
    const second = spawn(process.execPath, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    second.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    const code = await new Promise<number | null>((resolve) => second.on('exit', (c) => resolve(c)));
    assert.equal(code, 0, stderr);

    const rescored = doneAtKill
      .filter((r) => r.dataset === 'resume')
      .map((r) => String(r.line - 1))
      .filter((sample) => judge.requests.some((req) => req.sample === sample));
    assert.deepEqual(rescored, [], 'samples finished before the kill are not sent to the judge again');
    const finalProgress = await readProgress();
    assert.equal(new Set(finalProgress.map((r) => `${r.dataset}:${r.line}`)).size, judgedCount);
    const report = JSON.parse(await readFile(path.join(out, 'report.json'), 'utf8'));
    assert.equal(report.datasets.resume.kept + report.datasets.resume.dropped, NUM_TEXT);
    assert.equal(report.datasets.resume.kept, NUM_TEXT - 4);
  });
});
