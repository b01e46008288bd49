/**
 * Random walks under the grammar's mask, without a model: at each step a uniformly random allowed
 * token. Uniform picks are far wilder than a model's (every byte value, every multi-byte sequence, every
 * escape), so the decoded text is a hard check that the masks admit only valid output, for a
 * byte-level vocabulary (the golden Qwen2 tokenizer) and a SentencePiece one with byte fallback.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { GrammarEngine } from '../src/engine/grammar.js';
import { maskAllows, onlyEndAllowed, type ResponseFormat } from '../src/engine/grammar-types.js';
import { grammarVocab } from '../src/engine/grammar-vocab.js';
import { loadTokenizer } from '../src/io/tokenizer-files.js';
import { createSentencePieceTokenizer } from '../src/text/tokenizer.js';
import type { Tokenizer } from '../src/text/types.js';
import { mulberry32 } from '../src/train/random.js';
import { goldenModelDir } from './helpers.js';
import { encodeSentencePieceModel, fixturePieces } from './sentencepiece-fixture.js';
import { assertValidJson, schemaFor } from './structured-fixtures.js';

async function walk(
  engine: GrammarEngine,
  tokenizer: Tokenizer,
  format: ResponseFormat,
  end: number,
  vocabSize: number,
  seed: number,
): Promise<string> {
  const matcher = await engine.matcher(format, [end]);
  const random = mulberry32(seed);
  const ids: number[] = [];
  try {
    for (let step = 0; step < 2000; step++) {
      const mask = matcher.mask();
      if (onlyEndAllowed(mask, new Set([end]), vocabSize)) return tokenizer.decode(ids);
      const allowed: number[] = [];
      for (let id = 0; id < vocabSize; id++) if (maskAllows(mask, id)) allowed.push(id);
      assert.ok(allowed.length > 0, `no token allowed after ${JSON.stringify(tokenizer.decode(ids))}`);
      // As the engine does: a token the matcher refuses (a dead end) is dropped and another drawn.
      for (;;) {
        assert.ok(allowed.length > 0, `every allowed token is a dead end after ${tokenizer.decode(ids)}`);
        const id = allowed.splice(Math.floor(random() * allowed.length), 1)[0];
        if (id === end) return tokenizer.decode(ids);
        if (await matcher.accept(id)) {
          ids.push(id);
          break;
        }
      }
    }
    throw new Error(`no end after 2000 tokens: ${tokenizer.decode(ids)}`);
  } finally {
    matcher.dispose();
  }
}

test('byte-level vocabulary: 60 random walks over 30 schemas give valid JSON', async () => {
  const dir = goldenModelDir('tiny-internvl2_5-qwen2');
  const tokenizer = await loadTokenizer(dir);
  const json = JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
  const engine = new GrammarEngine(async () => grammarVocab(tokenizer, json, 320));
  for (let i = 0; i < 60; i++) {
    const schema = schemaFor(i % 30);
    const text = await walk(engine, tokenizer, { type: 'json_schema', jsonSchema: schema }, 258, 320, i);
    assertValidJson(text, schema, `walk ${i}`);
  }
  for (let i = 0; i < 10; i++) {
    // XGrammar reads the é of a character class as one byte: the UTF-8 guard's dead-end check keeps
    // it out; a literal é works.
    const text = await walk(
      engine,
      tokenizer,
      { type: 'regex', pattern: '[a-zé]{1,3}(é|-)[0-9]' },
      258,
      320,
      i,
    );
    assert.match(text, /^[a-z]{1,3}(é|-)[0-9]$/u);
  }
});

test('SentencePiece vocabulary with byte fallback: random walks give valid JSON', async () => {
  const pieces = fixturePieces();
  const tokenizer = createSentencePieceTokenizer({
    sentencePieceModel: encodeSentencePieceModel(pieces),
    tokenizerConfig: { tokenizer_class: 'InternLM2Tokenizer', bos_token: '<s>', eos_token: '</s>' },
  });
  const vocab = grammarVocab(tokenizer, undefined, pieces.length);
  assert.equal(vocab.vocabType, 'byte_fallback');
  const end = tokenizer.tokenToId('</s>')!;
  const engine = new GrammarEngine(async () => vocab);
  for (let i = 0; i < 30; i++) {
    const schema = schemaFor(i);
    const text = await walk(
      engine,
      tokenizer,
      { type: 'json_schema', jsonSchema: schema },
      end,
      pieces.length,
      i,
    );
    assertValidJson(text, schema, `walk ${i}`);
  }
});
