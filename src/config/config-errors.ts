/** zod issues turned into BAD_CONFIG messages that name the file, the field and what was expected. */
import type { z } from 'zod';
import { InternVLError } from '../errors.js';

/** Error text for a field: says when it is missing, otherwise what was expected and what came. */
export function expected(what: string) {
  return (issue: { input?: unknown }): string =>
    issue.input === undefined
      ? `required field is missing (expected ${what})`
      : `expected ${what}, got ${truncatedJson(issue.input)}`;
}

function truncatedJson(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function formatPath(pathParts: readonly PropertyKey[]): string {
  let out = '';
  for (const part of pathParts) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out === '' ? '(top level)' : out;
}

/** A BAD_CONFIG error listing every zod issue as `<source>: <json path>: <message>`. */
export function configError(
  sourceName: string,
  error: z.ZodError,
  prefix: readonly PropertyKey[] = [],
): InternVLError {
  const lines = error.issues.map((i) => `${sourceName}: ${formatPath([...prefix, ...i.path])}: ${i.message}`);
  return new InternVLError('BAD_CONFIG', lines.join('\n'));
}
