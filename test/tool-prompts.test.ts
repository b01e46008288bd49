import assert from 'node:assert/strict';
import { test } from 'node:test';
import { grammarVocab } from '../src/engine/grammar-vocab.js';
import { InternVLError } from '../src/errors.js';
import { decoderArchitecture } from '../src/models/registry.js';
import { parseToolOptions, ToolInputError, toolCallFormat } from '../src/pipeline/tool-calls.js';
import { getTemplate, renderConversation } from '../src/text/templates.js';
import { ToolCallParser } from '../src/text/tool-call-parser.js';
import {
  pythonJson,
  TOOL_FORMATS,
  type ToolDefinition,
  type ToolFormat,
  type ToolTurn,
} from '../src/text/tool-prompts.js';
import type { Tokenizer } from '../src/text/types.js';

const weather: ToolDefinition = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Get the weather',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};
const clock: ToolDefinition = { type: 'function', function: { name: 'now' } };

const conversation: ToolTurn[] = [
  { role: 'user', content: 'Weather in Paris and the time?' },
  {
    role: 'assistant',
    content: 'Let me check.',
    toolCalls: [
      { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
      { id: 'call_2', type: 'function', function: { name: 'now', arguments: '{}' } },
    ],
  },
  { role: 'tool', content: '{"temperature": 22}' },
  { role: 'tool', content: '12:00' },
];

function prompt(format: ToolFormat, tools: ToolDefinition[], turns = conversation): string {
  const template = getTemplate('internvl2_5');
  const rendered = format.render(turns, 'You are a helpful assistant.', tools);
  return renderConversation(template, rendered.turns, { systemMessage: rendered.systemMessage });
}

test('Qwen2.5 / Qwen3 (Hermes): tools in the system message, calls as <tool_call>, answers as <tool_response>', () => {
  // Written from Qwen2.5-Instruct's chat template (`tool | tojson`, `tool_call.arguments | tojson`).
  const expected =
    '<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n' +
    'You may call one or more functions to assist with the user query.\n\n' +
    'You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n' +
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", ' +
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n' +
    '{"type": "function", "function": {"name": "now"}}\n</tools>\n\n' +
    'For each function call, return a json object with function name and arguments within ' +
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n' +
    '</tool_call><|im_end|>\n' +
    '<|im_start|>user\nWeather in Paris and the time?<|im_end|>\n' +
    '<|im_start|>assistant\nLet me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n' +
    '</tool_call>\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call><|im_end|>\n' +
    '<|im_start|>user\n<tool_response>\n{"temperature": 22}\n</tool_response>\n' +
    '<tool_response>\n12:00\n</tool_response><|im_end|>\n' +
    '<|im_start|>assistant\n';
  assert.equal(prompt(TOOL_FORMATS[decoderArchitecture('qwen2').toolFormat], [weather, clock]), expected);
  assert.equal(decoderArchitecture('qwen3').toolFormat, 'hermes');
  // An assistant turn with calls only opens straight on the first call; no tools leaves the system alone.
  const callsOnly: ToolTurn[] = [
    { role: 'user', content: 'hi' },
    { role: 'assistant', content: '', toolCalls: [conversation[1].toolCalls![1]] },
  ];
  assert.equal(
    prompt(TOOL_FORMATS.hermes, [], callsOnly),
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n' +
      '<|im_start|>assistant\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call><|im_end|>\n' +
      '<|im_start|>assistant\n',
  );
});

test('InternLM2.5: a plugin system turn, calls as <|action_start|><|plugin|>, answers as environment turns', () => {
  // Written from InternLM's chat_format.md (function call) and LMDeploy's InternLM2 tool template.
  const expected =
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' +
    '<|im_start|>system name=<|plugin|>\n[{"name": "get_weather", "description": "Get the weather", ' +
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}, ' +
    '{"name": "now"}]<|im_end|>\n' +
    '<|im_start|>user\nWeather in Paris and the time?<|im_end|>\n' +
    '<|im_start|>assistant\nLet me check.<|action_start|><|plugin|>\n' +
    '{"name": "get_weather", "parameters": {"city": "Paris"}}<|action_end|><|action_start|><|plugin|>\n' +
    '{"name": "now", "parameters": {}}<|action_end|><|im_end|>\n' +
    '<|im_start|>environment name=<|plugin|>\n{"temperature": 22}<|im_end|>\n' +
    '<|im_start|>environment name=<|plugin|>\n12:00<|im_end|>\n' +
    '<|im_start|>assistant\n';
  assert.equal(prompt(TOOL_FORMATS[decoderArchitecture('internlm2').toolFormat], [weather, clock]), expected);
});

test('pythonJson writes as json.dumps; bad call arguments and late system turns are refused', () => {
  assert.equal(pythonJson({ a: [1, 'é', null], b: { c: true } }), '{"a": [1, "é", null], "b": {"c": true}}');
  const bad: ToolTurn[] = [
    { role: 'user', content: 'x' },
    {
      role: 'assistant',
      content: '',
      toolCalls: [{ id: 'c', type: 'function', function: { name: 'now', arguments: '{oops' } }],
    },
  ];
  for (const format of Object.values(TOOL_FORMATS)) {
    assert.throws(
      () => format.render(bad, 's', []),
      (e: unknown) =>
        e instanceof InternVLError && /turn 1 tool_calls\[0\]\.function\.arguments/.test(e.message),
    );
    assert.throws(
      () =>
        format.render(
          [
            { role: 'user', content: 'x' },
            { role: 'system', content: 'y' },
          ],
          's',
          [],
        ),
      /only a leading system message/,
    );
  }
});

function parseAll(format: ToolFormat, text: string, step = 1) {
  let n = 0;
  const parser = new ToolCallParser(format, () => `id${n++}`);
  let content = '';
  const deltas: unknown[] = [];
  for (let i = 0; i < text.length; i += step) {
    const piece = parser.push(text.slice(i, i + step));
    content += piece.content;
    deltas.push(...piece.calls);
  }
  const end = parser.finish();
  content += end.content;
  assert.equal(content, parser.content);
  return { content, deltas, calls: parser.calls, complete: parser.complete };
}

test('the parser streams content and call deltas, whatever the chunking', () => {
  const text =
    'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "a}\\"b"}}\n</tool_call>\n' +
    '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>';
  for (const step of [1, 3, 7, text.length]) {
    const r = parseAll(TOOL_FORMATS.hermes, text, step);
    assert.equal(r.content, 'Sure.', `step ${step}`);
    assert.ok(r.complete);
    assert.deepEqual(r.calls, [
      { id: 'id0', type: 'function', function: { name: 'get_weather', arguments: '{"city": "a}\\"b"}' } },
      { id: 'id1', type: 'function', function: { name: 'now', arguments: '{}' } },
    ]);
    assert.deepEqual(r.deltas[0], { index: 0, id: 'id0', name: 'get_weather', arguments: '' });
  }
  const lm = parseAll(
    TOOL_FORMATS.internlm2,
    'ok<|action_start|><|plugin|>\n{"name": "now", "parameters": {"x": [1]}}<|action_end|>',
  );
  assert.equal(lm.content, 'ok');
  assert.deepEqual(lm.calls[0].function, { name: 'now', arguments: '{"x": [1]}' });
  // Text that only looks like a call opening stays content; a call cut off is incomplete.
  const fake = parseAll(TOOL_FORMATS.hermes, 'a <tool_call> b <tool_c');
  assert.deepEqual([fake.content, fake.calls.length, fake.complete], ['a <tool_call> b <tool_c', 0, true]);
  const cut = parseAll(TOOL_FORMATS.hermes, '<tool_call>\n{"name": "now", "arguments": {"a": ');
  assert.deepEqual([cut.content, cut.calls.length, cut.complete], ['', 1, false]);
  assert.equal(parseAll(TOOL_FORMATS.hermes, 'plain text \n').content, 'plain text \n');
});

test('tool options: defaults, validation naming the field, and the grammar per tool choice', () => {
  assert.equal(parseToolOptions({}), undefined);
  assert.deepEqual(parseToolOptions({ tools: [weather] }), {
    tools: [weather],
    choice: 'auto',
    parallel: true,
  });
  const bad: [unknown, RegExp][] = [
    [
      { tools: [{ type: 'function', function: { name: 'a b' } }] },
      /^tools\[0\]\.function\.name: must be 1 to 64/,
    ],
    [
      { tools: [weather, weather] },
      /^tools\[1\]\.function\.name: another tool is already named 'get_weather'/,
    ],
    [{ toolChoice: 'required' }, /^toolChoice: tool_choice "required" needs tools/],
    [
      { tools: [weather], toolChoice: { type: 'function', function: { name: 'x' } } },
      /^toolChoice\.function\.name/,
    ],
    [{ tools: [weather], parallelToolCalls: 'yes' }, /^parallelToolCalls: /],
  ];
  for (const [options, message] of bad) {
    assert.throws(
      () => parseToolOptions(options as never),
      (e: unknown) => e instanceof ToolInputError && message.test(e.message),
      String(message),
    );
  }
  const hermes = TOOL_FORMATS.hermes;
  const tag = (choice: never, parallel = true) =>
    (
      toolCallFormat(hermes, { tools: [weather, clock], choice, parallel }) as {
        structuralTag: Record<string, unknown>;
      }
    )?.structuralTag;
  assert.equal(toolCallFormat(hermes, { tools: [weather], choice: 'none', parallel: true }), undefined);
  assert.equal(tag('auto' as never).type, 'triggered_tags');
  assert.deepEqual(tag('auto' as never).triggers, ['<tool_call>']);
  assert.equal(tag('required' as never).type, 'tags_with_separator');
  assert.equal(tag('required' as never, false).type, 'or');
  const named = tag({ type: 'function', function: { name: 'now' } } as never);
  assert.deepEqual(named, {
    type: 'tag',
    begin: '<tool_call>\n{"name": "now", "arguments": ',
    content: { type: 'json_schema', json_schema: { type: 'object', properties: {} } },
    end: '}\n</tool_call>',
  });
  // InternLM2 makes one call per answer, even with parallel calls asked for.
  const lm = toolCallFormat(TOOL_FORMATS.internlm2, {
    tools: [weather, clock],
    choice: 'required',
    parallel: true,
  });
  assert.equal((lm as { structuralTag: Record<string, unknown> }).structuralTag.type, 'or');
});

test('tool-call markers that are special tokens stay matchable text in the grammar vocabulary', () => {
  const tokens = ['a', '<|action_start|>', '<|im_end|>', '<|plugin|>'];
  const tokenizer = {
    idToToken: (id: number) => tokens[id],
    isSpecial: (id: number) => id > 0,
  } as unknown as Tokenizer;
  const vocab = grammarVocab(tokenizer, { decoder: { type: 'ByteLevel' } }, tokens.length);
  assert.deepEqual(vocab.encodedVocab, ['a', '<|action_start|>', '', '<|plugin|>']);
});
