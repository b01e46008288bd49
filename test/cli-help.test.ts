import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { didYouMean, editDistance } from '../src/cli/args.js';

/** Runs each argument list through `internvl` in one child process; exit codes and output in order. */
function runAll(cases: string[][]): { code: number; stdout: string; stderr: string }[] {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'test/cli-capture.ts', JSON.stringify(cases)], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

const COMMANDS = [
  'chat',
  'serve',
  'train',
  'transplant-vit',
  'create-random',
  'convert',
  'eval-quant',
  'bench',
  'pull',
  'ls',
  'rm',
  'info',
];

test('every command has --help with examples that run through npx', () => {
  const subs = ['stats', 'filter', 'pack'];
  const [top, ...rest] = runAll([
    ['help'],
    ...COMMANDS.map((c) => [c, '--help']),
    ...subs.map((s) => ['data', s, '--help']),
  ]);
  assert.equal(top.code, 0);
  for (const command of [...COMMANDS, 'data']) assert.match(top.stdout, new RegExp(`\\n  ${command} `));
  COMMANDS.forEach((command, i) => {
    assert.equal(rest[i].code, 0, `${command}: ${rest[i].stderr}`);
    assert.match(rest[i].stdout, /\nExamples:\n {2}npx internvl /, command);
  });
  subs.forEach((sub, i) => {
    const r = rest[COMMANDS.length + i];
    assert.equal(r.code, 0, `data ${sub}: ${r.stderr}`);
    assert.match(r.stdout, /npx internvl data pack examples\/data\/meta\.json/);
  });
  assert.match(rest[COMMANDS.indexOf('serve')].stdout, /chat page at \//);
});

test('a mistyped option is named, with the closest option, in our words', () => {
  const cases: [string[], RegExp][] = [
    [['create-random', '--shap', 'InternVL2_5-1B'], /unknown option '--shap'; did you mean --shape\?/],
    [['serve', '--prot', '8000'], /unknown option '--prot'; did you mean --port\?/],
    [['chat', '--max-tile', '6', 'hi'], /unknown option '--max-tile'; did you mean --max-tiles\?/],
    [['train', '--mdoel', 'x'], /unknown option '--mdoel'; did you mean --model\?/],
    [['data', 'pack', 'm.json', '--tile'], /unknown option '--tile'; did you mean --tiles\?/],
    [['convert', 'x', '--frobnicate'], /unknown option '--frobnicate'\n/],
    [['create-random', '--shape'], /--shape needs a value/],
    [['create-random', '--out', '--shape', 'x'], /--out needs a value, got the option '--shape'/],
    [['create-random', '--no-weights=yes'], /--no-weights takes no value/],
    [['bench', 'extra'], /unexpected argument 'extra'/],
  ];
  const results = runAll(cases.map(([args]) => args));
  cases.forEach(([args, message], i) => {
    assert.equal(results[i].code, 2, args.join(' '));
    assert.match(results[i].stderr, message, args.join(' '));
    assert.doesNotMatch(results[i].stderr, /To specify a positional argument|ERR_PARSE_ARGS/, args.join(' '));
  });
});

test('an unknown command is named, with the closest command', () => {
  const [chta, serv, pakc, frob] = runAll([['chta', 'x'], ['serv'], ['data', 'pakc'], ['frobnicate']]);
  assert.equal(chta.code, 2);
  assert.equal(
    chta.stderr,
    "internvl: unknown command 'chta'; did you mean 'chat'?\nRun `npx internvl help` for the list of commands.\n",
  );
  assert.match(serv.stderr, /did you mean 'serve'\?/);
  assert.equal(pakc.code, 2);
  assert.match(pakc.stderr, /unknown data command 'pakc'; did you mean 'pack'\?/);
  assert.equal(frob.code, 2);
  assert.doesNotMatch(frob.stderr, /did you mean/);
});

test('edit distance counts a swap of neighbours as one edit', () => {
  assert.equal(editDistance('model', 'model'), 0);
  assert.equal(editDistance('mdoel', 'model'), 1);
  assert.equal(editDistance('prot', 'port'), 1);
  assert.equal(editDistance('', 'abc'), 3);
  assert.equal(editDistance('kitten', 'sitting'), 3);
  assert.equal(didYouMean('max-new', ['max-new-tokens', 'max-tiles']), 'max-new-tokens');
  assert.equal(didYouMean('xyz', ['model', 'out']), undefined);
});
