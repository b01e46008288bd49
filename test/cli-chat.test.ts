import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Pipeline, pipeline, type Response } from '../src/pipeline/pipeline.js';
import { type CliRun, GOLDEN_DIR, goldenModelDir, runInternvl } from './helpers.js';
import { assertValidJson } from './structured-fixtures.js';

const MODEL = goldenModelDir('tiny-internvl2_5-qwen2');
const IMAGE = path.join(GOLDEN_DIR, 'prep/sources/s0_500x300_rgb.png');
const IMAGE2 = path.join(GOLDEN_DIR, 'prep/sources/s2_37x61_rgb.png');
const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ivl-cli-chat-cache-'));

type Run = CliRun;

/** Runs `internvl chat ...args` with `stdin` written and closed. */
function runChat(args: string[], stdin = ''): Promise<Run> {
  return runInternvl(['chat', ...args], { INTERNVL_CACHE: cacheDir, HF_HUB_OFFLINE: '1' }, stdin);
}

const jsonLines = (stdout: string): Response[] =>
  stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Response);

let pipe: Pipeline;
before(async () => {
  pipe = await pipeline(MODEL, { cacheDir, threads: 1, maxTiles: 2 });
});
after(async () => {
  await pipe?.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

describe('internvl chat, one prompt', () => {
  test('--json prints the Response as one line; streaming prints the same text', async () => {
    const args = [MODEL, '--image', IMAGE, '--max-tiles', '2', '--max-new-tokens', '8'];
    const [json, streamed] = await Promise.all([
      runChat([...args, '--json', 'What is it?']),
      runChat([...args, 'What is it?']),
    ]);
    assert.equal(json.code, 0, json.stderr);
    const lines = jsonLines(json.stdout);
    assert.equal(lines.length, 1);
    const [response] = lines;
    const expected = await pipe.infer({ prompt: 'What is it?', images: [IMAGE] }, { maxNewTokens: 8 });
    assert.deepEqual(response.tokenIds, expected.tokenIds);
    assert.equal(response.text, expected.text);
    assert.equal(response.finishReason, expected.finishReason);
    assert.deepEqual(response.usage, expected.usage);
    assert.ok(response.usage.imageTokens > 0, 'the image is in the prompt');

    assert.equal(streamed.code, 0, streamed.stderr);
    assert.equal(streamed.stdout, `${response.text}\n`);
  });
});

describe('internvl chat, interactive', () => {
  test('stdin drives a multi-turn chat with /image, /reset and /exit', async () => {
    const script = [
      `/image ${IMAGE}`,
      'What is this?',
      'And the colours?',
      '/help',
      '/nonsense',
      '/reset',
      'Hello',
      '/exit',
      'never answered',
    ].join('\n');
    const run = await runChat([MODEL, '--max-tiles', '2', '--max-new-tokens', '6', '--json'], `${script}\n`);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stderr, /unknown command \/nonsense/);
    assert.match(run.stdout, /^\/reset +start a new conversation$/m, '/help lists the commands');
    const answers = jsonLines(run.stdout.replace(/^\/.*$/gm, ''));
    assert.equal(answers.length, 3, run.stdout);

    const gen = { maxNewTokens: 6 };
    const session = await pipe.chat({ prompt: 'What is this?', images: [IMAGE] }, { gen });
    assert.deepEqual(answers[0].tokenIds, session.response!.tokenIds);
    await pipe.chat('And the colours?', { session, gen });
    assert.deepEqual(answers[1].tokenIds, session.response!.tokenIds);
    assert.equal(answers[1].usage.promptTokens, session.response!.usage.promptTokens);
    assert.ok(answers[1].cache.reusedPromptTokens > 0, 'turn two reuses the KV cache');
    assert.equal(answers[1].cache.encodedTiles, 0, 'turn two does not encode the image again');
    await pipe.endSession(session);

    const fresh = await pipe.infer('Hello', gen);
    assert.deepEqual(answers[2].tokenIds, fresh.tokenIds, 'after /reset the history is gone');
    assert.equal(answers[2].usage.promptTokens, fresh.usage.promptTokens);
  });

  test('without --json each answer is its text and a newline; --image goes with the first message', async () => {
    const run = await runChat(
      [MODEL, '--image', IMAGE2, '--max-tiles', '2', '--max-new-tokens', '5'],
      'Describe.\n',
    );
    assert.equal(run.code, 0, run.stderr);
    const expected = await pipe.infer({ prompt: 'Describe.', images: [IMAGE2] }, { maxNewTokens: 5 });
    assert.equal(run.stdout, `${expected.text}\n`);
  });
});

describe('internvl chat, errors', () => {
  test('--json-schema FILE: the answer is JSON valid for the schema; bad files and schemas fail clearly', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-cli-schema-'));
    try {
      const schema = {
        type: 'object',
        properties: {
          name: { type: 'string', maxLength: 5 },
          tags: { type: 'array', items: { enum: ['a', 'b'] }, maxItems: 2 },
        },
        required: ['name', 'tags'],
        additionalProperties: false,
      };
      const file = path.join(dir, 'schema.json');
      writeFileSync(file, JSON.stringify(schema));
      const bad = path.join(dir, 'bad.json');
      writeFileSync(bad, JSON.stringify({ type: 'nope' }));
      const notJson = path.join(dir, 'not.json');
      writeFileSync(notJson, '{type');
      const [ok, unsupported, broken, missing] = await Promise.all([
        runChat([
          MODEL,
          '--json-schema',
          file,
          '--max-new-tokens',
          '200',
          '--temperature',
          '1',
          '--seed',
          '3',
          'Who?',
        ]),
        runChat([MODEL, '--json-schema', bad, 'Who?']),
        runChat([MODEL, '--json-schema', notJson, 'Who?']),
        runChat([MODEL, '--json-schema', path.join(dir, 'none.json'), 'Who?']),
      ]);
      assert.equal(ok.code, 0, ok.stderr);
      assertValidJson(ok.stdout.trimEnd(), schema, 'chat --json-schema');
      assert.equal(unsupported.code, 1);
      assert.match(unsupported.stderr, /invalid JSON schema: Unsupported type "nope"/);
      assert.equal(unsupported.stdout, '');
      assert.equal(broken.code, 2);
      assert.match(broken.stderr, /--json-schema: .*not\.json is not JSON/);
      assert.equal(missing.code, 2);
      assert.match(missing.stderr, /--json-schema: cannot read .*none\.json/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('--tools FILE --tool-choice: calls print as JSON lines valid for their tool; bad tools fail clearly', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-cli-tools-'));
    try {
      const weather = {
        type: 'object',
        properties: { city: { type: 'string', maxLength: 8 }, unit: { enum: ['C', 'F'] } },
        required: ['city', 'unit'],
        additionalProperties: false,
      };
      const clock = { type: 'object', properties: { zone: { type: 'integer' } }, required: ['zone'] };
      const tools = [
        {
          type: 'function',
          function: { name: 'get_weather', description: 'Weather now', parameters: weather },
        },
        { type: 'function', function: { name: 'get_time', parameters: clock } },
      ];
      const file = path.join(dir, 'tools.json');
      writeFileSync(file, JSON.stringify(tools));
      const bad = path.join(dir, 'bad.json');
      writeFileSync(bad, JSON.stringify([{ type: 'function', function: { name: 'x y' } }]));
      const common = ['--tools', file, '--max-new-tokens', '200', '--temperature', '1'];
      const [required, named, badTools, noTools] = await Promise.all([
        runChat([MODEL, ...common, '--tool-choice', 'required', '--seed', '5', 'Weather in Paris?']),
        runChat([MODEL, ...common, '--tool-choice', 'get_time', '--seed', '6', 'What time is it?']),
        runChat([MODEL, '--tools', bad, 'Hi']),
        runChat([MODEL, '--tool-choice', 'required', 'Hi']),
      ]);
      const calls = (run: Run) =>
        run.stdout
          .split('\n')
          .filter((l) => l.startsWith('{"tool_call"'))
          .map((l) => (JSON.parse(l) as { tool_call: { name: string; arguments: unknown } }).tool_call);
      assert.equal(required.code, 0, required.stderr);
      const made = calls(required);
      assert.ok(made.length >= 1, required.stdout);
      for (const call of made) {
        const tool = tools.find((t) => t.function.name === call.name);
        assert.ok(tool, `called an unknown tool: ${call.name}`);
        assertValidJson(JSON.stringify(call.arguments), tool.function.parameters, 'chat --tools required');
      }
      assert.equal(named.code, 0, named.stderr);
      const [time] = calls(named);
      assert.equal(time?.name, 'get_time', named.stdout);
      assertValidJson(JSON.stringify(time.arguments), clock, 'chat --tool-choice get_time');
      assert.equal(badTools.code, 1);
      assert.match(badTools.stderr, /tools\[0\]\.function\.name/);
      assert.equal(noTools.code, 2);
      assert.match(noTools.stderr, /--tool-choice needs --tools/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('bad flags, a missing image and an unknown model path fail clearly', async () => {
    const [help, unknownFlag, badNumber, missingImage, noModel, replImage] = await Promise.all([
      runChat(['--help']),
      runChat([MODEL, '--frobnicate', 'hi']),
      runChat([MODEL, '--max-new-tokens', 'lots', 'hi']),
      runChat([MODEL, '--image', '/no/such/picture.png', 'hi']),
      runChat(['/no/such/model', 'hi']),
      runChat([MODEL, '--max-new-tokens', '2'], '/image /no/such/other.png\n'),
    ]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^Usage: internvl chat/);
    assert.match(help.stdout, /\/image PATH/);

    assert.equal(unknownFlag.code, 2);
    assert.match(unknownFlag.stderr, /--frobnicate/);
    assert.match(unknownFlag.stderr, /Usage: internvl chat/);

    assert.equal(badNumber.code, 2);
    assert.match(badNumber.stderr, /--max-new-tokens must be an integer/);

    assert.equal(missingImage.code, 1);
    assert.match(missingImage.stderr, /image file not found: \/no\/such\/picture\.png/);
    assert.equal(missingImage.stdout, '');

    assert.equal(noModel.code, 1);
    assert.match(noModel.stderr, /\/no\/such\/model/);

    assert.equal(replImage.code, 1);
    assert.match(replImage.stderr, /image file not found: \/no\/such\/other\.png/);
    assert.equal(replImage.stdout, '');
  });
});
