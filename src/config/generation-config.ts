import { z } from 'zod';
import {
  bool,
  configError,
  expected,
  joinPath,
  nonNegativeInt,
  nonNegativeNumber,
  positiveInt,
  positiveNumber,
  readJsonFile,
} from './model-config.js';

const tokenIds = () =>
  z.union([nonNegativeInt(), z.array(nonNegativeInt())], {
    error: expected('a token id or a list of token ids'),
  });

/**
 * generation_config.json. Sampling fields default to the Hugging Face GenerationConfig defaults
 * (greedy unless do_sample); length limits stay unset when the file does not give them.
 */
export const generationConfigSchema = z.looseObject(
  {
    bos_token_id: tokenIds().nullable().optional(),
    eos_token_id: tokenIds().nullable().optional(),
    pad_token_id: tokenIds().nullable().optional(),
    do_sample: bool().default(false),
    temperature: nonNegativeNumber().default(1),
    top_k: nonNegativeInt().default(50),
    top_p: z
      .number({ error: expected('a number in (0, 1]') })
      .positive({ error: expected('a number in (0, 1]') })
      .max(1, { error: expected('a number in (0, 1]') })
      .default(1),
    repetition_penalty: positiveNumber().default(1),
    num_beams: positiveInt().default(1),
    max_new_tokens: positiveInt().nullable().optional(),
    max_length: positiveInt().nullable().optional(),
  },
  { error: expected('a JSON object') },
);
type KnownFields<T> = { [K in keyof T as string extends K ? never : K]: T[K] };
export type GenerationConfigFile = KnownFields<z.infer<typeof generationConfigSchema>>;

/** Parses the JSON of generation_config.json (pure; `sourceName` is used in error messages). */
export function parseGenerationConfig(
  json: unknown,
  sourceName = 'generation_config.json',
): GenerationConfigFile {
  const r = generationConfigSchema.safeParse(json);
  if (!r.success) throw configError(sourceName, r.error);
  return r.data;
}

/** Reads `<dir>/generation_config.json`; a missing file gives the defaults. */
export async function loadGenerationConfig(dir: string): Promise<GenerationConfigFile> {
  const file = await joinPath(dir, 'generation_config.json');
  const json = await readJsonFile(file, false);
  return parseGenerationConfig(json ?? {}, file);
}

/** A token id field (number, list or absent) as a list. */
export function tokenIdList(value: number | number[] | null | undefined): number[] {
  if (value === null || value === undefined) return [];
  return Array.isArray(value) ? [...value] : [value];
}
