/**
 * The transformers-native layout (`InternVLForConditionalGeneration`, `model_type: "internvl"`, the
 * OpenGVLab `-hf` repos): its config.json (`text_config`, `vision_config` with transformers' names,
 * `downsample_ratio`, `vision_feature_layer`, …) and its preprocessor_config.json
 * (GotOcr2ImageProcessor: tile size, min/max tiles, normalisation) are rewritten here into the InternVLChatConfig JSON of the original layout,
 * which then parses as usual. The model is the same; only names differ (see transformers'
 * configuration_internvl.py and convert_internvl_weights_to_hf.py, read for this): the weights are
 * renamed by models/hf-layout.ts.
 */
import { z } from 'zod';
import { InternVLError } from '../errors.js';
import { configError, expected } from './config-errors.js';

const int = () => z.number({ error: expected('an integer') }).int({ error: expected('an integer') });
const posInt = () => int().positive({ error: expected('a positive integer') });
const flag = () => z.boolean({ error: expected('true or false') });
/** An int or transformers' [height, width] pair (then both must be equal: square tiles). */
const side = () =>
  z.union([posInt(), z.tuple([posInt(), posInt()])], { error: expected('an integer or [height, width]') });

/** InternVLVisionConfig; defaults are the config class's. */
const hfVisionSchema = z.looseObject(
  {
    hidden_size: posInt().default(1024),
    num_hidden_layers: posInt().default(24),
    num_attention_heads: posInt().default(16),
    intermediate_size: posInt().default(4096),
    attention_bias: flag().default(false),
    use_qk_norm: flag().default(false),
    hidden_act: z.enum(['gelu'], { error: expected('"gelu"') }).default('gelu'),
    norm_type: z
      .enum(['layer_norm', 'rms_norm'], { error: expected('"layer_norm" or "rms_norm"') })
      .default('layer_norm'),
    layer_norm_eps: z
      .number({ error: expected('a positive number') })
      .positive()
      .default(1e-6),
    image_size: side().default(448),
    patch_size: side().default(14),
    num_channels: posInt().default(3),
    use_absolute_position_embeddings: flag().default(true),
    use_mean_pooling: flag().default(true),
  },
  { error: expected('an object') },
);

/** InternVLConfig; defaults are the config class's. */
const hfTopSchema = z.looseObject(
  {
    architectures: z.array(z.string(), { error: expected('a list of architecture names') }).optional(),
    vision_config: hfVisionSchema.default(hfVisionSchema.parse({})),
    text_config: z.looseObject({ model_type: z.string().default('qwen2') }, { error: expected('an object') }),
    image_token_id: int().nonnegative().default(151667),
    image_seq_length: posInt().optional(),
    downsample_ratio: z
      .number({ error: expected('a positive number') })
      .positive()
      .default(0.5),
    projector_hidden_act: z.enum(['gelu'], { error: expected('"gelu"') }).default('gelu'),
    vision_feature_layer: int().default(-1),
    vision_feature_select_strategy: z
      .enum(['default'], { error: expected('"default" (the class token dropped)') })
      .default('default'),
    tie_word_embeddings: flag().optional(),
  },
  { error: expected('a JSON object') },
);

/** GotOcr2ImageProcessor's preprocessor_config.json, as far as the tiling and normalisation go. */
const preprocessorSchema = z.looseObject(
  {
    size: z
      .looseObject({ height: posInt(), width: posInt() }, { error: expected('{height, width}') })
      .optional(),
    min_patches: posInt().default(1),
    max_patches: posInt().default(12),
    do_normalize: flag().default(true),
    do_rescale: flag().default(true),
    image_mean: z.array(z.number()).length(3).optional(),
    image_std: z.array(z.number()).length(3).optional(),
  },
  { error: expected('a JSON object') },
);

const IMAGENET = { image_mean: [0.485, 0.456, 0.406], image_std: [0.229, 0.224, 0.225] };

/** transformers' causal-LM class of each text_config.model_type. */
const TEXT_ARCHITECTURES: Record<string, string> = {
  qwen2: 'Qwen2ForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
  llama: 'LlamaForCausalLM',
  internlm3: 'InternLM3ForCausalLM',
};

/** True for a transformers-native InternVL config.json. */
export function isTransformersInternVL(json: unknown): boolean {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return false;
  const top = json as { model_type?: unknown; architectures?: unknown };
  return (
    top.model_type === 'internvl' ||
    (Array.isArray(top.architectures) && top.architectures.includes('InternVLForConditionalGeneration'))
  );
}

function unsupported(sourceName: string, field: string, message: string): never {
  throw new InternVLError('UNSUPPORTED', `${sourceName}: ${field}: ${message}`);
}

function squareSide(value: number | [number, number], sourceName: string, field: string): number {
  if (typeof value === 'number') return value;
  if (value[0] !== value[1])
    unsupported(sourceName, field, `[${value.join(', ')}]: only square sizes are supported`);
  return value[0];
}

/**
 * The InternVLChatConfig JSON (original layout) of a transformers-native config.json, with
 * preprocessor_config.json's tile counts (`min_patches`, `max_patches`) when given.
 * Throws BAD_CONFIG or UNSUPPORTED naming the field of a variant the original layout cannot express.
 */
export function internVLChatJsonFromHf(
  json: unknown,
  sourceName: string,
  preprocessor?: { json: unknown; sourceName: string },
): Record<string, unknown> {
  const parsed = hfTopSchema.safeParse(json);
  if (!parsed.success) throw configError(sourceName, parsed.error);
  const top = parsed.data;
  const vision = top.vision_config;
  if (!vision.use_mean_pooling) {
    unsupported(
      sourceName,
      'vision_config.use_mean_pooling',
      'false (a final LayerNorm on the ViT) is not supported',
    );
  }
  if (!vision.use_absolute_position_embeddings) {
    unsupported(
      sourceName,
      'vision_config.use_absolute_position_embeddings',
      'false: InternViT needs its position embeddings',
    );
  }
  const imageSize = squareSide(vision.image_size, sourceName, 'vision_config.image_size');
  const patchSize = squareSide(vision.patch_size, sourceName, 'vision_config.patch_size');
  const grid = Math.floor(imageSize / patchSize);
  const tokens = Math.trunc(grid * grid * top.downsample_ratio ** 2);
  if (top.image_seq_length !== undefined && top.image_seq_length !== tokens) {
    throw new InternVLError(
      'BAD_CONFIG',
      `${sourceName}: image_seq_length: ${top.image_seq_length}, but a ${imageSize} px tile of ${patchSize} px patches shuffled by ${top.downsample_ratio} gives ${tokens} tokens`,
    );
  }
  const text = top.text_config as Record<string, unknown> & { model_type: string };
  // transformers builds the text model from text_config.model_type (the converter keeps the original
  // llm_config's `architectures`, e.g. InternLM3ForCausalLM under model_type "llama").
  const known = TEXT_ARCHITECTURES[text.model_type];
  const architectures = known
    ? [known]
    : Array.isArray(text.architectures)
      ? text.architectures
      : [text.model_type];
  const tie =
    typeof text.tie_word_embeddings === 'boolean'
      ? text.tie_word_embeddings
      : (top.tie_word_embeddings ?? false);
  const tiling = preprocessor
    ? preprocessorTiling(preprocessor.json, preprocessor.sourceName, imageSize)
    : undefined;
  const out: Record<string, unknown> = {
    architectures: ['InternVLChatModel'],
    model_type: 'internvl_chat',
    // The processor's chat template is ChatML as the original internvl2_5 template.
    template: 'internvl2_5',
    downsample_ratio: top.downsample_ratio,
    // transformers' pixel_shuffle is the original's with ps_version "v2" (the final permute included).
    ps_version: 'v2',
    select_layer: top.vision_feature_layer,
    force_image_size: imageSize,
    // InternVLProcessor passes crop_to_patches true to the image processor whatever its file says; with
    // more than one tile it adds a thumbnail, as the original's dynamic_preprocess with use_thumbnail.
    dynamic_image_size: true,
    use_thumbnail: true,
    min_dynamic_patch: tiling?.min ?? 1,
    max_dynamic_patch: tiling?.max ?? 12,
    tie_word_embeddings: tie,
    vision_config: {
      architectures: ['InternVisionModel'],
      hidden_size: vision.hidden_size,
      num_hidden_layers: vision.num_hidden_layers,
      num_attention_heads: vision.num_attention_heads,
      intermediate_size: vision.intermediate_size,
      qkv_bias: vision.attention_bias,
      qk_normalization: vision.use_qk_norm,
      hidden_act: vision.hidden_act,
      norm_type: vision.norm_type,
      layer_norm_eps: vision.layer_norm_eps,
      image_size: imageSize,
      patch_size: patchSize,
      num_channels: vision.num_channels,
    },
    llm_config: { ...text, architectures, tie_word_embeddings: tie },
  };
  const quantization = (json as Record<string, unknown>).quantization_config;
  if (quantization !== undefined) out.quantization_config = quantization;
  return out;
}

function preprocessorTiling(
  json: unknown,
  sourceName: string,
  imageSize: number,
): { min: number; max: number } {
  const parsed = preprocessorSchema.safeParse(json);
  if (!parsed.success) throw configError(sourceName, parsed.error);
  const p = parsed.data;
  if (p.size && (p.size.height !== imageSize || p.size.width !== imageSize)) {
    throw new InternVLError(
      'BAD_CONFIG',
      `${sourceName}: size: ${p.size.height}x${p.size.width} differs from the model's ${imageSize} px tiles`,
    );
  }
  if (!p.do_normalize || !p.do_rescale) {
    unsupported(sourceName, p.do_normalize ? 'do_rescale' : 'do_normalize', 'false is not supported');
  }
  for (const key of ['image_mean', 'image_std'] as const) {
    const values = p[key];
    if (values?.some((v, i) => Math.abs(v - IMAGENET[key][i]) > 1e-6)) {
      unsupported(
        sourceName,
        key,
        `[${values.join(', ')}]: only the ImageNet normalisation [${IMAGENET[key].join(', ')}] is supported`,
      );
    }
  }
  if (p.min_patches > p.max_patches) {
    throw new InternVLError(
      'BAD_CONFIG',
      `${sourceName}: min_patches: ${p.min_patches} is larger than max_patches ${p.max_patches}`,
    );
  }
  return { min: p.min_patches, max: p.max_patches };
}
