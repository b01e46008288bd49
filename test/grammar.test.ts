import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { grammarEngineForModel } from '../src/engine/grammar-files.js';
import { applyMask, maskAllows, onlyEndAllowed, type ResponseFormat } from '../src/engine/grammar-types.js';
import { grammarVocab } from '../src/engine/grammar-vocab.js';
import { tokenBytes, Utf8Guard } from '../src/engine/utf8-guard.js';
import { loadXGrammarFactory } from '../src/engine/xgrammar.js';
import { fatalMessage, XGrammarInstance } from '../src/engine/xgrammar-instance.js';
import { InternVLError } from '../src/errors.js';
import { loadTokenizer } from '../src/io/tokenizer-files.js';
import { goldenModelDir } from './helpers.js';

const DIR = goldenModelDir('tiny-internvl2_5-qwen2');
const VOCAB = 320; // config.json vocab_size: 268 tokens, padded to 320 logits
const IM_END = 258;

const engine = grammarEngineForModel(DIR, VOCAB);

function allowed(mask: Int32Array): number[] {
  const out: number[] = [];
  for (let id = 0; id < VOCAB; id++) if (maskAllows(mask, id)) out.push(id);
  return out;
}

test('the byte-level vocabulary: special tokens empty, padding empty, byte tokens as stored', async () => {
  const tokenizer = await loadTokenizer(DIR);
  const json = JSON.parse(readFileSync(path.join(DIR, 'tokenizer.json'), 'utf8'));
  const vocab = grammarVocab(tokenizer, json, VOCAB);
  assert.equal(vocab.vocabType, 'byte_level');
  assert.equal(vocab.prependSpace, false);
  assert.equal(vocab.encodedVocab.length, VOCAB);
  assert.equal(vocab.encodedVocab[0], 'Ā');
  assert.equal(vocab.encodedVocab[123], '{');
  assert.equal(vocab.encodedVocab[IM_END], '');
  assert.equal(vocab.encodedVocab[261], '');
  assert.equal(vocab.encodedVocab[300], '');
  assert.deepEqual(
    vocab.controlIds,
    Array.from({ length: 32 }, (_, i) => i),
  );
  const sp = grammarVocab(
    tokenizer,
    { decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }] } },
    4,
  );
  assert.equal(sp.vocabType, 'byte_fallback');
  assert.equal(grammarVocab(tokenizer, undefined, 4).vocabType, 'byte_fallback');
  assert.equal(grammarVocab(tokenizer, { decoder: { type: 'WordPiece' } }, 4).vocabType, 'raw');
});

// The golden vocabulary is byte-level with one token per byte: the id of an ASCII character is its code.
test('a JSON schema matcher allows exactly the compact JSON of the schema, then only the end token', async () => {
  const format: ResponseFormat = {
    type: 'json_schema',
    jsonSchema: { type: 'object', properties: { a: { enum: ['x', 'y'] } }, required: ['a'] },
  };
  const m = await engine.matcher(format, [IM_END]);
  assert.deepEqual(allowed(m.mask()), [123]); // '{'
  for (const ch of '{"a":"') assert.ok(await m.accept(ch.charCodeAt(0)), ch);
  assert.deepEqual(allowed(m.mask()), [120, 121]); // 'x' | 'y'
  assert.equal(await m.accept('z'.charCodeAt(0)), false);
  for (const ch of 'y"') assert.ok(await m.accept(ch.charCodeAt(0)), ch);
  assert.deepEqual(allowed(m.mask()), [125]); // '}'
  assert.ok(await m.accept(125));
  const end = m.mask();
  assert.deepEqual(allowed(end), [IM_END]);
  assert.ok(onlyEndAllowed(end, new Set([IM_END]), VOCAB));
  m.dispose();
});

test('special tokens and raw control characters never enter JSON text', async () => {
  const m = await engine.matcher({ type: 'json_object' }, [IM_END]);
  for (const ch of '{"k":"') assert.ok(await m.accept(ch.charCodeAt(0)));
  const ok = allowed(m.mask());
  assert.ok(ok.includes(97));
  assert.ok(
    ok.every((id) => id >= 32),
    `control characters allowed: ${ok.filter((id) => id < 32)}`,
  );
  assert.ok(
    ok.every((id) => id < 256),
    `special or padded ids allowed: ${ok.filter((id) => id >= 256)}`,
  );
  m.dispose();
});

test('regex and EBNF formats', async () => {
  const re = await engine.matcher({ type: 'regex', pattern: '[0-9]{2}-(ab|cd)' }, [IM_END]);
  assert.deepEqual(allowed(re.mask()), [48, 49, 50, 51, 52, 53, 54, 55, 56, 57]);
  for (const ch of '42-c') assert.ok(await re.accept(ch.charCodeAt(0)), ch);
  assert.deepEqual(allowed(re.mask()), [100]);
  const g = await engine.matcher({ type: 'grammar', ebnf: 'root ::= "yes" | "no"' }, [IM_END]);
  assert.deepEqual(allowed(g.mask()), [110, 121]);
});

test('a token after which grammar and UTF-8 allow nothing is refused (a dead end), the state kept', async () => {
  // XGrammar reads [àé] as the single bytes 0xE0 and 0xE9, UTF-8 lead bytes that 'x' cannot follow.
  const m = await engine.matcher({ type: 'regex', pattern: '[àé]x' }, [IM_END]);
  assert.deepEqual(allowed(m.mask()), [0xe0, 0xe9]);
  assert.equal(await m.accept(0xe9), false);
  assert.equal(await m.accept(0xe0), false);
  assert.deepEqual(allowed(m.mask()), [0xe0, 0xe9]);
  const literal = await engine.matcher({ type: 'regex', pattern: '(é)x' }, [IM_END]);
  assert.deepEqual(allowed(literal.mask()), [0xc3]);
  assert.ok(await literal.accept(0xc3));
  assert.deepEqual(allowed(literal.mask()), [0xa9]);
});

test('bad formats fail with BAD_INPUT naming the problem, and the engine keeps working', async () => {
  const bad: [ResponseFormat, RegExp][] = [
    [{ type: 'json_schema', jsonSchema: { type: 'nope' } }, /invalid JSON schema: Unsupported type "nope"/],
    [{ type: 'grammar', ebnf: 'root ::= "a' }, /invalid EBNF grammar: .+/],
    [{ type: 'grammar', ebnf: 'start ::= "a"' }, /invalid EBNF grammar: .*root/],
    [{ type: 'regex', pattern: '([a-z]' }, /invalid regex: .+/],
  ];
  for (const [format, message] of bad) {
    await assert.rejects(engine.compile(format), (err: unknown) => {
      assert.ok(err instanceof InternVLError);
      assert.equal(err.code, 'BAD_INPUT');
      assert.match(err.message, message);
      return true;
    });
  }
  // The serving instance never saw them: a matcher made before still works, and new ones compile.
  const m = await engine.matcher({ type: 'json_object' }, [IM_END]);
  assert.ok(await m.accept(123));
  await engine.compile({ type: 'json_schema', jsonSchema: { type: 'array', items: { type: 'integer' } } });
  await assert.rejects(engine.matcher({ type: 'json_object' }, []), /needs an end token/);
});

test('compiled grammars are cached by format', async () => {
  const format: ResponseFormat = { type: 'json_schema', jsonSchema: { type: 'boolean' } };
  const first = engine.compile(format);
  assert.equal(engine.compile(format), first);
  await first;
});

test('applyMask and fatalMessage', () => {
  const logits = new Float32Array(40).fill(1);
  const mask = new Int32Array([0b101, 0]);
  applyMask(logits, mask);
  assert.deepEqual(
    [...logits.keys()].filter((i) => logits[i] === 1),
    [0, 2],
  );
  applyMask(logits.fill(1), new Int32Array([-1]));
  assert.equal(logits.filter((v) => v === 1).length, 32, 'ids past the mask are forbidden');
  assert.equal(
    fatalMessage('[FATAL] /Users/x/xgrammar/cpp/json_schema_converter.cc:902: Unsupported type "nope"'),
    'Unsupported type "nope"',
  );
  assert.equal(
    fatalMessage('[FATAL] /a/b.cc:1: Check failed: (err.empty()) is false: Failed to parse JSON: bad'),
    'Failed to parse JSON: bad',
  );
});

test('token bytes per vocabulary kind, and the UTF-8 guard allows only well-formed sequences', () => {
  assert.deepEqual([...tokenBytes('Ġa', 'byte_level')!], [0x20, 0x61]);
  assert.deepEqual([...tokenBytes('Ā', 'byte_level')!], [0x00]);
  assert.deepEqual([...tokenBytes('<0xE4>', 'byte_fallback')!], [0xe4]);
  assert.deepEqual([...tokenBytes('▁hé', 'byte_fallback')!], [0x20, 0x68, 0xc3, 0xa9]);
  assert.equal(tokenBytes('', 'raw'), undefined);
  // One token per byte, plus a special token (undefined bytes).
  const bytes: (Uint8Array | undefined)[] = Array.from({ length: 256 }, (_, b) => Uint8Array.of(b));
  bytes.push(undefined);
  const guard = new Utf8Guard(bytes);
  const allowedFrom = (state: number) => {
    const mask = new Int32Array(Math.ceil(257 / 32)).fill(-1);
    guard.restrict(mask, state);
    return Array.from({ length: 257 }, (_, id) => id).filter((id) => maskAllows(mask, id));
  };
  const start = allowedFrom(0);
  assert.ok(start.includes(0x41) && start.includes(0xc2) && start.includes(0xf4) && start.includes(256));
  assert.ok(
    ![0x80, 0xbf, 0xc0, 0xc1, 0xf5, 0xff].some((b) => start.includes(b)),
    'no stray continuation or bad lead',
  );
  const afterE0 = guard.next(0, 0xe0);
  assert.deepEqual(
    allowedFrom(afterE0).filter((id) => id < 256),
    Array.from({ length: 0x20 }, (_, k) => 0xa0 + k),
    'E0 needs A0–BF (no overlong forms)',
  );
  const afterED = guard.next(0, 0xed);
  assert.ok(!allowedFrom(afterED).includes(0xa0), 'no surrogates');
  assert.equal(guard.next(guard.next(afterE0, 0xa0), 0x80), 0, 'a complete character');
  assert.equal(guard.next(0, 0x80), -1);
});

test('an XGrammar instance turns failures into named errors and is not used after an abort', async () => {
  const instance = new XGrammarInstance(await loadXGrammarFactory());
  await assert.rejects(
    instance.run('checking', 'BAD_INPUT', async () => {
      throw new Error('boom');
    }),
    (err: unknown) =>
      err instanceof InternVLError && err.code === 'BAD_INPUT' && err.message === 'checking: boom',
  );
  assert.equal(instance.aborted, false);
  await assert.rejects(
    instance.run('invalid JSON schema', 'BAD_INPUT', (xg) => xg.Grammar.fromJSONSchema('{"type": 5}')),
    /invalid JSON schema: .+/,
  );
  assert.equal(instance.aborted, true);
  await assert.rejects(
    instance.run('again', 'BAD_INPUT', (xg) => xg.Grammar.builtinJSONGrammar()),
    (err: unknown) =>
      err instanceof InternVLError && err.code === 'INTERNAL' && /has aborted/.test(err.message),
  );
});
