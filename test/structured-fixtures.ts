/**
 * JSON Schemas for the structured-output tests: small, with every value bounded (maxLength, maxItems,
 * integer ranges, enums), so that even a random-weight model closes its JSON within a few dozen tokens.
 */
import assert from 'node:assert/strict';
import { Ajv } from 'ajv';
import { mulberry32 } from '../src/train/random.js';

export type Schema = Record<string, unknown>;

function leaf(r: () => number): Schema {
  switch (Math.floor(r() * 6)) {
    case 0:
      return { type: 'string', maxLength: 1 + Math.floor(r() * 6) };
    case 1:
      return { type: 'integer', minimum: -5, maximum: 5 + Math.floor(r() * 90) };
    case 2:
      return { type: 'boolean' };
    case 3:
      return { enum: ['red', 'green', 'blue'].slice(0, 1 + Math.floor(r() * 3)) };
    case 4:
      return { type: 'string', enum: ['a', 'bb', 'ccc'] };
    default:
      return { type: 'null' };
  }
}

function node(r: () => number, depth: number): Schema {
  const kind = depth >= 2 ? 0 : Math.floor(r() * 4);
  if (kind === 1) return objectSchema(r, depth + 1);
  if (kind === 2)
    return { type: 'array', items: node(r, depth + 1), minItems: 0, maxItems: 1 + Math.floor(r() * 2) };
  return leaf(r);
}

function objectSchema(r: () => number, depth: number): Schema {
  const count = 1 + Math.floor(r() * 3);
  const properties: Record<string, Schema> = {};
  for (let i = 0; i < count; i++) properties[`k${depth}${i}`] = node(r, depth);
  const names = Object.keys(properties);
  const required = names.filter((_, i) => i === 0 || r() < 0.5);
  return { type: 'object', properties, required, additionalProperties: false };
}

/** Schema number `i`: an object of 1–3 fields, nested up to two levels, arrays of at most two items. */
export function schemaFor(i: number): Schema {
  return objectSchema(mulberry32(1000 + i), 0);
}

const ajv = new Ajv({ strict: true, allErrors: true });

/** Throws, naming the schema's errors, unless `text` is JSON valid for `schema`. */
export function assertValidJson(text: string, schema: Schema, label: string): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${label}: not JSON (${(err as Error).message}): ${JSON.stringify(text)}`);
  }
  const validate = ajv.compile(schema);
  if (!validate(value)) {
    throw new Error(`${label}: ${ajv.errorsText(validate.errors)}: ${text} for ${JSON.stringify(schema)}`);
  }
  return value;
}

/** Runs `fn` over `ids`, `width` at a time. */
export async function inWaves<T>(ids: number[], width: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let k = 0; k < ids.length; k += width)
    out.push(...(await Promise.all(ids.slice(k, k + width).map(fn))));
  return out;
}

export const range = (from: number, to: number) => Array.from({ length: to - from }, (_, k) => from + k);

/** Posts a chat completion body and checks it is a 400 in OpenAI's shape naming `param` and the problem. */
export async function assertBadChatRequest(
  base: string,
  body: Record<string, unknown>,
  param: string,
  message: RegExp,
): Promise<void> {
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const reply = (await res.json()) as { error: { message: string; param: string; type: string } };
  assert.equal(res.status, 400, JSON.stringify(reply));
  assert.equal(reply.error.type, 'invalid_request_error');
  assert.equal(reply.error.param, param, reply.error.message);
  assert.match(reply.error.message, message);
}
