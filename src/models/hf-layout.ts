/**
 * A WeightSource that reads a transformers-native checkpoint (InternVLForConditionalGeneration) under
 * the original InternVLChatModel names, so the same model builders load it. The names follow
 * transformers' convert_internvl_weights_to_hf.py:
 *
 *   vision_model.embeddings.class_embedding        vision_tower.embeddings.cls_token
 *   vision_model.embeddings.patch_embedding.*      vision_tower.embeddings.patch_embeddings.projection.*
 *   vision_model.embeddings.position_embedding     vision_tower.embeddings.position_embeddings
 *   vision_model.encoder.layers.i.norm1 / norm2    vision_tower.encoder.layer.i.layernorm_before / _after
 *   ….attn.qkv.{weight,bias}                       ….attention.{q,k,v}_proj.* (rows concatenated q|k|v)
 *   ….attn.proj / q_norm / k_norm                  ….attention.projection_layer / q_norm / k_norm
 *   ….ls1 / ls2, ….mlp.fc1 / fc2                   ….lambda_1 / lambda_2, ….mlp.fc1 / fc2
 *   mlp1.0 / mlp1.1 / mlp1.3                       multi_modal_projector.layer_norm / linear_1 / linear_2
 *   language_model.model.*                         language_model.model.* (as saved by transformers < 4.52)
 *   language_model.lm_head.weight                  language_model.lm_head.weight
 *
 * and, as transformers ≥ 4.52 saves them, `model.vision_tower.*`, `model.multi_modal_projector.*`,
 * `model.language_model.*` (no `.model.`) and `lm_head.weight`. Which of the two a checkpoint uses is
 * read from its tensor names. The int32 tensors of packed (AWQ, GPTQ) LLM linears are renamed the same
 * way, so packedWeights can sit on top of this source.
 */
import type { PackedTensorSource } from './packed-weights.js';

/** Where an original name lives in the transformers checkpoint: one tensor, or q|k|v to concatenate. */
type HfTensor = { name: string } | { parts: string[] };

const VIT_LAYER_RENAMES: [RegExp, string][] = [
  [/^norm1\./, 'layernorm_before.'],
  [/^norm2\./, 'layernorm_after.'],
  [/^attn\.proj\./, 'attention.projection_layer.'],
  [/^attn\.(q_norm|k_norm)\./, 'attention.$1.'],
  [/^ls(\d)$/, 'lambda_$1'],
  [/^mlp\./, 'mlp.'],
];
const PROJECTOR = { '0': 'layer_norm', '1': 'linear_1', '3': 'linear_2' } as const;

/** The transformers name(s) of an original name; `modern` is the `model.`-prefixed spelling. */
export function hfTensorFor(name: string, modern: boolean): HfTensor | undefined {
  const top = modern ? 'model.' : '';
  if (name.startsWith('language_model.model.')) {
    return { name: `${modern ? 'model.language_model.' : 'language_model.model.'}${name.slice(21)}` };
  }
  if (name.startsWith('language_model.lm_head.')) {
    return { name: modern ? name.slice('language_model.'.length) : name };
  }
  const mlp1 = /^mlp1\.([013])\.(.+)$/.exec(name);
  if (mlp1) {
    return { name: `${top}multi_modal_projector.${PROJECTOR[mlp1[1] as '0' | '1' | '3']}.${mlp1[2]}` };
  }
  const vit = `${top}vision_tower.`;
  const embedding =
    /^vision_model\.embeddings\.(class_embedding|position_embedding|patch_embedding\.(weight|bias))$/.exec(
      name,
    );
  if (embedding) {
    const hf =
      embedding[1] === 'class_embedding'
        ? 'cls_token'
        : embedding[1] === 'position_embedding'
          ? 'position_embeddings'
          : `patch_embeddings.projection.${embedding[2]}`;
    return { name: `${vit}embeddings.${hf}` };
  }
  const layer = /^vision_model\.encoder\.layers\.(\d+)\.(.+)$/.exec(name);
  if (!layer) return undefined;
  const prefix = `${vit}encoder.layer.${layer[1]}.`;
  const qkv = /^attn\.qkv\.(weight|bias)$/.exec(layer[2]);
  if (qkv) return { parts: ['q', 'k', 'v'].map((p) => `${prefix}attention.${p}_proj.${qkv[1]}`) };
  for (const [from, to] of VIT_LAYER_RENAMES) {
    if (from.test(layer[2])) return { name: prefix + layer[2].replace(from, to) };
  }
  return undefined;
}

/** True when the checkpoint's tensor names are transformers' (either spelling) rather than the original's. */
export function isHfLayout(names: readonly string[]): boolean {
  return names.some((n) => /^(model\.)?(vision_tower|multi_modal_projector)\./.test(n));
}

/** The source described in the module comment over a checkpoint whose tensors are `names`. */
export function hfLayoutWeights(base: PackedTensorSource, names: readonly string[]): PackedTensorSource {
  const modern = names.some(
    (n) => n.startsWith('model.vision_tower.') || n.startsWith('model.language_model.'),
  );
  const lookup = (name: string): HfTensor => hfTensorFor(name, modern) ?? { name };
  const single = (name: string): string | undefined => {
    const t = lookup(name);
    return 'name' in t ? t.name : undefined;
  };
  const concatenated = async (parts: string[], read: (n: string) => Promise<Float32Array>) => {
    const arrays = await Promise.all(parts.map(read));
    const out = new Float32Array(arrays.reduce((n, a) => n + a.length, 0));
    let offset = 0;
    for (const a of arrays) {
      out.set(a, offset);
      offset += a.length;
    }
    return out;
  };
  return {
    has: (name) => {
      const t = lookup(name);
      return 'name' in t ? base.has(t.name) : t.parts.every((p) => base.has(p));
    },
    shape: (name) => {
      const t = lookup(name);
      if ('name' in t) return base.shape(t.name);
      const shapes = t.parts.map((p) => base.shape(p));
      return [shapes.reduce((n, s) => n + s[0], 0), ...shapes[0].slice(1)];
    },
    float32: async (name) => {
      const t = lookup(name);
      return 'name' in t ? base.float32(t.name) : concatenated(t.parts, (p) => base.float32(p));
    },
    int32: (name) => base.int32(single(name) ?? name),
    bfloat16: async (name) => {
      const hf = single(name);
      return hf === undefined ? undefined : base.bfloat16?.(hf);
    },
    rows: (name) => {
      const hf = single(name);
      return hf === undefined ? undefined : base.rows?.(hf);
    },
    checkpointName: (name) => {
      const t = lookup(name);
      return 'name' in t ? t.name : t.parts.join(' + ');
    },
  };
}
