import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { InternVLError } from '../src/errors.js';
import {
  buildBatchChatPrompts,
  buildChatPrompt,
  type ChatPrompt,
  countImagePlaceholders,
  expandImagePlaceholders,
  frameLabels,
  IMG_CONTEXT_TOKEN,
  imageLabels,
  imageTokenSpan,
  postprocessResponse,
} from '../src/text/prompt.js';
import {
  getTemplate,
  pythonStrip,
  renderConversation,
  TEMPLATE_NAMES,
  withSystemMessage,
} from '../src/text/templates.js';
import { GOLDEN_DIR } from './helpers.js';

type RlePiece = { text: string } | { repeat: string; count: number };

interface Scenario {
  id: string;
  call: 'chat' | 'batch_chat';
  question_arg: string;
  history_arg: [string, string][] | null;
  has_pixel_values: boolean;
  num_patches_list: number[];
  question_after_image_prefix_rule: string;
  prompt_before_expansion: string;
  prompt_expanded_rle: RlePiece[];
  prompt_expanded_num_chars: number;
  prompt_expanded_sha256_utf8: string;
  num_IMG_CONTEXT: number;
  prompt_expanded?: string;
}

interface GoldenTemplate {
  system_template: string;
  system_message: string;
  roles: [string, string];
  sep: string;
  stop_str_field: string | null;
  eos_token_for_generation: string;
  scenarios: Scenario[];
}

const golden = JSON.parse(readFileSync(path.join(GOLDEN_DIR, 'prep/prompts.json'), 'utf8')) as {
  image_tokens: { context_tokens_per_tile: number };
  templates: Record<string, GoldenTemplate>;
};
const NUM_IMAGE_TOKEN = golden.image_tokens.context_tokens_per_tile;

const rleText = (pieces: RlePiece[]): string =>
  pieces.map((p) => ('text' in p ? p.text : p.repeat.repeat(p.count))).join('');
const sha256 = (text: string): string => createHash('sha256').update(text, 'utf8').digest('hex');
const countOf = (text: string, needle: string): number => text.split(needle).length - 1;
const isError = (code: string, pattern: RegExp) => (err: unknown) =>
  err instanceof InternVLError && err.code === code && pattern.test(err.message);

function checkAgainstGolden(result: ChatPrompt, s: Scenario): void {
  assert.equal(result.question, s.question_after_image_prefix_rule);
  assert.equal(result.prompt, s.prompt_before_expansion);
  assert.deepEqual(result.numPatchesList, s.num_patches_list);
  const expanded = result.expandedPrompt;
  assert.equal(expanded.length, s.prompt_expanded_num_chars);
  assert.equal(countOf(expanded, IMG_CONTEXT_TOKEN), s.num_IMG_CONTEXT);
  assert.equal(sha256(expanded), s.prompt_expanded_sha256_utf8);
  assert.equal(expanded, rleText(s.prompt_expanded_rle));
  if (s.prompt_expanded !== undefined) assert.equal(expanded, s.prompt_expanded);
}

assert.deepEqual(Object.keys(golden.templates).sort(), [...TEMPLATE_NAMES].sort());

for (const [name, tpl] of Object.entries(golden.templates)) {
  describe(`template ${name}`, () => {
    test('fields match conversation.py', () => {
      const t = getTemplate(name);
      assert.equal(t.name, name);
      assert.equal(t.systemTemplate, tpl.system_template);
      assert.equal(t.systemMessage, tpl.system_message);
      assert.deepEqual([t.userRole, t.assistantRole], tpl.roles);
      assert.equal(t.sep, tpl.sep);
      assert.equal(t.stopStr, tpl.stop_str_field);
      assert.equal(t.eosToken, tpl.eos_token_for_generation);
    });

    const batchScenarios = tpl.scenarios.filter((s) => s.call === 'batch_chat');
    for (const s of tpl.scenarios) {
      test(`scenario ${s.id}`, () => {
        const template = getTemplate(name);
        if (s.call === 'chat') {
          const numTiles = s.has_pixel_values ? s.num_patches_list.reduce((a, b) => a + b, 0) : null;
          // A single image relies on chat()'s default [pixel_values.shape[0]] / [] without pixels.
          const numPatchesList = s.num_patches_list.length > 1 ? s.num_patches_list : undefined;
          const result = buildChatPrompt({
            template,
            question: s.question_arg,
            history: s.history_arg,
            numTiles,
            numPatchesList,
            numImageToken: NUM_IMAGE_TOKEN,
          });
          checkAgainstGolden(result, s);
        } else {
          const results = buildBatchChatPrompts({
            template,
            questions: batchScenarios.map((b) => b.question_arg),
            numPatchesList: batchScenarios.map((b) => b.num_patches_list[0]),
            numImageToken: NUM_IMAGE_TOKEN,
          });
          checkAgainstGolden(results[batchScenarios.indexOf(s)], s);
        }
      });
    }
  });
}

describe('labels', () => {
  const scenarios = golden.templates.internvl2_5.scenarios;
  const question = (id: string) => scenarios.find((s) => s.id === id)!.question_arg;

  test('imageLabels builds the Image-k prefix of the multi-image scenario', () => {
    assert.equal(imageLabels(2), 'Image-1: <image>\nImage-2: <image>\n');
    assert.equal(imageLabels(2) + 'Describe the two images in detail.', question('multi_image_3_5'));
    assert.equal(imageLabels(0), '');
  });

  test('frameLabels has the inference (Frame1) and training (Frame-1) spellings', () => {
    const q = 'What is the red panda doing?';
    assert.equal(frameLabels(4, 'inference') + q, question('video_4_frames_Frame1_style'));
    assert.equal(frameLabels(4, 'training') + q, question('video_4_frames_Frame-1_style'));
    assert.equal(frameLabels(1, 'inference'), 'Frame1: <image>\n');
    assert.throws(() => frameLabels(-1, 'inference'), isError('BAD_INPUT', /frame count/));
    assert.throws(() => imageLabels(1.5), isError('BAD_INPUT', /image count/));
  });
});

describe('templates', () => {
  test('an unknown template is UNSUPPORTED and lists the known ones', () => {
    assert.throws(
      () => getTemplate('llama3'),
      isError('UNSUPPORTED', /'llama3'.*internvl2_5, Hermes-2, internlm2-chat, phi3-chat/),
    );
  });

  test('system message overrides: config, option, leading system turn', () => {
    const fromConfig = getTemplate('internvl2_5', { systemMessage: 'Be brief.' });
    const turns = [{ role: 'user' as const, content: 'Hi' }];
    const expected =
      '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n';
    assert.equal(renderConversation(fromConfig, turns), expected);
    assert.equal(
      renderConversation(withSystemMessage(getTemplate('internvl2_5'), 'Be brief.'), turns),
      expected,
    );
    assert.equal(
      renderConversation(getTemplate('internvl2_5'), turns, { systemMessage: 'Be brief.' }),
      expected,
    );
    assert.equal(
      renderConversation(getTemplate('internvl2_5'), [{ role: 'system', content: 'Be brief.' }, ...turns], {
        systemMessage: 'ignored',
      }),
      expected,
    );
    // Braces and $-patterns in a system message are literal text.
    assert.equal(
      renderConversation(getTemplate('phi3-chat'), [], {
        systemMessage: '{x} $& {system_message}',
        openAssistant: false,
      }),
      '<|system|>\n{x} $& {system_message}<|end|>',
    );
    const chat = buildChatPrompt({ template: getTemplate('Hermes-2'), question: 'Hi', systemMessage: '' });
    assert.equal(
      chat.prompt,
      '<|im_start|>system\n<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n',
    );
  });

  test('MPT rendering: an empty message renders its role only; no open turn on request', () => {
    const t = getTemplate('internvl2_5');
    const prompt = renderConversation(
      t,
      [
        { role: 'user', content: 'Q' },
        { role: 'assistant', content: '' },
        { role: 'user', content: 'R' },
        { role: 'assistant', content: 'A' },
      ],
      { systemMessage: 'S', openAssistant: false },
    );
    assert.equal(
      prompt,
      '<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n' +
        '<|im_start|>user\nR<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n',
    );
  });

  test('bad turns are BAD_PROMPT', () => {
    const t = getTemplate('internvl2_5');
    assert.throws(
      () =>
        renderConversation(t, [
          { role: 'user', content: 'Q' },
          { role: 'system', content: 'S' },
        ]),
      isError('BAD_PROMPT', /turn 1.*system message is only allowed as the first turn/),
    );
    assert.throws(
      () => renderConversation(t, [{ role: 'tool', content: 'x' } as never]),
      isError('BAD_PROMPT', /role 'tool'/),
    );
    assert.throws(
      () => renderConversation(t, [{ role: 'user', content: 3 } as never]),
      isError('BAD_PROMPT', /turn 0.*string 'content'/),
    );
    assert.throws(
      () => buildChatPrompt({ template: t, question: 'q', history: [['only one'] as never] }),
      isError('BAD_PROMPT', /history\[0\]/),
    );
  });

  test('pythonStrip uses Python whitespace, not JS trim', () => {
    assert.equal(pythonStrip(' \t\n\x1c\x85 a b \u3000\n'), 'a b');
    assert.equal(pythonStrip('\ufeffa\ufeff'), '\ufeffa\ufeff');
  });
});

describe('expansion and chat rules', () => {
  test('imageTokenSpan', () => {
    assert.equal(imageTokenSpan(2, 3), `<img>${'<IMG_CONTEXT>'.repeat(6)}</img>`);
    assert.equal(imageTokenSpan(0, 256), '<img></img>');
    assert.throws(() => imageTokenSpan(1, -256), isError('BAD_INPUT', /numImageToken/));
  });

  test('surplus entries do nothing; surplus placeholders stay literal', () => {
    const span = (n: number) => imageTokenSpan(n, 1);
    assert.equal(expandImagePlaceholders('a<image>b', [1, 2, 3], 1), `a${span(1)}b`);
    assert.equal(expandImagePlaceholders('<image><image><image>', [2], 1), `${span(2)}<image><image>`);
    assert.equal(expandImagePlaceholders('<image>x<image>', [1, 2], 1), `${span(1)}x${span(2)}`);
    assert.equal(countImagePlaceholders('<image>x<image><imag>'), 2);
    assert.throws(
      () => expandImagePlaceholders('<image>', [1.5], 256),
      isError('BAD_INPUT', /numPatchesList\[0\]/),
    );
  });

  test('history: no <image> prefix, history placeholders are expanded first', () => {
    const t = getTemplate('internvl2_5');
    const r = buildChatPrompt({
      template: t,
      question: 'And now <image>?',
      history: [['<image>\nWhat is it?', 'A cat.']],
      numTiles: 3,
      numPatchesList: [1, 2],
      numImageToken: 1,
    });
    assert.equal(r.question, 'And now <image>?');
    const first = r.expandedPrompt.indexOf(imageTokenSpan(1, 1));
    const second = r.expandedPrompt.indexOf(imageTokenSpan(2, 1));
    assert.ok(first !== -1 && second > first);
    assert.ok(r.expandedPrompt.indexOf('What is it?') < second);
    // No history and no pixels: no prefix even without <image>.
    assert.equal(buildChatPrompt({ template: t, question: 'Hi' }).question, 'Hi');
  });

  test('tile counts must agree with the pixels', () => {
    const t = getTemplate('internvl2_5');
    assert.throws(
      () => buildChatPrompt({ template: t, question: 'q', numTiles: 7, numPatchesList: [3, 3] }),
      isError('BAD_INPUT', /sums to 6 tiles but the images have 7/),
    );
    assert.throws(
      () => buildChatPrompt({ template: t, question: 'q', numPatchesList: [3] }),
      isError('BAD_INPUT', /without pixels/),
    );
    assert.throws(
      () => buildBatchChatPrompts({ template: t, questions: ['a', 'b'], numPatchesList: [1] }),
      isError('BAD_INPUT', /2 questions but 1/),
    );
  });

  test('postprocessResponse cuts at the eos string and strips', () => {
    assert.equal(
      postprocessResponse('  A red panda. <|im_end|>\nmore<|im_end|>', getTemplate('internvl2_5')),
      'A red panda.',
    );
    assert.equal(postprocessResponse('\nno stop here \n', getTemplate('Hermes-2')), 'no stop here');
    assert.equal(postprocessResponse('Hi<|end|>junk', getTemplate('phi3-chat')), 'Hi');
    assert.equal(postprocessResponse('Hi<|im_end|>junk', getTemplate('phi3-chat')), 'Hi<|im_end|>junk');
  });
});
