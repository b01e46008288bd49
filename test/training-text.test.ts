import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { InternVLError } from '../src/errors.js';
import {
  addImagePlaceholder,
  addVideoFrames,
  IGNORE_TOKEN_ID,
  type LossReduction,
  len2weight,
  lossWeights,
  renderTrainingText,
  type TrainingTurn,
  tokenizeTrainingSample,
  weightedLoss,
} from '../src/text/training.js';
import type { Tokenizer } from '../src/text/types.js';
import { GOLDEN_DIR, goldenModelDir } from './helpers.js';

type RlePiece = { text: string } | { repeat: string; count: number };
const rleText = (pieces: RlePiece[]): string =>
  pieces.map((p) => ('text' in p ? p.text : p.repeat.repeat(p.count))).join('');
const sha256 = (text: string): string => createHash('sha256').update(text, 'utf8').digest('hex');
const isError = (code: string, pattern: RegExp) => (err: unknown) =>
  err instanceof InternVLError && err.code === code && pattern.test(err.message);

interface MaskSample {
  id: string;
  conversations: TrainingTurn[];
  num_patches_per_image: number[];
  rendered_num_chars: number;
  rendered_sha256_utf8: string;
  rendered_rle: RlePiece[];
  segments: {
    role: string;
    char_start: number;
    char_end: number;
    supervised_char_span: [number, number] | null;
  }[];
  supervised_char_spans: [number, number][];
  supervised_texts: string[];
  rendered?: string;
  mask_string?: string;
}

const masks = JSON.parse(readFileSync(path.join(GOLDEN_DIR, 'prep/training_masks.json'), 'utf8')) as {
  samples: MaskSample[];
};

/**
 * The golden models' tokenizer: id = UTF-8 byte for ordinary text, added tokens (from tokenizer.json) atomic.
 * `bos` adds an InternLM2-style BOS (`add_bos_token`) on a spare id.
 */
function byteLevelTokenizer(bos?: { token: string; id: number }): Tokenizer {
  const json = JSON.parse(
    readFileSync(path.join(goldenModelDir('tiny-internvl2_5-qwen2'), 'tokenizer.json'), 'utf8'),
  );
  const added = new Map<string, number>(
    json.added_tokens.map((t: { content: string; id: number }) => [t.content, t.id]),
  );
  if (bos) added.set(bos.token, bos.id);
  const byId = new Map([...added].map(([token, id]) => [id, token]));
  const specials = [...added.keys()].sort((a, b) => b.length - a.length);
  const encoder = new TextEncoder();
  return {
    encode(text, options = {}) {
      const ids: number[] = bos && (options.addSpecialTokens ?? true) ? [bos.id] : [];
      let plain = '';
      const flush = () => {
        ids.push(...encoder.encode(plain));
        plain = '';
      };
      for (let i = 0; i < text.length; ) {
        const special = specials.find((s) => text.startsWith(s, i));
        if (special) {
          flush();
          ids.push(added.get(special)!);
          i += special.length;
        } else {
          plain += text[i++];
        }
      }
      flush();
      return ids;
    },
    decode(ids) {
      const bytes: number[] = [];
      let out = '';
      for (const id of Array.from(ids)) {
        if (id < 256) bytes.push(id);
        else {
          out += Buffer.from(bytes).toString('utf8') + (byId.get(id) ?? '');
          bytes.length = 0;
        }
      }
      return out + Buffer.from(bytes).toString('utf8');
    },
    tokenToId: (token) => added.get(token),
    idToToken: (id) => byId.get(id) ?? (id < 256 ? String.fromCharCode(id) : undefined),
    isSpecial: (id) => byId.has(id),
    vocabSize: 268,
    bosTokenId: bos?.id,
    eosTokenId: added.get('<|im_end|>'),
    padTokenId: added.get('<|endoftext|>'),
    addBosToken: bos !== undefined,
  };
}

const qwen2Tokenizer = byteLevelTokenizer();
const bosTokenizer = byteLevelTokenizer({ token: '<s>', id: 268 });

/** Labels the character spans imply: every token inside a supervised span carries its id. */
function labelsFromCharSpans(tokenizer: Tokenizer, text: string, spans: [number, number][]): Int32Array {
  const ids = tokenizer.encode(text);
  const labels = new Int32Array(ids.length).fill(IGNORE_TOKEN_ID);
  for (const [start, end] of spans) {
    const tokenStart = tokenizer.encode(text.slice(0, start)).length;
    const tokenEnd = tokenizer.encode(text.slice(0, end)).length;
    for (let t = tokenStart; t < tokenEnd; t++) labels[t] = ids[t];
  }
  return labels;
}

describe('training_masks.json (internvl2_5 preprocess)', () => {
  for (const sample of masks.samples) {
    test(`sample ${sample.id}: text, segments, supervised spans`, () => {
      const r = renderTrainingText(sample.conversations, {
        numPatchesPerImage: sample.num_patches_per_image,
      });
      const expected = rleText(sample.rendered_rle);
      assert.equal(r.text, expected);
      assert.equal(r.text.length, sample.rendered_num_chars);
      assert.equal(sha256(r.text), sample.rendered_sha256_utf8);
      if (sample.rendered !== undefined) assert.equal(r.text, sample.rendered);
      assert.deepEqual(r.supervisedCharSpans, sample.supervised_char_spans);
      assert.deepEqual(
        r.supervisedCharSpans.map(([s, e]) => r.text.slice(s, e)),
        sample.supervised_texts,
      );
      assert.deepEqual(
        r.segments.map((s) => [s.role, s.charStart, s.charEnd, s.supervisedCharSpan]),
        sample.segments.map((s) => [s.role, s.char_start, s.char_end, s.supervised_char_span]),
      );
      if (sample.mask_string !== undefined) {
        const mask = Array.from(r.text, () => '0');
        for (const [s, e] of r.supervisedCharSpans) mask.fill('1', s, e);
        assert.equal(mask.join(''), sample.mask_string);
      }
    });

    test(`sample ${sample.id}: token labels (byte-level tokenizer)`, () => {
      const r = tokenizeTrainingSample(qwen2Tokenizer, sample.conversations, {
        numPatchesPerImage: sample.num_patches_per_image,
      });
      assert.deepEqual(Array.from(r.inputIds), qwen2Tokenizer.encode(r.text));
      assert.equal(qwen2Tokenizer.decode(r.inputIds), rleText(sample.rendered_rle));
      assert.deepEqual(r.labels, labelsFromCharSpans(qwen2Tokenizer, r.text, sample.supervised_char_spans));
      const supervised = Array.from(r.labels).filter((id) => id !== IGNORE_TOKEN_ID);
      assert.equal(supervised.at(-1), qwen2Tokenizer.tokenToId('<|im_end|>'));
      assert.equal(r.segments.at(-1)!.tokenEnd, r.inputIds.length);
    });

    test(`sample ${sample.id}: add_bos_token keeps a single leading BOS, same labels after it`, () => {
      const plain = tokenizeTrainingSample(qwen2Tokenizer, sample.conversations, {
        numPatchesPerImage: sample.num_patches_per_image,
      });
      const withBos = tokenizeTrainingSample(bosTokenizer, sample.conversations, {
        numPatchesPerImage: sample.num_patches_per_image,
      });
      assert.deepEqual(Array.from(withBos.inputIds), [268, ...plain.inputIds]);
      assert.deepEqual(Array.from(withBos.labels), [IGNORE_TOKEN_ID, ...plain.labels]);
    });
  }
});

describe('training text rules', () => {
  const convo = (first: string): TrainingTurn[] => [
    { from: 'human', value: first },
    { from: 'gpt', value: 'ok' },
  ];

  test('addImagePlaceholder prefixes the first non-system turn only when it lacks <image>', () => {
    assert.equal(addImagePlaceholder(convo('What?'))[0].value, '<image>\nWhat?');
    assert.equal(addImagePlaceholder(convo('Look: <image> now'))[0].value, 'Look: <image> now');
    const withSystem = addImagePlaceholder([{ from: 'system', value: 'S' }, ...convo('Q')]);
    assert.deepEqual(
      withSystem.map((t) => t.value),
      ['S', '<image>\nQ', 'ok'],
    );
  });

  test('addVideoFrames expands <video>\\n into Frame-k labels', () => {
    assert.equal(
      addVideoFrames(convo('Describe.'), 3)[0].value,
      'Frame-1: <image>\nFrame-2: <image>\nFrame-3: <image>\nDescribe.',
    );
    assert.equal(
      addVideoFrames(convo('Clip:<video>\nGo'), 2)[0].value,
      'Clip:Frame-1: <image>\nFrame-2: <image>\nGo',
    );
    assert.throws(() => addVideoFrames(convo('x'), 0), isError('BAD_INPUT', /frame count/));
  });

  test('images are consumed in order across human turns; gpt <image> stays literal', () => {
    const r = renderTrainingText(
      [
        { from: 'human', value: 'A <image>' },
        { from: 'gpt', value: 'an <image> here' },
        { from: 'human', value: 'B <image> <image>' },
        { from: 'gpt', value: 'done' },
      ],
      { numPatchesPerImage: [1, 2], numImageToken: 1 },
    );
    const span = (n: number) => `<img>${'<IMG_CONTEXT>'.repeat(n)}</img>`;
    assert.equal(r.segments[1].text, `<|im_start|>user\nA ${span(1)}<|im_end|>\n`);
    assert.equal(r.segments[2].text, '<|im_start|>assistant\nan <image> here<|im_end|>\n');
    assert.equal(r.segments[3].text, `<|im_start|>user\nB ${span(2)} <image><|im_end|>\n`);
  });

  test('text-only keeps <image> literal; too few placeholders is BAD_INPUT', () => {
    const r = renderTrainingText(convo('<image> is a tag'), { textOnly: true, numPatchesPerImage: [1] });
    assert.match(r.text, /user\n<image> is a tag/);
    assert.throws(
      () => renderTrainingText(convo('no tag'), { numPatchesPerImage: [1, 1] }),
      isError('BAD_INPUT', /2 images but .* only 0/),
    );
  });

  test('bad conversations are BAD_INPUT', () => {
    assert.throws(() => renderTrainingText([]), isError('BAD_INPUT', /non-empty/));
    assert.throws(
      () => renderTrainingText([...convo('q'), { from: 'system', value: 's' }]),
      isError('BAD_INPUT', /conversations\[2\].*only allowed first/),
    );
    assert.throws(
      () => renderTrainingText([{ from: 'bot', value: 'x' } as never]),
      isError('BAD_INPUT', /from='bot'/),
    );
    assert.throws(
      () => renderTrainingText([{ from: 'human', value: null } as never]),
      isError('BAD_INPUT', /conversations\[0\].*string 'value'/),
    );
  });

  test('maxLength truncates ids and labels together', () => {
    const full = tokenizeTrainingSample(qwen2Tokenizer, convo('q'));
    const cut = tokenizeTrainingSample(qwen2Tokenizer, convo('q'), { maxLength: full.inputIds.length - 3 });
    assert.deepEqual(cut.inputIds, full.inputIds.slice(0, -3));
    assert.deepEqual(cut.labels, full.labels.slice(0, -3));
    assert.equal(cut.segments.at(-1)!.tokenEnd, cut.inputIds.length);
  });
});

const weightsGolden = JSON.parse(readFileSync(path.join(GOLDEN_DIR, 'prep/loss_weights.json'), 'utf8')) as {
  supervised_token_counts: number[];
  strategies: Record<
    LossReduction,
    {
      raw_weight_per_sample_token: number[];
      raw_weight_per_sample_token_float32: number[];
      normalizer_sum_of_weights: number;
      effective_weight_per_token: number[];
      share_of_loss_per_sample: number[];
    }
  >;
  worked_loss_example: { ce_per_sample: number[]; loss: Record<LossReduction, number> };
};

describe('loss_weights.json (len2weight)', () => {
  const counts = weightsGolden.supervised_token_counts;
  // Each sample: 3 ignored prompt positions, its supervised positions, 1 ignored trailing position.
  const labels: number[] = [];
  const sampleLengths: number[] = [];
  const sampleOf: number[] = [];
  counts.forEach((n, k) => {
    const positions = [-100, -100, -100, ...Array.from({ length: n }, (_, i) => i % 200), -100];
    labels.push(...positions);
    sampleLengths.push(positions.length);
    sampleOf.push(...positions.map(() => k));
  });
  const cuSeqlens = [0];
  for (const n of sampleLengths) cuSeqlens.push(cuSeqlens.at(-1)! + n);
  const close = (actual: number, expected: number, what: string) =>
    assert.ok(
      Math.abs(actual - expected) <= 1e-6 * Math.max(1, Math.abs(expected)),
      `${what}: ${actual} vs ${expected}`,
    );

  for (const mode of Object.keys(weightsGolden.strategies) as LossReduction[]) {
    const g = weightsGolden.strategies[mode];
    test(`strategy ${mode}`, () => {
      counts.forEach((n, k) => {
        assert.equal(len2weight(n, mode), g.raw_weight_per_sample_token[k]);
      });
      const weights = lossWeights(labels, { sampleLengths }, mode);
      assert.deepEqual(lossWeights(labels, { cuSeqlens }, mode), weights);
      let normalizer = 0;
      const share = counts.map(() => 0);
      weights.forEach((w, i) => {
        const k = sampleOf[i];
        assert.equal(
          w,
          labels[i] === IGNORE_TOKEN_ID ? 0 : g.raw_weight_per_sample_token_float32[k],
          `position ${i}`,
        );
        normalizer += w;
        share[k] += w;
      });
      close(normalizer, g.normalizer_sum_of_weights, 'normalizer');
      counts.forEach((_, k) => {
        close(
          g.raw_weight_per_sample_token_float32[k] / normalizer,
          g.effective_weight_per_token[k],
          'effective',
        );
        close(share[k] / normalizer, g.share_of_loss_per_sample[k], 'share');
      });
    });

    test(`worked example ${mode}: loss ${weightsGolden.worked_loss_example.loss[mode]}`, () => {
      const ce = weightsGolden.worked_loss_example.ce_per_sample;
      const weights = lossWeights(labels, { cuSeqlens }, mode);
      const perToken = sampleOf.map((k, i) => (labels[i] === IGNORE_TOKEN_ID ? 0 : ce[k]));
      close(weightedLoss(perToken, weights), weightsGolden.worked_loss_example.loss[mode], 'loss');
    });
  }

  test('a sample without supervised labels weighs 0; bad input is BAD_INPUT', () => {
    assert.equal(len2weight(0, 'square'), 0);
    const weights = lossWeights([-100, -100, 5, 6], { sampleLengths: [2, 2] }, 'sample');
    assert.deepEqual(Array.from(weights), [0, 0, 0.5, 0.5]);
    assert.equal(weightedLoss([1, 2], [0, 0]), 0);
    assert.throws(
      () => lossWeights([1, 2, 3], { sampleLengths: [1, 1] }, 'token'),
      isError('BAD_INPUT', /cover 2/),
    );
    assert.throws(
      () => lossWeights([1], { cuSeqlens: [1, 1] }, 'token'),
      isError('BAD_INPUT', /start with 0/),
    );
    assert.throws(
      () => lossWeights([1], { cuSeqlens: [0, 1] }, 'mean' as never),
      isError('BAD_INPUT', /'mean'/),
    );
    assert.throws(() => weightedLoss([1], [1, 2]), isError('BAD_INPUT', /1 losses but 2 weights/));
  });
});
