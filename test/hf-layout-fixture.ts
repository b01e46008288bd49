/**
 * A converter written for the tests from transformers' convert_internvl_weights_to_hf.py (its regex
 * renames applied in order, `attn.qkv` split into q/k/v rows, `get_internvl_config`'s config fields),
 * independent of src/: turns an original-layout golden model into a transformers-native checkpoint.
 * `modern` names the tensors as transformers ≥ 4.52 saves them (`model.vision_tower.*`, `lm_head.weight`).
 */
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Checkpoint } from '../src/io/safetensors.js';
import { type TensorToWrite, writeSafetensors } from '../src/io/safetensors-write.js';

const VISION_RENAMES: [RegExp, string][] = [
  [/vision_model/g, 'vision_tower'],
  [/layers/g, 'layer'],
  [/class_embedding/g, 'cls_token'],
  [/position_embedding/g, 'position_embeddings'],
  [/patch_embedding/g, 'patch_embeddings.projection'],
  [/ls(\d+)/g, 'lambda_$1'],
  [/attn\.proj/g, 'attention.projection_layer'],
  [/attn\.dropout/g, 'attention.projection_dropout'],
  [/attn/g, 'attention'],
  [/norm1/g, 'layernorm_before'],
  [/norm2/g, 'layernorm_after'],
];
const PROJECTOR_RENAMES: [RegExp, string][] = [
  [/mlp1\.0/g, 'multi_modal_projector.layer_norm'],
  [/mlp1\.1/g, 'multi_modal_projector.linear_1'],
  [/mlp1\.3/g, 'multi_modal_projector.linear_2'],
];
const MODERN_PREFIXES: [RegExp, string][] = [
  [/^language_model\.model/, 'model.language_model'],
  [/^vision_tower/, 'model.vision_tower'],
  [/^multi_modal_projector/, 'model.multi_modal_projector'],
  [/^language_model\.lm_head/, 'lm_head'],
];
const SIDE_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'generation_config.json',
];
const DROPPED_KEYS = [
  '_name_or_path',
  'auto_map',
  'use_bfloat16',
  'use_flash_attn',
  'bias',
  'drop_path_rate',
];

const rename = (name: string, rules: [RegExp, string][]) =>
  rules.reduce((n, [from, to]) => n.replace(from, to), name);

function hfName(name: string, modern: boolean): string {
  let n = name;
  if (name.startsWith('vision_model')) n = rename(name, VISION_RENAMES);
  else if (!name.startsWith('language_model')) n = rename(name, PROJECTOR_RENAMES);
  return modern ? rename(n, MODERN_PREFIXES) : n;
}

/** The transformers config.json of an original config.json (as get_internvl_config writes it). */
export function hfConfigFrom(original: Record<string, unknown>): Record<string, unknown> {
  const llm = { ...(original.llm_config as Record<string, unknown>) };
  const vision = { ...(original.vision_config as Record<string, unknown>) };
  for (const key of DROPPED_KEYS) {
    delete llm[key];
    delete vision[key];
  }
  vision.use_absolute_position_embeddings = true;
  vision.use_qk_norm = vision.qk_normalization;
  vision.attention_bias = vision.qkv_bias;
  delete vision.qk_normalization;
  delete vision.qkv_bias;
  vision.model_type = 'internvl_vision';
  const size = vision.image_size as number;
  const patch = vision.patch_size as number;
  vision.image_size = [size, size];
  vision.patch_size = [patch, patch];
  return {
    architectures: ['InternVLForConditionalGeneration'],
    model_type: 'internvl',
    downsample_ratio: original.downsample_ratio,
    image_seq_length: 256,
    image_token_id: 151667,
    projector_hidden_act: 'gelu',
    vision_feature_layer: original.select_layer,
    vision_feature_select_strategy: 'default',
    text_config: { ...llm, use_cache: true },
    vision_config: vision,
  };
}

/** Writes the transformers-layout twin of the golden model in `goldenDir` into `outDir`. */
export async function writeHfCheckpoint(
  goldenDir: string,
  outDir: string,
  modern: boolean,
): Promise<string[]> {
  const src = await Checkpoint.open(goldenDir);
  const tensors: Record<string, TensorToWrite> = {};
  try {
    for (const name of src.names()) {
      const info = src.info(name);
      const bytes = await src.readBytes(name);
      const target = hfName(name, modern);
      if (!/attention\.qkv\./.test(target)) {
        tensors[target] = { dtype: info.dtype, shape: info.shape, data: bytes };
        continue;
      }
      // Rows [0, C) are q, [C, 2C) k, [2C, 3C) v.
      const rows = info.shape[0] / 3;
      const rowBytes = bytes.byteLength / info.shape[0];
      ['q_proj', 'k_proj', 'v_proj'].forEach((proj, i) => {
        tensors[target.replace('attention.qkv', `attention.${proj}`)] = {
          dtype: info.dtype,
          shape: [rows, ...info.shape.slice(1)],
          data: bytes.slice(i * rows * rowBytes, (i + 1) * rows * rowBytes),
        };
      });
    }
  } finally {
    await src.close();
  }
  await writeSafetensors(path.join(outDir, 'model.safetensors'), tensors);
  const original = JSON.parse(readFileSync(path.join(goldenDir, 'config.json'), 'utf8'));
  writeFileSync(path.join(outDir, 'config.json'), JSON.stringify(hfConfigFrom(original), null, 1));
  writeFileSync(
    path.join(outDir, 'preprocessor_config.json'),
    JSON.stringify({
      image_processor_type: 'GotOcr2ImageProcessorFast',
      crop_to_patches: false,
      do_normalize: true,
      do_rescale: true,
      rescale_factor: 1 / 255,
      image_mean: [0.485, 0.456, 0.406],
      image_std: [0.229, 0.224, 0.225],
      min_patches: original.min_dynamic_patch,
      max_patches: original.max_dynamic_patch,
      size: { height: original.force_image_size, width: original.force_image_size },
    }),
  );
  for (const f of SIDE_FILES) {
    if (existsSync(path.join(goldenDir, f))) copyFileSync(path.join(goldenDir, f), path.join(outDir, f));
  }
  return Object.keys(tensors);
}
