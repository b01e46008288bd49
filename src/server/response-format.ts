/** OpenAI's `response_format` for Chat Completions, validated (zod) and mapped to a ResponseFormat. */
import { z } from 'zod';
import type { ResponseFormat } from '../engine/grammar-types.js';

const nullish = <T extends z.ZodType>(schema: T) => schema.nullish();

/** OpenAI's `response_format`: text, any JSON object, or JSON valid for a schema. */
export const responseFormatSchema = z.discriminatedUnion(
  'type',
  [
    z.object({ type: z.literal('text') }),
    z.object({ type: z.literal('json_object') }),
    z.object({
      type: z.literal('json_schema'),
      json_schema: z.object({
        name: z.string().regex(/^[a-zA-Z0-9_-]{1,64}$/, {
          error: 'must be 1 to 64 letters, digits, underscores or dashes',
        }),
        description: nullish(z.string()),
        schema: nullish(z.record(z.string(), z.unknown(), { error: 'must be a JSON Schema object' })),
        strict: nullish(z.boolean()),
      }),
    }),
  ],
  { error: "type must be 'text', 'json_object' or 'json_schema'" },
);

export type OpenAIResponseFormat = z.infer<typeof responseFormatSchema>;

/**
 * The generation config's responseFormat for OpenAI's `response_format`: `json_object` is any JSON
 * object; `json_schema` without a schema is too; `strict` (default true here, as the output is always
 * constrained) forbids properties the schema does not list.
 */
export function responseFormat(req: {
  response_format?: OpenAIResponseFormat | null;
}): ResponseFormat | undefined {
  const format = req.response_format;
  if (!format || format.type === 'text') return undefined;
  if (format.type === 'json_object' || !format.json_schema.schema) return { type: 'json_object' };
  const { schema, strict } = format.json_schema;
  return { type: 'json_schema', jsonSchema: schema, ...(strict != null ? { strict } : {}) };
}

/** The HTTP parameter a response format's compile error is about. */
export function responseFormatParam(req: { response_format?: OpenAIResponseFormat | null }): string {
  return req.response_format?.type === 'json_schema'
    ? 'response_format.json_schema.schema'
    : 'response_format';
}
