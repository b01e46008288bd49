/**
 * OpenAI tool calling on the wire: the request's `tools`, `tool_choice` and `parallel_tool_calls`,
 * assistant messages with `tool_calls` and `tool` messages (validated with zod, checked across fields
 * once), the up-front compile of the tools' grammar (a schema XGrammar cannot read is a 400 naming the
 * tool), and the `tool_calls` of a reply and of its stream deltas.
 */
import { z } from 'zod';
import { InternVLError } from '../errors.js';
import {
  type ToolCall,
  type ToolCallDelta,
  ToolInputError,
  type ToolOptions,
  toolChoiceSchema,
  toolProblems,
  toolsSchema,
} from '../pipeline/tool-calls.js';
import type { ServerBackend } from './backend.js';
import { HttpError } from './errors.js';

const nullish = <T extends z.ZodType>(schema: T) => schema.nullish();

/** Bound on calls per assistant message, so that a body of many tiny items cannot multiply the work. */
export const MAX_TOOL_CALLS = 256;

export const toolRequestFields = {
  tools: nullish(toolsSchema),
  tool_choice: nullish(toolChoiceSchema),
  parallel_tool_calls: nullish(z.boolean()),
};

const toolCallSchema = z.object({
  id: z.string(),
  type: z.literal('function', { error: "type must be 'function'" }),
  function: z.object({ name: z.string().min(1), arguments: z.string() }),
});

/** The tool fields of a message: an assistant's calls, or the call a `tool` message answers. */
export const messageToolFields = {
  tool_calls: nullish(
    z
      .array(toolCallSchema)
      .max(MAX_TOOL_CALLS, { error: `at most ${MAX_TOOL_CALLS} tool calls per message` }),
  ),
  tool_call_id: nullish(z.string()),
};

interface ToolFieldsRequest {
  messages: {
    role: string;
    content?: unknown;
    tool_calls?: z.infer<typeof toolCallSchema>[] | null;
    tool_call_id?: string | null;
  }[];
  tools?: { function: { name: string } }[] | null;
  tool_choice?: z.infer<typeof toolChoiceSchema> | null;
  response_format?: { type: string } | null;
}

/** The checks across fields (a zod superRefine of the chat request). */
export function checkToolFields(req: ToolFieldsRequest, ctx: z.RefinementCtx): void {
  for (const problem of toolProblems(req.tools, req.tool_choice)) {
    ctx.addIssue({ code: 'custom', path: problem.path, message: problem.message });
  }
  const choice = req.tool_choice ?? (req.tools?.length ? 'auto' : 'none');
  if (choice !== 'none' && req.response_format && req.response_format.type !== 'text') {
    ctx.addIssue({
      code: 'custom',
      path: ['response_format'],
      message: "response_format cannot be combined with tools unless tool_choice is 'none'",
    });
  }
  req.messages.forEach((m, i) => {
    if (m.tool_calls?.length && m.role !== 'assistant') {
      ctx.addIssue({
        code: 'custom',
        path: ['messages', i, 'tool_calls'],
        message: 'only assistant messages make tool calls',
      });
    }
    if (m.role === 'tool' && !m.tool_call_id) {
      ctx.addIssue({
        code: 'custom',
        path: ['messages', i, 'tool_call_id'],
        message: 'a tool message must name the call it answers',
      });
    }
    if (m.content == null && !(m.role === 'assistant' && m.tool_calls?.length)) {
      ctx.addIssue({
        code: 'custom',
        path: ['messages', i, 'content'],
        message: 'content must be a string or a list of content parts',
      });
    }
  });
}

/** The pipeline's tool options for a chat request. */
export function toolOptions(req: {
  tools?: z.infer<typeof toolsSchema> | null;
  tool_choice?: z.infer<typeof toolChoiceSchema> | null;
  parallel_tool_calls?: boolean | null;
}): ToolOptions {
  const options: ToolOptions = {};
  if (req.tools?.length) {
    options.tools = req.tools.map((t) => ({
      type: 'function',
      function: {
        name: t.function.name,
        ...(t.function.description != null ? { description: t.function.description } : {}),
        ...(t.function.parameters != null ? { parameters: t.function.parameters } : {}),
      },
    }));
  }
  if (req.tool_choice != null) options.toolChoice = req.tool_choice;
  if (req.parallel_tool_calls != null) options.parallelToolCalls = req.parallel_tool_calls;
  return options;
}

/** Compiles the tools' grammar before any work: a schema XGrammar cannot read is a 400 naming its tool. */
export async function compileRequestTools(backend: ServerBackend, options: ToolOptions): Promise<void> {
  try {
    await backend.compileTools(options);
  } catch (err) {
    if (!(err instanceof InternVLError) || err.code !== 'BAD_INPUT') throw err;
    const path = err instanceof ToolInputError ? err.path : ['tools'];
    const param = path
      .map((p, i) => (typeof p === 'number' ? `[${p}]` : i > 0 ? `.${p}` : p))
      .join('')
      .replace(/^toolChoice/, 'tool_choice');
    const message = err.message.startsWith(param) ? err.message : `${param}: ${err.message}`;
    throw new HttpError(400, message, { param, openaiCode: 'invalid_value', cause: err });
  }
}

/** A message's tool calls for the pipeline (OpenAI's shape, fields as the pipeline spells them). */
export function messageToolCalls(m: { tool_calls?: ToolCall[] | null }): { toolCalls?: ToolCall[] } {
  return m.tool_calls?.length ? { toolCalls: m.tool_calls.map((c) => ({ ...c, type: 'function' })) } : {};
}

/** OpenAI's `delta.tool_calls` for a chunk's deltas. */
export function toolCallDeltas(deltas: readonly ToolCallDelta[]): unknown[] {
  return deltas.map((d) =>
    d.id !== undefined
      ? { index: d.index, id: d.id, type: 'function', function: { name: d.name, arguments: d.arguments } }
      : { index: d.index, function: { arguments: d.arguments } },
  );
}
