/**
 * What one generate request asks for (length, sampling, stopping, output format, reporting): the types
 * and the validation of user input, used by the engine's sampler and grammar and by the pipeline
 * (pipeline/generation-config.ts resolves the defaults from the checkpoint and template).
 */
import { z } from 'zod';
import { InternVLError } from '../errors.js';
import type { ResponseFormat } from './grammar-types.js';

/** How one request generates: length, sampling, stopping and what is reported. */
export interface GenerationConfig {
  /** Most tokens to generate (the end token counts). */
  maxNewTokens: number;
  /** 0 = greedy (argmax). */
  temperature: number;
  /** Keep the k most likely tokens; 0 = off. */
  topK: number;
  /** Nucleus sampling: keep the smallest set of most likely tokens whose mass reaches topP; 1 = off. */
  topP: number;
  /** Drop tokens whose probability is below minP × the top token's; 0 = off. */
  minP: number;
  /** Hugging Face repetition penalty over prompt + generated ids; 1 = off. */
  repetitionPenalty: number;
  /** Generation ends when the text contains one of these; the returned text stops before it. */
  stop: string[];
  /** Extra ids that end generation (also with `ignoreEos`). */
  stopTokenIds: number[];
  /** Keep generating past the end-of-turn / eos ids (user `stopTokenIds` still stop). */
  ignoreEos: boolean;
  /** Makes sampling reproducible; unset = a fresh random seed. */
  seed?: number;
  /** Report the log-probability of each generated token. */
  logprobs: boolean;
  /** Also report this many most likely alternatives per token (0–20). */
  topLogprobs: number;
  /** Leave special tokens out of the decoded text. */
  skipSpecialTokens: boolean;
  /**
   * Constrain the text to a JSON object, a JSON Schema, a regex or an EBNF grammar (XGrammar, in the
   * engine thread); generation ends, finishReason 'stop', once the text is complete. Text cut off by
   * maxNewTokens (finishReason 'length') is incomplete. Logprobs are then those of the constrained
   * (masked) distribution.
   */
  responseFormat?: ResponseFormat;
}

/** A resolved config with the ids that end generation. */
export interface ResolvedGenerationConfig extends GenerationConfig {
  /** The template's end-of-turn id, then generation_config.json's `eos_token_id`s (deduplicated). */
  eosTokenIds: number[];
  /** What ends generation: `eosTokenIds` unless `ignoreEos`, plus `stopTokenIds` (deduplicated). */
  endTokenIds: number[];
}

/** What callers may pass: any subset of the fields; `stop` may also be a single string. */
export type GenerationConfigInput = Partial<Omit<GenerationConfig, 'stop'>> & {
  stop?: string | string[];
};

function describe(field: string, what: string) {
  return (issue: { input?: unknown }): string => {
    const got = JSON.stringify(issue.input) ?? String(issue.input);
    return `${field} must be ${what} (got ${got.length > 60 ? `${got.slice(0, 57)}...` : got})`;
  };
}

function numberField(field: string, what: string) {
  const error = describe(field, what);
  return { schema: z.number({ error }), error };
}

const maxNewTokens = numberField('maxNewTokens', 'a positive integer');
const temperature = numberField('temperature', 'a number ≥ 0 (0 = greedy)');
const topK = numberField('topK', 'a non-negative integer (0 = off)');
const topP = numberField('topP', 'a number in (0, 1]');
const minP = numberField('minP', 'a number in [0, 1]');
const repetitionPenalty = numberField('repetitionPenalty', 'a number > 0');
const seed = numberField('seed', 'a safe integer');
const topLogprobs = numberField('topLogprobs', 'an integer from 0 to 20');
const stopError = describe('stop', 'a non-empty string or a list of non-empty strings');
const stopTokenIdsError = describe('stopTokenIds', 'a list of non-negative integer token ids');
const boolean = (field: string) => z.boolean({ error: describe(field, 'true or false') });

const formatError = describe(
  'responseFormat',
  "{type: 'json_object'}, {type: 'json_schema', jsonSchema: {...}, strict?}, {type: 'regex', pattern}, {type: 'grammar', ebnf} or {type: 'structural_tag', structuralTag}",
);
const nonEmpty = (field: string) =>
  z
    .string({ error: describe(field, 'a non-empty string') })
    .min(1, { error: describe(field, 'a non-empty string') });

/** A response format: the shapes of ResponseFormat, unknown fields rejected. */
export const responseFormatSchema = z.discriminatedUnion(
  'type',
  [
    z.strictObject({ type: z.literal('json_object') }),
    z.strictObject({
      type: z.literal('json_schema'),
      jsonSchema: z.record(z.string(), z.unknown(), {
        error: describe('responseFormat.jsonSchema', 'a JSON Schema object'),
      }),
      strict: boolean('responseFormat.strict').optional(),
    }),
    z.strictObject({ type: z.literal('regex'), pattern: nonEmpty('responseFormat.pattern') }),
    z.strictObject({ type: z.literal('grammar'), ebnf: nonEmpty('responseFormat.ebnf') }),
    z.strictObject({
      type: z.literal('structural_tag'),
      structuralTag: z.record(z.string(), z.unknown(), {
        error: describe('responseFormat.structuralTag', "an XGrammar structural tag's format object"),
      }),
    }),
  ],
  { error: formatError },
);

/** Validates user input (unknown fields are errors, so a misspelt option is not silently ignored). */
const generationConfigInputSchema = z.strictObject({
  maxNewTokens: maxNewTokens.schema
    .int({ error: maxNewTokens.error })
    .positive({ error: maxNewTokens.error })
    .optional(),
  temperature: temperature.schema.nonnegative({ error: temperature.error }).optional(),
  topK: topK.schema.int({ error: topK.error }).nonnegative({ error: topK.error }).optional(),
  topP: topP.schema.positive({ error: topP.error }).max(1, { error: topP.error }).optional(),
  minP: minP.schema.nonnegative({ error: minP.error }).max(1, { error: minP.error }).optional(),
  repetitionPenalty: repetitionPenalty.schema.positive({ error: repetitionPenalty.error }).optional(),
  stop: z
    .union(
      [
        z.string({ error: stopError }).min(1, { error: stopError }),
        z.array(z.string({ error: stopError }).min(1, { error: stopError }), { error: stopError }),
      ],
      { error: stopError },
    )
    .optional(),
  stopTokenIds: z
    .array(
      z
        .number({ error: stopTokenIdsError })
        .int({ error: stopTokenIdsError })
        .nonnegative({ error: stopTokenIdsError }),
      {
        error: stopTokenIdsError,
      },
    )
    .optional(),
  ignoreEos: boolean('ignoreEos').optional(),
  seed: seed.schema.int({ error: seed.error }).optional(),
  logprobs: boolean('logprobs').optional(),
  topLogprobs: topLogprobs.schema
    .int({ error: topLogprobs.error })
    .min(0, { error: topLogprobs.error })
    .max(20, { error: topLogprobs.error })
    .optional(),
  skipSpecialTokens: boolean('skipSpecialTokens').optional(),
  responseFormat: responseFormatSchema.optional(),
});

const FIELD_NAMES = Object.keys(generationConfigInputSchema.shape);

function unknownFieldMessage(key: string): string {
  const camel = key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
  const known = FIELD_NAMES.find((name) => name.toLowerCase() === camel.toLowerCase());
  const hint = known ? ` (did you mean '${known}'?)` : '';
  return `unknown field '${key}'${hint}; known fields: ${FIELD_NAMES.join(', ')}`;
}

/**
 * Validates a user generation config; throws InternVLError('BAD_INPUT') naming every bad field.
 * Returns the given fields with `stop` normalised to a list.
 */
export function parseGenerationConfigInput(input: unknown): Partial<GenerationConfig> & { stop?: string[] } {
  if (input === undefined) return {};
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    const got = JSON.stringify(input) ?? String(input);
    throw new InternVLError('BAD_INPUT', `generation config must be an object (got ${got.slice(0, 60)})`);
  }
  const r = generationConfigInputSchema.safeParse(input);
  if (!r.success) {
    const messages = r.error.issues.map((issue) => {
      if (issue.code === 'unrecognized_keys' && issue.path.length > 0) {
        return `unknown field(s) ${issue.keys.join(', ')} in ${issue.path.join('.')}`;
      }
      if (issue.code === 'unrecognized_keys') return issue.keys.map(unknownFieldMessage).join('; ');
      return issue.message;
    });
    throw new InternVLError('BAD_INPUT', `invalid generation config: ${messages.join('; ')}`);
  }
  const { stop, ...rest } = r.data;
  const parsed: Partial<GenerationConfig> = { ...rest };
  if (stop !== undefined) parsed.stop = typeof stop === 'string' ? [stop] : [...stop];
  return parsed;
}
