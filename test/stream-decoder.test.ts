import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { loadTokenizer } from '../src/io/tokenizer-files.js';
import { StreamDecoder } from '../src/text/stream-decoder.js';
import { createSentencePieceTokenizer } from '../src/text/tokenizer.js';
import type { DecodeOptions, Tokenizer } from '../src/text/types.js';
import { goldenModelDir } from './helpers.js';
import { encodeSentencePieceModel, fixtureId, fixturePieces } from './sentencepiece-fixture.js';

function streamAll(tokenizer: Tokenizer, ids: number[], skipSpecialTokens = false): string[] {
  const decoder = new StreamDecoder(tokenizer, { skipSpecialTokens });
  const chunks = ids.map((id) => decoder.push(id));
  chunks.push(decoder.flush());
  return chunks;
}

function checkStream(tokenizer: Tokenizer, ids: number[], skipSpecialTokens = false): string[] {
  const chunks = streamAll(tokenizer, ids, skipSpecialTokens);
  assert.equal(chunks.join(''), tokenizer.decode(ids, { skipSpecialTokens }));
  return chunks;
}

/** Deterministic PRNG (mulberry32). */
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('StreamDecoder on the byte-level golden tokenizer', async () => {
  const tok = await loadTokenizer(goldenModelDir('tiny-internvl2_5-qwen2'));

  it('never emits half a character (one id per UTF-8 byte)', () => {
    const text = '你好，世界！🙂 ok 👩‍💻';
    const ids = tok.encode(text);
    const chunks = checkStream(tok, ids);
    assert.equal(chunks.join(''), text);
    for (const chunk of chunks) assert.ok(!chunk.includes('\uFFFD'), `chunk ${JSON.stringify(chunk)}`);
    // The first two bytes of 你 give nothing; the third gives the character.
    assert.deepEqual(chunks.slice(0, 3), ['', '', '你']);
  });

  it('matches decode with and without skipping specials, ids outside the vocabulary included', () => {
    const ids = [257, ...tok.encode('答：你好'), 258, 300, 261, ...tok.encode('🙂'), 256];
    checkStream(tok, ids, false);
    const skipped = checkStream(tok, ids, true);
    assert.equal(skipped.join(''), '答：你好🙂');
  });

  it('emits invalid bytes as U+FFFD once later text arrives, and holds an unfinished character until flush', () => {
    const chunks = checkStream(tok, [0xff, 0x61, 0xe4, 0xbd]);
    assert.deepEqual(chunks.slice(0, 2), ['', '\uFFFDa']);
    assert.equal(chunks.at(-1), '\uFFFD');
  });

  it('decodes only a short window per step', () => {
    let longest = 0;
    const counting: Tokenizer = Object.create(tok);
    counting.decode = (ids: ArrayLike<number>, options?: DecodeOptions) => {
      longest = Math.max(longest, ids.length);
      return tok.decode(ids, options);
    };
    const ids = tok.encode('流式解码测试🙂'.repeat(200));
    assert.equal(streamAll(counting, ids).join(''), tok.decode(ids));
    assert.ok(longest <= 8, `longest window ${longest}`);
  });

  it('matches decode on random id sequences', () => {
    const next = random(7);
    for (let round = 0; round < 30; round++) {
      const ids = Array.from({ length: 40 }, () => Math.floor(next() * 270));
      checkStream(tok, ids, round % 2 === 0);
    }
  });

  it('starts a new stream after flush', () => {
    const decoder = new StreamDecoder(tok);
    decoder.push(0xe4);
    assert.equal(decoder.flush(), '\uFFFD');
    assert.equal(decoder.push(0x61), 'a');
  });
});

describe('StreamDecoder on a SentencePiece tokenizer', () => {
  const BASE = fixturePieces().length;
  const tok = createSentencePieceTokenizer({
    sentencePieceModel: encodeSentencePieceModel(fixturePieces()),
    tokenizerConfig: { bos_token: '<s>', eos_token: '</s>', additional_special_tokens: ['<img>'] },
    addedTokens: { '<img>': BASE },
  });

  it('handles byte-fallback pieces and the dropped leading space', () => {
    const ids = [...tok.encode('hello abc 你好🙂 aa'), 2];
    const chunks = checkStream(tok, ids, true);
    assert.equal(chunks.join(''), 'hello abc 你好🙂 aa');
    assert.equal(
      chunks.find((c) => c !== ''),
      'hello',
    );
    for (const chunk of chunks) assert.ok(!chunk.includes('\uFFFD'));
    checkStream(tok, ids, false);
  });

  it('keeps spaces that follow a lone ▁ piece', () => {
    const ids = [fixtureId('▁a'), fixtureId('▁'), fixtureId('▁'), fixtureId('▁hello')];
    assert.equal(checkStream(tok, ids).join(''), 'a   hello');
  });

  it('matches decode on random id sequences', () => {
    const next = random(11);
    for (let round = 0; round < 30; round++) {
      const ids = Array.from({ length: 40 }, () => Math.floor(next() * (BASE + 3)));
      checkStream(tok, ids, round % 2 === 0);
    }
  });
});
