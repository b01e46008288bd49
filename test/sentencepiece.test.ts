import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { InternVLError } from '../src/errors.js';
import { loadTokenizer } from '../src/io/tokenizer-files.js';
import { PieceType, parseSentencePieceModel, SentencePieceBpe } from '../src/text/sentencepiece.js';
import { createSentencePieceTokenizer } from '../src/text/tokenizer.js';
import {
  encodeSentencePieceModel,
  fixtureByteId,
  fixtureId,
  fixturePieces,
  TYPE,
} from './sentencepiece-fixture.js';

const modelBytes = encodeSentencePieceModel(fixturePieces(), { withUnknownField: true });
const bpe = new SentencePieceBpe(parseSentencePieceModel(modelBytes));
const ids = (...pieces: string[]): number[] => pieces.map(fixtureId);
const bytesOf = (s: string): number[] => [...new TextEncoder().encode(s)].map(fixtureByteId);

const BASE = fixturePieces().length;
const addedTokens = { '<img>': BASE, '</img>': BASE + 1, '<IMG_CONTEXT>': BASE + 2 };
const tokenizerConfig = {
  tokenizer_class: 'InternLM2Tokenizer',
  bos_token: '<s>',
  eos_token: '</s>',
  unk_token: '<unk>',
  pad_token: '</s>',
  additional_special_tokens: ['<img>', '</img>', '<IMG_CONTEXT>'],
};

describe('SentencePiece model parsing', () => {
  it('reads pieces, trainer and normalizer specs (skipping unknown fields)', () => {
    const model = parseSentencePieceModel(modelBytes);
    assert.equal(model.pieces.length, BASE);
    assert.deepEqual(model.pieces[0], { piece: '<unk>', score: 0, type: PieceType.UNKNOWN });
    assert.equal(model.pieces[fixtureByteId(0x41)].piece, '<0x41>');
    assert.equal(model.pieces[fixtureId('bc')].score, -1);
    assert.equal(model.pieces[fixtureId('ll')].score, -4.5);
    assert.equal(model.pieces[fixtureId('<|im_start|>')].type, PieceType.USER_DEFINED);
    assert.deepEqual(
      { ...model.trainerSpec, unkSurface: undefined },
      {
        modelType: 2,
        byteFallback: true,
        treatWhitespaceAsSuffix: false,
        unkId: 0,
        bosId: 1,
        eosId: 2,
        padId: -1,
        unkSurface: undefined,
      },
    );
    assert.equal(model.normalizerSpec.name, 'identity');
    assert.equal(model.normalizerSpec.addDummyPrefix, true);
    assert.equal(model.normalizerSpec.removeExtraWhitespaces, false);
  });

  it('rejects truncated files and non-BPE models', () => {
    assert.throws(
      () => parseSentencePieceModel(modelBytes.subarray(0, 50), 'cut.model'),
      (e: unknown) =>
        e instanceof InternVLError && e.code === 'BAD_TOKENIZER' && e.message.includes('cut.model'),
    );
    assert.throws(
      () => parseSentencePieceModel(new Uint8Array(0)),
      (e: unknown) => e instanceof InternVLError && e.code === 'BAD_TOKENIZER',
    );
    const unigram = parseSentencePieceModel(encodeSentencePieceModel(fixturePieces(), { modelType: 1 }));
    assert.throws(
      () => new SentencePieceBpe(unigram),
      (e: unknown) => e instanceof InternVLError && e.code === 'UNSUPPORTED',
    );
  });
});

describe('SentencePiece BPE encoding', () => {
  it('merges the highest-scoring pair first, not left to right', () => {
    // '▁abc': pairs ▁a (-3), ab (-5), bc (-1) → bc first, then ▁a; left-to-right would give ▁a, b, c or ab.
    assert.deepEqual(bpe.encode('abc'), ids('▁a', 'bc'));
  });

  it('breaks score ties by taking the leftmost pair', () => {
    // '▁aaa': aa at 1 and aa at 2 tie (-2) and beat ▁a (-3); leftmost first gives ▁, aa, a.
    assert.deepEqual(bpe.encode('aaa'), ids('▁', 'aa', 'a'));
  });

  it('builds multi-step merges and adds the dummy prefix', () => {
    assert.deepEqual(bpe.encode('hello'), ids('▁hello'));
    assert.deepEqual(bpe.encode('hello hello'), ids('▁hello', '▁hello'));
    assert.equal(bpe.normalize('a b'), '▁a▁b');
    assert.deepEqual(bpe.encode(''), []);
  });

  it('falls back to UTF-8 byte pieces for characters outside the vocabulary', () => {
    assert.deepEqual(bpe.encode('你好🙂'), [
      fixtureId('▁'),
      ...bytesOf('你'),
      fixtureId('好'),
      ...bytesOf('🙂'),
    ]);
  });

  it('splits UNUSED pieces back into their parts', () => {
    assert.deepEqual(bpe.encode('xx'), ids('▁', 'x', 'x'));
  });

  it('keeps user-defined pieces whole', () => {
    assert.deepEqual(
      bpe.encode('<|im_start|>hello<|im_end|>'),
      ids('▁', '<|im_start|>', 'hello', '<|im_end|>'),
    );
  });

  it('uses <unk> (collapsed) when byte fallback is off', () => {
    const noFallback = new SentencePieceBpe(
      parseSentencePieceModel(encodeSentencePieceModel(fixturePieces(), { byteFallback: false })),
    );
    assert.deepEqual(noFallback.encode('a你们a'), [fixtureId('▁a'), 0, fixtureId('a')]);
    assert.equal(noFallback.decode([fixtureId('▁a'), 0]), 'a \u2047 ');
  });

  it('removes extra whitespace when the normalizer asks for it', () => {
    const squeezing = new SentencePieceBpe(
      parseSentencePieceModel(encodeSentencePieceModel(fixturePieces(), { removeExtraWhitespaces: true })),
    );
    assert.equal(squeezing.normalize('  a   b  '), '▁a▁b');
    assert.deepEqual(squeezing.encode('   '), []);
  });
});

describe('SentencePiece decoding', () => {
  it('turns ▁ into spaces, assembles bytes and drops the dummy-prefix space', () => {
    const text = 'hello abc 你好🙂 aa';
    assert.equal(bpe.decode(bpe.encode(text)), text);
    assert.equal(bpe.decode([...bytesOf('你'), fixtureId('▁hello')]), '你 hello');
    assert.equal(bpe.decode([1, fixtureId('▁a'), 2]), 'a');
    assert.equal(bpe.decode([-1, 1e9, 1.5]), '');
  });
});

describe('SentencePiece tokenizer (InternLM2-style HF wrapper)', () => {
  const tok = createSentencePieceTokenizer({ sentencePieceModel: modelBytes, tokenizerConfig, addedTokens });

  it('prepends BOS by default, like InternLM2Tokenizer', () => {
    assert.equal(tok.addBosToken, true);
    assert.equal(tok.bosTokenId, 1);
    assert.equal(tok.eosTokenId, 2);
    assert.equal(tok.padTokenId, 2);
    assert.deepEqual(tok.encode('abc'), [1, ...ids('▁a', 'bc')]);
    assert.deepEqual(tok.encode('abc', { addSpecialTokens: false }), ids('▁a', 'bc'));
  });

  it('maps added tokens from added_tokens.json after the base vocabulary', () => {
    assert.equal(tok.vocabSize, BASE + 3);
    assert.equal(tok.tokenToId('<IMG_CONTEXT>'), BASE + 2);
    assert.equal(tok.idToToken(BASE + 1), '</img>');
    assert.deepEqual(tok.encode('<img><IMG_CONTEXT><IMG_CONTEXT></img>', { addSpecialTokens: false }), [
      BASE,
      BASE + 2,
      BASE + 2,
      BASE + 1,
    ]);
    assert.equal(tok.isSpecial(BASE + 2), true);
    assert.equal(tok.isSpecial(1), true);
    assert.equal(tok.isSpecial(fixtureId('a')), false);
  });

  it('splits literal special tokens (<s>) out of the text, each chunk getting its own dummy prefix', () => {
    assert.deepEqual(tok.encode('<s>hello<img>abc', { addSpecialTokens: false }), [
      1,
      ...ids('▁hello'),
      BASE,
      ...ids('▁a', 'bc'),
    ]);
  });

  it('honours added_tokens_decoder (ids, special flag, rstrip)', () => {
    const withDecoder = createSentencePieceTokenizer({
      sentencePieceModel: modelBytes,
      tokenizerConfig: {
        ...tokenizerConfig,
        added_tokens_decoder: {
          [fixtureId('<|im_start|>')]: { content: '<|im_start|>', special: true },
          [fixtureId('<|im_end|>')]: { content: '<|im_end|>', special: true, rstrip: true },
        },
      },
      addedTokens,
    });
    assert.deepEqual(withDecoder.encode('<|im_start|>hello<|im_end|>  abc', { addSpecialTokens: false }), [
      ...ids('<|im_start|>', '▁hello', '<|im_end|>', '▁a', 'bc'),
    ]);
    assert.equal(withDecoder.isSpecial(fixtureId('<|im_end|>')), true);
  });

  it('round-trips text and skips specials on request', () => {
    const text = '<|im_start|>hello abc 你好🙂<|im_end|><img><IMG_CONTEXT></img>';
    const encoded = tok.encode(text);
    assert.equal(encoded[0], 1);
    assert.equal(tok.decode(encoded), `<s>${text}`);
    // User-defined pieces not registered as special tokens are ordinary text.
    assert.equal(tok.decode(encoded, { skipSpecialTokens: true }), '<|im_start|>hello abc 你好🙂<|im_end|>');
    assert.equal(tok.decode(tok.encode('<img>abc</img>'), { skipSpecialTokens: true }), 'abc');
    assert.equal(tok.decode([BASE + 50, -3, 2 ** 40, fixtureId('▁a')]), 'a');
  });

  it('cleans up tokenization spaces only when tokenizer_config asks for it', () => {
    const spaced = [fixtureId('▁a'), fixtureByteId(0x20), fixtureByteId(0x2e)];
    assert.equal(tok.decode(spaced), 'a .');
    const cleaning = createSentencePieceTokenizer({
      sentencePieceModel: modelBytes,
      tokenizerConfig: { ...tokenizerConfig, clean_up_tokenization_spaces: true },
    });
    assert.equal(cleaning.decode(spaced), 'a.');
  });

  it('loads from a model folder (tokenizer.model + config + added_tokens.json)', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-spm-'));
    try {
      await writeFile(path.join(dir, 'tokenizer.model'), modelBytes);
      await writeFile(path.join(dir, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig));
      await writeFile(path.join(dir, 'added_tokens.json'), JSON.stringify(addedTokens));
      const loaded = await loadTokenizer(dir);
      assert.deepEqual(loaded.encode('hello<IMG_CONTEXT>'), [1, ...ids('▁hello'), BASE + 2]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('rejects a byte_fallback model without byte pieces', () => {
    const pieces = fixturePieces().filter((p) => p.type !== TYPE.BYTE);
    assert.throws(
      () => createSentencePieceTokenizer({ sentencePieceModel: encodeSentencePieceModel(pieces) }),
      (e: unknown) => e instanceof InternVLError && e.code === 'BAD_TOKENIZER',
    );
  });
});
