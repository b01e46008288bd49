/**
 * Tool (function) calling in the LLM's own chat format: how the tools, the assistant's calls and the
 * tools' answers are written into the prompt, and what a call looks like in the model's output.
 *
 * - `hermes` (Qwen2.5 and Qwen3, the LLMs of InternVL2.5 / InternVL3 / InternVL3.5 on Qwen): the
 *   system message gets a `# Tools` section listing each tool's JSON inside `<tools></tools>`; a call is
 *   `<tool_call>\n{"name": …, "arguments": …}\n</tool_call>` (several calls one per line); the tools'
 *   answers go back as `<tool_response>` blocks in one user turn, as the Qwen chat templates write them.
 * - `internlm2` (InternLM2 / 2.5-chat, the LLM of InternVL2.5-4B/26B…): the tools are a second system
 *   turn `<|im_start|>system name=<|plugin|>` holding their JSON list; a call is
 *   `<|action_start|><|plugin|>\n{"name": …, "parameters": …}<|action_end|>` after any text; a tool's
 *   answer is an `<|im_start|>environment name=<|plugin|>` turn (InternLM's chat_format.md).
 *
 * JSON is written as Python's `json.dumps` writes it (', ' and ': ', non-ASCII kept), as the templates'
 * `tojson` does.
 */
import { InternVLError } from '../errors.js';
import type { ChatTurn } from './templates.js';

export interface ToolFunction {
  /** 1–64 letters, digits, underscores or dashes. */
  name: string;
  description?: string;
  /** A JSON Schema of `type: 'object'` for the arguments; absent = no arguments. */
  parameters?: Record<string, unknown>;
}

/** A tool as OpenAI's Chat Completions API gives it. */
export interface ToolDefinition {
  type: 'function';
  function: ToolFunction;
}

/** A call the assistant made: `arguments` is the arguments object as JSON text. */
export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

/** A conversation turn before tool rendering: an assistant turn may carry calls; `tool` is a tool's answer. */
export interface ToolTurn {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  toolCalls?: readonly ToolCall[];
}

export type ToolFormatName = 'hermes' | 'internlm2';

export interface ToolFormat {
  readonly name: ToolFormatName;
  /** The text that opens a call in the model's output. */
  readonly trigger: string;
  /** The key of the arguments inside a call. */
  readonly argumentsKey: 'arguments' | 'parameters';
  /** A call's text up to its arguments. */
  callBegin(name: string): string;
  /** A call's text after its arguments. */
  readonly callEnd: string;
  /** What goes between two calls of one answer; undefined: one call per answer. */
  readonly separator: string | undefined;
  /** Writes tools, calls and tool answers into template turns (the leading system turn already taken out). */
  render(
    turns: readonly ToolTurn[],
    systemMessage: string,
    tools: readonly ToolDefinition[],
  ): { turns: ChatTurn[]; systemMessage: string };
}

/** Tool-call markers that some vocabularies hold as special tokens; they must stay in the decoded text. */
export const TOOL_MARKER_TOKENS: readonly string[] = [
  '<tool_call>',
  '</tool_call>',
  '<|action_start|>',
  '<|action_end|>',
  '<|plugin|>',
];

/** `json.dumps(value, ensure_ascii=False)`: separators ', ' and ': '. */
export function pythonJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(pythonJson).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}: ${pythonJson(v)}`).join(', ')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** A call's arguments as a value (they travel as JSON text). */
function callArguments(call: ToolCall, where: string): unknown {
  try {
    return JSON.parse(call.function.arguments);
  } catch {
    throw new InternVLError(
      'BAD_PROMPT',
      `${where}.function.arguments must be JSON text, got ${JSON.stringify(call.function.arguments).slice(0, 60)}`,
    );
  }
}

/** Each call of an assistant turn as the model writes it. */
function callTexts(format: ToolFormat, calls: readonly ToolCall[], turn: number): string[] {
  return calls.map(
    (c, j) =>
      format.callBegin(c.function.name) +
      pythonJson(callArguments(c, `turn ${turn} tool_calls[${j}]`)) +
      format.callEnd,
  );
}

function functionJson(tool: ToolDefinition): ToolFunction {
  const { name, description, parameters } = tool.function;
  return { name, description, parameters };
}

/** Consecutive `tool` turns, from `start`: their contents, and the index after them. */
function toolRun(turns: readonly ToolTurn[], start: number): { contents: string[]; next: number } {
  const contents: string[] = [];
  let i = start;
  for (; i < turns.length && turns[i].role === 'tool'; i++) contents.push(turns[i].content);
  return { contents, next: i };
}

function checkSystem(turn: ToolTurn, i: number): never {
  throw new InternVLError(
    'BAD_PROMPT',
    `turn ${i} has role '${turn.role}' after the first turn; only a leading system message is allowed`,
  );
}

const HERMES_TOOLS_INTRO =
  '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' +
  'You are provided with function signatures within <tools></tools> XML tags:\n<tools>';
const HERMES_TOOLS_OUTRO =
  '\n</tools>\n\nFor each function call, return a json object with function name and arguments within ' +
  '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>';

const hermes: ToolFormat = {
  name: 'hermes',
  trigger: '<tool_call>',
  argumentsKey: 'arguments',
  callBegin: (name) => `<tool_call>\n{"name": ${JSON.stringify(name)}, "arguments": `,
  callEnd: '}\n</tool_call>',
  separator: '\n',
  render(turns, systemMessage, tools) {
    const out: ChatTurn[] = [];
    for (let i = 0; i < turns.length; ) {
      const turn = turns[i];
      if (turn.role === 'tool') {
        const { contents, next } = toolRun(turns, i);
        const content = contents.map((c) => `<tool_response>\n${c}\n</tool_response>`).join('\n');
        out.push({ role: 'user', content });
        i = next;
        continue;
      }
      if (turn.role === 'system') checkSystem(turn, i);
      let content = turn.content;
      if (turn.role === 'assistant' && turn.toolCalls?.length) {
        const calls = callTexts(hermes, turn.toolCalls, i);
        content = (content ? `${content}\n` : '') + calls.join('\n');
      }
      out.push({ role: turn.role, content });
      i++;
    }
    if (tools.length === 0) return { turns: out, systemMessage };
    const listed = tools.map((t) => `\n${pythonJson({ type: 'function', function: functionJson(t) })}`);
    return {
      turns: out,
      systemMessage: systemMessage + HERMES_TOOLS_INTRO + listed.join('') + HERMES_TOOLS_OUTRO,
    };
  },
};

const PLUGIN_SYSTEM = '<|im_start|>system name=<|plugin|>\n';
const PLUGIN_ENVIRONMENT = '<|im_start|>environment name=<|plugin|>\n';

const internlm2: ToolFormat = {
  name: 'internlm2',
  trigger: '<|action_start|>',
  argumentsKey: 'parameters',
  callBegin: (name) => `<|action_start|><|plugin|>\n{"name": ${JSON.stringify(name)}, "parameters": `,
  callEnd: '}<|action_end|>',
  separator: undefined,
  render(turns, systemMessage, tools) {
    const out: ChatTurn[] = [];
    if (tools.length > 0) {
      out.push({ role: 'system', header: PLUGIN_SYSTEM, content: pythonJson(tools.map(functionJson)) });
    }
    turns.forEach((turn, i) => {
      if (turn.role === 'tool') out.push({ role: 'user', header: PLUGIN_ENVIRONMENT, content: turn.content });
      else if (turn.role === 'system') checkSystem(turn, i);
      else if (turn.role === 'assistant' && turn.toolCalls?.length) {
        const calls = callTexts(internlm2, turn.toolCalls, i);
        out.push({ role: 'assistant', content: turn.content + calls.join('') });
      } else out.push({ role: turn.role, content: turn.content });
    });
    return { turns: out, systemMessage };
  },
};

export const TOOL_FORMATS: Readonly<Record<ToolFormatName, ToolFormat>> = { hermes, internlm2 };
