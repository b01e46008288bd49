import { z } from 'zod';
import { InternVLError } from '../errors.js';
import { configError, expected } from './config-errors.js';
import { internVLChatJsonFromHf, isTransformersInternVL } from './hf-config.js';
import { parseLlmQuantization } from './quantization-config.js';
import { checkDenseVariant } from './variant-checks.js';

export { configError, expected } from './config-errors.js';

export const positiveInt = () => {
  const error = expected('a positive integer');
  return z.number({ error }).int({ error }).positive({ error });
};
export const nonNegativeInt = () => {
  const error = expected('a non-negative integer');
  return z.number({ error }).int({ error }).nonnegative({ error });
};
export const integer = () => {
  const error = expected('an integer');
  return z.number({ error }).int({ error });
};
export const positiveNumber = () => {
  const error = expected('a positive number');
  return z.number({ error }).positive({ error });
};
export const nonNegativeNumber = () => {
  const error = expected('a non-negative number');
  return z.number({ error }).nonnegative({ error });
};
export const bool = () => z.boolean({ error: expected('true or false') });
const tokenIds = () =>
  z.union([nonNegativeInt(), z.array(nonNegativeInt())], {
    error: expected('a token id or a list of token ids'),
  });

/** `vision_config` (InternVisionConfig); defaults are the config class's (InternViT-6B shaped). */
export const visionConfigSchema = z.looseObject(
  {
    architectures: z.array(z.string()).optional(),
    model_type: z.string().optional(),
    num_channels: positiveInt().default(3),
    patch_size: positiveInt().default(14),
    image_size: positiveInt().default(224),
    qkv_bias: bool().default(false),
    hidden_size: positiveInt().default(3200),
    num_attention_heads: positiveInt().default(25),
    intermediate_size: positiveInt().default(12800),
    qk_normalization: bool().default(true),
    num_hidden_layers: positiveInt().default(48),
    use_flash_attn: bool().default(true),
    hidden_act: z.enum(['gelu'], { error: expected('"gelu"') }).default('gelu'),
    norm_type: z
      .enum(['layer_norm', 'rms_norm'], { error: expected('"layer_norm" or "rms_norm"') })
      .default('rms_norm'),
    layer_norm_eps: positiveNumber().default(1e-6),
    dropout: nonNegativeNumber().default(0),
    drop_path_rate: nonNegativeNumber().default(0),
    attention_dropout: nonNegativeNumber().default(0),
    initializer_range: nonNegativeNumber().default(0.02),
    initializer_factor: nonNegativeNumber().default(0.1),
  },
  { error: expected('an object') },
);
export type VisionConfig = KnownFields<z.infer<typeof visionConfigSchema>>;

const commonLlmFields = {
  architectures: z.array(z.string(), { error: expected('a list of architecture names') }).min(1),
  hidden_size: positiveInt(),
  intermediate_size: positiveInt(),
  num_hidden_layers: positiveInt(),
  num_attention_heads: positiveInt(),
  num_key_value_heads: positiveInt().optional(),
  head_dim: positiveInt().optional(),
  vocab_size: positiveInt(),
  hidden_act: z.enum(['silu'], { error: expected('"silu"') }).default('silu'),
  rms_norm_eps: positiveNumber().default(1e-6),
  rope_theta: positiveNumber().default(10000),
  tie_word_embeddings: bool().default(false),
  bos_token_id: tokenIds().nullable().optional(),
  eos_token_id: tokenIds().nullable().optional(),
  pad_token_id: tokenIds().nullable().optional(),
};

/** transformers' `rope_scaling`: an object with `type` or `rope_type` and `factor`, or null. */
export const ropeScalingObject = () =>
  z
    .looseObject(
      {
        type: z.string().optional(),
        rope_type: z.string().optional(),
        factor: positiveNumber().optional(),
      },
      { error: expected('an object or null') },
    )
    .nullable()
    .default(null);

/**
 * The llm_config schema of one LLM architecture (its models/ file declares it): the fields every
 * architecture shares, `model_type`, and `fields`, its own (with their defaults). Each must give
 * `max_position_embeddings` a default.
 */
export function llmConfigSchema<T extends z.ZodRawShape>(
  modelType: string,
  architecture: string,
  fields: T & { max_position_embeddings: z.ZodType<number> },
) {
  return z.looseObject({
    ...commonLlmFields,
    model_type: z
      .literal(modelType, { error: expected(`"${modelType}" for ${architecture}`) })
      .default(modelType),
    ...fields,
  });
}

const llmConfigBaseSchema = z.looseObject({
  ...commonLlmFields,
  model_type: z.string(),
  max_position_embeddings: positiveInt(),
});

/** The declared fields of a loose object type (extra JSON keys stay at runtime but are not typed). */
type KnownFields<T> = { [K in keyof T as string extends K ? never : K]: T[K] };
/** After parsing, `num_key_value_heads` and `head_dim` are always filled in. */
type Completed<T> = Omit<KnownFields<T>, 'num_key_value_heads' | 'head_dim'> & {
  num_key_value_heads: number;
  head_dim: number;
};
/** A parsed llm_config as its architecture's schema `S` types it. */
export type ParsedLlmConfig<S extends z.ZodType> = Completed<z.infer<S>>;
/**
 * A parsed llm_config: the fields every architecture has. The architecture's own fields are there too,
 * parsed by its schema; its models/ file reads them through its ParsedLlmConfig type.
 */
export type LlmConfig = ParsedLlmConfig<typeof llmConfigBaseSchema>;

/** What parsing needs from the LLM architectures (models/registry.ts supplies it). */
export interface LlmConfigSchemas {
  /** The llm_config schema of an `llm_config.architectures[0]` name; undefined when not supported. */
  schemaOf(architecture: string): z.ZodType | undefined;
  /** The supported `architectures[0]` names. */
  supported: readonly string[];
}

/** Top level of config.json (InternVLChatConfig); defaults are the config class's. */
export const modelConfigTopSchema = z.looseObject(
  {
    architectures: z
      .array(z.string(), { error: expected('a list of architecture names') })
      .refine((a) => a.includes('InternVLChatModel'), { error: 'must include "InternVLChatModel"' }),
    model_type: z.string().optional(),
    // The config class has no default; every InternVL 2.5 checkpoint uses this template.
    template: z.string({ error: expected('a template name') }).default('internvl2_5'),
    system_message: z
      .string({ error: expected('a string') })
      .nullable()
      .optional(),
    downsample_ratio: positiveNumber().default(0.5),
    ps_version: z.enum(['v1', 'v2'], { error: expected('"v1" or "v2"') }).default('v1'),
    select_layer: integer().default(-1),
    force_image_size: positiveInt().nullable().optional(),
    dynamic_image_size: bool().default(false),
    use_thumbnail: bool().default(false),
    min_dynamic_patch: positiveInt().default(1),
    max_dynamic_patch: positiveInt().default(6),
    pad2square: bool().default(false),
    tie_word_embeddings: bool().default(false),
    hidden_size: positiveInt().optional(),
    vision_config: visionConfigSchema,
    llm_config: z.looseObject(
      {
        architectures: z.array(z.string(), { error: expected('a list of architecture names') }).min(1, {
          error: 'expected a non-empty list of architecture names',
        }),
      },
      { error: expected('an object') },
    ),
  },
  { error: expected('a JSON object') },
);

/**
 * How the checkpoint names its tensors: the original InternVLChatModel layout, or transformers'
 * InternVLForConditionalGeneration (`model.vision_tower.*`, …; read through models/hf-layout.ts).
 */
export type CheckpointLayout = 'internvl_chat' | 'transformers';

export type ModelConfig = Omit<
  KnownFields<z.infer<typeof modelConfigTopSchema>>,
  'llm_config' | 'vision_config'
> & {
  vision_config: VisionConfig;
  llm_config: LlmConfig;
  /** Absent means 'internvl_chat'. */
  checkpoint_layout?: CheckpointLayout;
};

/** A companion file of config.json that a layout reads (the transformers layout's preprocessor_config.json). */
export interface ConfigSideFile {
  json: unknown;
  sourceName: string;
}

function fail(sourceName: string, field: string, message: string): never {
  throw new InternVLError('BAD_CONFIG', `${sourceName}: ${field}: ${message}`);
}

function completeLlm<T extends z.infer<typeof llmConfigBaseSchema>>(
  llm: T,
  sourceName: string,
): Completed<T> {
  const heads = llm.num_attention_heads;
  const kvHeads = llm.num_key_value_heads ?? heads;
  if (heads % kvHeads !== 0) {
    fail(
      sourceName,
      'llm_config.num_key_value_heads',
      `${kvHeads} does not divide num_attention_heads ${heads}`,
    );
  }
  if (llm.head_dim === undefined && llm.hidden_size % heads !== 0) {
    fail(
      sourceName,
      'llm_config.hidden_size',
      `${llm.hidden_size} is not divisible by num_attention_heads ${heads}`,
    );
  }
  return { ...llm, num_key_value_heads: kvHeads, head_dim: llm.head_dim ?? llm.hidden_size / heads };
}

/**
 * Parses and validates the JSON of an InternVLChatModel config.json, or of a transformers-native
 * InternVLForConditionalGeneration one (config/hf-config.ts; `preprocessor` is its
 * preprocessor_config.json when there is one). Pure (no file access); `sourceName` is used in error
 * messages, e.g. "config.json" or its full path.
 */
export function parseModelConfigWith(
  schemas: LlmConfigSchemas,
  json: unknown,
  sourceName = 'config.json',
  preprocessor?: ConfigSideFile,
): ModelConfig {
  if (isTransformersInternVL(json)) {
    const config = parseModelConfigWith(
      schemas,
      internVLChatJsonFromHf(json, sourceName, preprocessor),
      sourceName,
    );
    return { ...config, checkpoint_layout: 'transformers' };
  }
  const top = modelConfigTopSchema.safeParse(json);
  if (!top.success) throw configError(sourceName, top.error);
  checkDenseVariant(top.data, sourceName);
  parseLlmQuantization(top.data, sourceName);
  const arch = top.data.llm_config.architectures[0];
  const schema = schemas.schemaOf(arch);
  if (!schema) {
    throw new InternVLError(
      'UNSUPPORTED',
      `${sourceName}: llm_config.architectures[0] is ${JSON.stringify(arch)}; supported LLM architectures: ${schemas.supported.join(', ')}`,
    );
  }
  const r = schema.safeParse(top.data.llm_config);
  if (!r.success) throw configError(sourceName, r.error, ['llm_config']);
  const llm = completeLlm(r.data as z.infer<typeof llmConfigBaseSchema>, sourceName) as LlmConfig;
  const config: ModelConfig = { ...top.data, llm_config: llm };
  checkConsistency(config, sourceName);
  return config;
}

function checkConsistency(config: ModelConfig, sourceName: string): void {
  const vision = config.vision_config;
  if (vision.hidden_size % vision.num_attention_heads !== 0) {
    fail(
      sourceName,
      'vision_config.hidden_size',
      `${vision.hidden_size} is not divisible by num_attention_heads ${vision.num_attention_heads}`,
    );
  }
  const size = imageSize(config);
  if (size % vision.patch_size !== 0) {
    fail(
      sourceName,
      'vision_config.patch_size',
      `${vision.patch_size} does not divide the image size ${size}`,
    );
  }
  const grid = size / vision.patch_size;
  if (!Number.isInteger(grid * config.downsample_ratio) || !Number.isInteger(1 / config.downsample_ratio)) {
    fail(
      sourceName,
      'downsample_ratio',
      `${config.downsample_ratio} does not evenly shuffle the ${grid}x${grid} patch grid`,
    );
  }
  if (config.min_dynamic_patch > config.max_dynamic_patch) {
    fail(
      sourceName,
      'min_dynamic_patch',
      `${config.min_dynamic_patch} is larger than max_dynamic_patch ${config.max_dynamic_patch}`,
    );
  }
  // hidden_states holds the embeddings plus one entry per layer, so valid indices are -(L+1)..L.
  const layers = vision.num_hidden_layers;
  if (config.select_layer < -(layers + 1) || config.select_layer > layers) {
    fail(sourceName, 'select_layer', `${config.select_layer} is outside -${layers + 1}..${layers}`);
  }
}

/** Side of a square image tile: `force_image_size` if set, else `vision_config.image_size`. */
export function imageSize(config: ModelConfig): number {
  return config.force_image_size ?? config.vision_config.image_size;
}

/** LLM tokens per image tile: int((image_size / patch_size)^2 * downsample_ratio^2), 256 for InternVL 2.5. */
export function numImageTokens(config: ModelConfig): number {
  const grid = Math.floor(imageSize(config) / config.vision_config.patch_size);
  return Math.trunc(grid * grid * config.downsample_ratio ** 2);
}

/** Reads and validates `<dir>/config.json` (and a transformers layout's preprocessor_config.json). */
export async function loadModelConfigWith(schemas: LlmConfigSchemas, dir: string): Promise<ModelConfig> {
  const file = await joinPath(dir, 'config.json');
  const json = await readJsonFile(file, true);
  if (!isTransformersInternVL(json)) return parseModelConfigWith(schemas, json, file);
  const side = await joinPath(dir, 'preprocessor_config.json');
  const preprocessor = await readJsonFile(side, false);
  return parseModelConfigWith(
    schemas,
    json,
    file,
    preprocessor === undefined ? undefined : { json: preprocessor, sourceName: side },
  );
}

/**
 * path.join, loaded on first use: the file readers here run only in Node, while the parsers in this
 * module are part of the isomorphic core and must load in a browser.
 */
export async function joinPath(...parts: string[]): Promise<string> {
  const { join } = await import('node:path');
  return join(...parts);
}

/** Reads a JSON file; a missing file is NOT_FOUND (or undefined when `required` is false). */
export async function readJsonFile(file: string, required: true): Promise<unknown>;
export async function readJsonFile(file: string, required: false): Promise<unknown | undefined>;
export async function readJsonFile(file: string, required: boolean): Promise<unknown | undefined> {
  let text: string;
  try {
    const { readFile } = await import('node:fs/promises');
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      if (!required) return undefined;
      throw new InternVLError('NOT_FOUND', `${file} does not exist`, { cause: err });
    }
    throw new InternVLError('BAD_CONFIG', `${file}: cannot read: ${(err as Error).message}`, { cause: err });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InternVLError('BAD_CONFIG', `${file}: not valid JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
}
