import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { InternVLError } from '../src/errors.js';
import { loadTokenizer } from '../src/io/tokenizer-files.js';
import { createJsonTokenizer, createTokenizer } from '../src/text/tokenizer.js';
import { GOLDEN_DIR, GOLDEN_MODELS, goldenModelDir } from './helpers.js';

/** input_ids (I64) of a golden case, via a minimal safetensors parse. */
async function goldenInputIds(model: string, testCase: string): Promise<number[]> {
  const bytes = await readFile(path.join(GOLDEN_DIR, 'cases', model, `${testCase}.safetensors`));
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  const info = header.input_ids;
  assert.equal(info.dtype, 'I64');
  const [start, end] = info.data_offsets as [number, number];
  const ids: number[] = [];
  for (let at = 8 + headerLength + start; at < 8 + headerLength + end; at += 8) {
    ids.push(Number(bytes.readBigInt64LE(at)));
  }
  return ids;
}

async function goldenPrompt(model: string, testCase: string): Promise<string> {
  const json = JSON.parse(await readFile(path.join(GOLDEN_DIR, 'cases', model, `${testCase}.json`), 'utf8'));
  return json.prompt_text_with_image_placeholders;
}

const QWEN = 'tiny-internvl2_5-qwen2';

describe('tokenizer.json tokenizer (golden byte-level BPE)', async () => {
  const tok = await loadTokenizer(goldenModelDir(QWEN));

  it('maps image tokens and chat specials to their ids', () => {
    assert.deepEqual(tok.encode('<img><IMG_CONTEXT><IMG_CONTEXT></img>'), [259, 261, 261, 260]);
    assert.deepEqual(tok.encode('<|im_start|>a<|im_end|>'), [257, 97, 258]);
    assert.equal(tok.tokenToId('<IMG_CONTEXT>'), 261);
    assert.equal(tok.idToToken(259), '<img>');
    assert.equal(tok.tokenToId('<nope>'), undefined);
  });

  it('has Qwen specials and no BOS', () => {
    assert.equal(tok.bosTokenId, undefined);
    assert.equal(tok.addBosToken, false);
    assert.equal(tok.eosTokenId, 258);
    assert.equal(tok.padTokenId, 256);
    assert.equal(tok.vocabSize, 268);
    assert.equal(tok.isSpecial(261), true);
    assert.equal(tok.isSpecial(97), false);
  });

  it('round-trips Chinese text as raw UTF-8 bytes', () => {
    const text = '你好，世界！Hello 🌍';
    const ids = tok.encode(text);
    assert.deepEqual(ids, [...Buffer.from(text, 'utf8')]);
    assert.equal(tok.decode(ids), text);
  });

  it('skips specials on request', () => {
    const ids = [257, 104, 105, 258, 261];
    assert.equal(tok.decode(ids), '<|im_start|>hi<|im_end|><IMG_CONTEXT>');
    assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'hi');
  });

  it('decodes ids outside the tokenizer to nothing, never throwing', () => {
    assert.equal(tok.idToToken(300), undefined);
    assert.equal(tok.decode([268, 300, 319]), '');
    assert.equal(tok.decode([104, -1, 1e12, 2 ** 53, Number.NaN, 1.5, 105]), 'hi');
    assert.equal(tok.decode([]), '');
    assert.equal(tok.decode(new Int32Array([104, 105])), 'hi');
  });

  for (const model of GOLDEN_MODELS) {
    it(`encodes the golden text prompt of ${model} exactly`, async () => {
      const t = await loadTokenizer(goldenModelDir(model));
      assert.deepEqual(t.encode(await goldenPrompt(model, 'text')), await goldenInputIds(model, 'text'));
    });
  }

  it('encodes the img1 prompt with 256 IMG_CONTEXT tokens exactly', async () => {
    const prompt = (await goldenPrompt(QWEN, 'img1')).replace(
      '<image>',
      `<img>${'<IMG_CONTEXT>'.repeat(256)}</img>`,
    );
    const expected = await goldenInputIds(QWEN, 'img1');
    assert.equal(expected.length, 479);
    assert.deepEqual(tok.encode(prompt), expected);
  });

  it('encodes 3000 IMG_CONTEXT tokens (linear splitting)', () => {
    const ids = tok.encode(`x<img>${'<IMG_CONTEXT>'.repeat(3000)}</img>y`);
    assert.equal(ids.length, 3004);
    assert.equal(ids.filter((id) => id === 261).length, 3000);
  });

  it('rejects non-string text with InternVLError', () => {
    assert.throws(
      () => tok.encode(42 as unknown as string),
      (e: unknown) => e instanceof InternVLError && e.code === 'BAD_INPUT',
    );
  });
});

describe('tokenizer.json tokenizer construction', async () => {
  const dir = goldenModelDir(QWEN);
  const tokenizerJson = JSON.parse(await readFile(path.join(dir, 'tokenizer.json'), 'utf8'));
  const tokenizerConfig = JSON.parse(await readFile(path.join(dir, 'tokenizer_config.json'), 'utf8'));

  it('adds tokens that only tokenizer_config.json declares', () => {
    const config = structuredClone(tokenizerConfig);
    config.added_tokens_decoder['268'] = { content: '<extra>', special: false };
    const tok = createJsonTokenizer({ tokenizerJson, tokenizerConfig: config });
    assert.deepEqual(tok.encode('a<extra>b'), [97, 268, 98]);
    assert.equal(tok.isSpecial(268), false);
    assert.equal(tok.decode([97, 268], { skipSpecialTokens: true }), 'a<extra>');
    assert.equal(tok.vocabSize, 269);
  });

  it('prepends BOS when tokenizer_config asks for it', () => {
    const config = { ...tokenizerConfig, bos_token: { content: '<|endoftext|>' }, add_bos_token: true };
    const tok = createJsonTokenizer({ tokenizerJson, tokenizerConfig: config });
    assert.equal(tok.addBosToken, true);
    assert.deepEqual(tok.encode('a'), [256, 97]);
    assert.deepEqual(tok.encode('a', { addSpecialTokens: false }), [97]);
  });

  it('reports malformed files as BAD_TOKENIZER', () => {
    const bad = (files: Parameters<typeof createTokenizer>[0]) => () => createTokenizer(files);
    const isBad = (e: unknown) => e instanceof InternVLError && e.code === 'BAD_TOKENIZER';
    assert.throws(bad({ tokenizerJson: { nope: 1 } }), isBad);
    assert.throws(bad({ tokenizerJson, tokenizerConfig: { eos_token: 5 } }), isBad);
    assert.throws(bad({ tokenizerJson, tokenizerConfig: [] }), isBad);
    assert.throws(bad({}), (e: unknown) => e instanceof InternVLError && e.code === 'NOT_FOUND');
  });
});

describe('loadTokenizer', () => {
  it('fails with NOT_FOUND for a folder without tokenizer files, BAD_TOKENIZER for broken JSON', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-tok-'));
    try {
      await assert.rejects(
        loadTokenizer(dir),
        (e: unknown) => e instanceof InternVLError && e.code === 'NOT_FOUND',
      );
      await writeFile(path.join(dir, 'tokenizer.json'), '{not json');
      await assert.rejects(
        loadTokenizer(dir),
        (e: unknown) =>
          e instanceof InternVLError && e.code === 'BAD_TOKENIZER' && e.message.includes('tokenizer.json'),
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
