/**
 * Tool calling in the pipeline: the `tools` / `toolChoice` / `parallelToolCalls` options (OpenAI's
 * shapes, validated once with zod) and the grammar that makes the model's calls valid by construction
 * (reading the calls out of the generated text: ./tool-call-reader.ts).
 *
 * The grammar is an XGrammar structural tag in the LLM's own call syntax (text/tool-prompts.ts), each
 * call's arguments constrained by its function's `parameters` schema:
 * - `required`: the whole answer is one call (several, one per line, with `parallelToolCalls` where the
 *   format allows it) of any tool; a named tool: exactly one call of it;
 * - `auto`: free text, and once the model opens a call (`<tool_call>`, `<|action_start|>`) it must be a
 *   valid one;
 * - `none`: no grammar, and the tools are left out of the prompt.
 */
import { z } from 'zod';
import type { ResponseFormat } from '../engine/grammar-types.js';
import { InternVLError } from '../errors.js';
import type { ToolCall, ToolDefinition, ToolFormat } from '../text/tool-prompts.js';

export type { ToolCallDelta } from '../text/tool-call-parser.js';
export type { ToolCall, ToolDefinition } from '../text/tool-prompts.js';

/** OpenAI's limit on tools per request. */
export const MAX_TOOLS = 128;

export const toolDefinitionSchema = z.object({
  type: z.literal('function', { error: "type must be 'function'" }),
  function: z.object({
    name: z.string().regex(/^[a-zA-Z0-9_-]{1,64}$/, {
      error: 'must be 1 to 64 letters, digits, underscores or dashes',
    }),
    description: z.string().nullish(),
    parameters: z
      .record(z.string(), z.unknown(), { error: 'must be a JSON Schema object' })
      .refine((s) => s.type === 'object', { error: "must be a JSON Schema of type 'object'" })
      .nullish(),
    strict: z.boolean().nullish(),
  }),
});

export const toolsSchema = z
  .array(toolDefinitionSchema, { error: 'must be a list of tools' })
  .max(MAX_TOOLS, { error: `at most ${MAX_TOOLS} tools per request` });

const TOOL_CHOICE_ERROR = "must be 'none', 'auto', 'required' or {type: 'function', function: {name}}";

export const toolChoiceSchema = z.union(
  [
    z.enum(['none', 'auto', 'required'], { error: TOOL_CHOICE_ERROR }),
    z.object({ type: z.literal('function'), function: z.object({ name: z.string() }) }),
  ],
  { error: TOOL_CHOICE_ERROR },
);

export type ToolChoice = z.infer<typeof toolChoiceSchema>;

/** The tool options of a request (pipeline spelling of OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`). */
export interface ToolOptions {
  tools?: ToolDefinition[];
  /** Default 'auto' when there are tools. */
  toolChoice?: ToolChoice;
  /** Several calls in one answer where the format has a separator (Hermes); default true. */
  parallelToolCalls?: boolean;
}

const TOOL_OPTION_NAMES: readonly string[] = ['tools', 'toolChoice', 'parallelToolCalls'];

/** A generation config without its tool options (anything that is not an object is left as it is). */
export function withoutToolOptions(gen: unknown): unknown {
  if (gen === null || typeof gen !== 'object' || Array.isArray(gen)) return gen;
  return Object.fromEntries(Object.entries(gen).filter(([key]) => !TOOL_OPTION_NAMES.includes(key)));
}

export interface ToolProblem {
  /** Where, in OpenAI's names: `['tools', 1, 'function', 'name']`, `['tool_choice']`. */
  path: (string | number)[];
  message: string;
}

/** What zod's shape checks cannot see: duplicate names, a named tool that is not there. */
export function toolProblems(
  tools: readonly { function: { name: string } }[] | null | undefined,
  choice: ToolChoice | null | undefined,
): ToolProblem[] {
  const problems: ToolProblem[] = [];
  const seen = new Set<string>();
  (tools ?? []).forEach((t, i) => {
    if (seen.has(t.function.name)) {
      problems.push({
        path: ['tools', i, 'function', 'name'],
        message: `another tool is already named '${t.function.name}'`,
      });
    }
    seen.add(t.function.name);
  });
  if (choice && choice !== 'none' && choice !== 'auto' && seen.size === 0) {
    problems.push({ path: ['tool_choice'], message: `tool_choice ${JSON.stringify(choice)} needs tools` });
  } else if (choice && typeof choice === 'object' && !seen.has(choice.function.name)) {
    problems.push({
      path: ['tool_choice', 'function', 'name'],
      message: `names '${choice.function.name}', which is not among the tools (${[...seen].join(', ')})`,
    });
  }
  return problems;
}

/** A bad tool option; `path` names it in OpenAI's names. */
export class ToolInputError extends InternVLError {
  constructor(
    readonly path: (string | number)[],
    message: string,
    options?: { cause?: unknown },
  ) {
    super('BAD_INPUT', message, options);
  }
}

function pathText(path: readonly (string | number)[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i > 0 ? `.${p}` : p)).join('');
}

/** A request's tools, validated and with the defaults applied. */
export interface ToolRequest {
  tools: ToolDefinition[];
  choice: ToolChoice;
  parallel: boolean;
}

/** Validates the tool options (undefined when there are none); throws ToolInputError naming the problem. */
export function parseToolOptions(options: ToolOptions): ToolRequest | undefined {
  const tools = toolsSchema.optional().safeParse(options.tools);
  const choice = toolChoiceSchema.optional().safeParse(options.toolChoice);
  const parallel = z.boolean().optional().safeParse(options.parallelToolCalls);
  for (const [r, name] of [
    [tools, 'tools'],
    [choice, 'toolChoice'],
    [parallel, 'parallelToolCalls'],
  ] as const) {
    if (!r.success) {
      const issue = r.error.issues[0];
      const path = [name, ...(issue.path as (string | number)[])];
      throw new ToolInputError(path, `${pathText(path)}: ${issue.message}`);
    }
  }
  const list: ToolDefinition[] = (tools.data ?? []).map((t) => ({
    type: 'function',
    function: {
      name: t.function.name,
      ...(t.function.description != null ? { description: t.function.description } : {}),
      ...(t.function.parameters != null ? { parameters: t.function.parameters } : {}),
    },
  }));
  const problem = toolProblems(list, choice.data)[0];
  if (problem) {
    const path = problem.path.map((p) => (p === 'tool_choice' ? 'toolChoice' : p));
    throw new ToolInputError(path, `${pathText(path)}: ${problem.message}`);
  }
  if (list.length === 0 && (choice.data === undefined || choice.data === 'none')) return undefined;
  return { tools: list, choice: choice.data ?? 'auto', parallel: parallel.data ?? true };
}

/** Arguments of a function without `parameters`: an empty object. */
const NO_PARAMETERS = { type: 'object', properties: {} };

function callTag(format: ToolFormat, tool: ToolDefinition): Record<string, unknown> {
  return {
    type: 'tag',
    begin: format.callBegin(tool.function.name),
    content: { type: 'json_schema', json_schema: tool.function.parameters ?? NO_PARAMETERS },
    end: format.callEnd,
  };
}

/** The response format that keeps the model's calls valid; undefined for tool choice 'none'. */
export function toolCallFormat(format: ToolFormat, request: ToolRequest): ResponseFormat | undefined {
  const { tools, choice } = request;
  if (choice === 'none') return undefined;
  const chosen =
    typeof choice === 'object' ? tools.filter((t) => t.function.name === choice.function.name) : tools;
  const tags = chosen.map((t) => callTag(format, t));
  const one = typeof choice === 'object' || !request.parallel || format.separator === undefined;
  let structuralTag: Record<string, unknown>;
  if (choice === 'auto') {
    structuralTag = {
      type: 'triggered_tags',
      triggers: [format.trigger],
      tags,
      at_least_one: false,
      stop_after_first: one,
    };
  } else if (one) structuralTag = tags.length === 1 ? tags[0] : { type: 'or', elements: tags };
  else {
    structuralTag = {
      type: 'tags_with_separator',
      tags,
      separator: format.separator,
      at_least_one: true,
      stop_after_first: false,
    };
  }
  return { type: 'structural_tag', structuralTag };
}

/**
 * Compiles the tool grammar; when it fails, finds the tool whose `parameters` XGrammar cannot read
 * and names it (ToolInputError at `tools[i].function.parameters`).
 */
export async function compileToolFormat(
  format: ToolFormat,
  request: ToolRequest,
  compile: (format: ResponseFormat) => Promise<unknown>,
): Promise<void> {
  const grammar = toolCallFormat(format, request);
  if (!grammar) return;
  try {
    await compile(grammar);
  } catch (err) {
    if (!(err instanceof InternVLError) || err.code !== 'BAD_INPUT') throw err;
    for (const [i, tool] of request.tools.entries()) {
      const path = ['tools', i, 'function', 'parameters'];
      await compile({ type: 'structural_tag', structuralTag: callTag(format, tool) }).catch((e: unknown) => {
        if (!(e instanceof InternVLError)) throw e;
        // The tag's one part that the request wrote is the schema.
        const message = e.message.replace(/^invalid structural tag: /, 'invalid JSON schema: ');
        throw new ToolInputError(path, `${pathText(path)}: ${message}`, { cause: e });
      });
    }
    throw err;
  }
}

export function isToolCall(value: unknown): value is ToolCall {
  const v = value as ToolCall;
  return (
    v !== null &&
    typeof v === 'object' &&
    typeof v.id === 'string' &&
    v.type === 'function' &&
    typeof v.function?.name === 'string' &&
    typeof v.function?.arguments === 'string'
  );
}
