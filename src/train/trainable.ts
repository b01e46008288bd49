/**
 * Which parameters train: the stages' and freeze flags' trainable sets, the LoRA targets and their
 * adapters, and the weight-decay groups.
 */
import type { ModelConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { DECODER_ARCHITECTURES } from '../models/registry.js';
import { loraParameterNames } from './param-graph.js';
import { keyedRandom, uniform } from './random.js';

export type TrainingStage = 1 | 1.5 | 2;

/** The official freeze flags; a stage sets their defaults, explicit values override. */
export interface FreezeOptions {
  freezeLlm?: boolean;
  freezeBackbone?: boolean;
  freezeMlp?: boolean;
  /** k ≠ 0: ViT encoder layers[k:] are trainable even with a frozen backbone (negative k: the last |k|). */
  unfreezeVitLayers?: number;
  unfreezeLmHead?: boolean;
}

/** LoRA adapters of rank r and alpha 2r, like the official `use_llm_lora r` / `use_backbone_lora r`. */
export interface LoraOptions {
  rank: number;
  /** Dropout on the adapter input (official scripts: 0.05); default 0. */
  dropout?: number;
}

export interface TrainableSetOptions extends FreezeOptions {
  /** With LoRA the whole LLM base is frozen (PEFT's get_peft_model); only the adapters train there. */
  llmLora?: LoraOptions;
  /**
   * LoRA on InternViT's attn.qkv, attn.proj, mlp.fc1 and mlp.fc2 (`use_backbone_lora r`); the whole ViT
   * base is then frozen and only its adapters train.
   */
  vitLora?: LoraOptions;
}

export interface Parameter {
  shape: number[];
  dtype: string;
  data: Float32Array;
}

export interface LoraSetup {
  rank: number;
  scale: number;
  dropout: number;
  /** Adapted checkpoint weights, in checkpoint order. */
  targets: string[];
}

export function isVisionParameter(name: string): boolean {
  return name.startsWith('vision_model.');
}
export function isProjectorParameter(name: string): boolean {
  return name.startsWith('mlp1.');
}
export function isLmHeadParameter(name: string): boolean {
  return DECODER_ARCHITECTURES.some((arch) => arch.lmHeadName === name);
}

/** LLM Linear weights that `use_llm_lora` adapts: the `loraTargets` of an architecture's layers. */
export function isLoraTarget(name: string): boolean {
  const m = /\.layers\.(\d+)\.(.+)\.weight$/.exec(name);
  if (!m) return false;
  const [, layer, module] = m;
  return DECODER_ARCHITECTURES.some(
    (arch) =>
      arch.loraTargets.includes(module) && name === `${arch.layerPrefix(Number(layer))}${module}.weight`,
  );
}

const VIT_LORA_TARGET = /^vision_model\.encoder\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])\.weight$/;

/** InternViT Linear weights that `use_backbone_lora` adapts (the official wrap_backbone_lora targets). */
export function isVitLoraTarget(name: string): boolean {
  return VIT_LORA_TARGET.test(name);
}

/**
 * Parameters the HF Trainer puts in its no-decay group: biases, and the weights of normalisation
 * layers (get_decay_parameter_names excludes nn.LayerNorm parameters and names containing "bias";
 * the RMSNorm weights follow newer transformers releases, which also exclude norm layers by name).
 * `mlp1.0` is the projector's LayerNorm.
 */
export function excludedFromWeightDecay(name: string): boolean {
  if (name.includes('bias')) return true;
  if (name.startsWith('mlp1.0.')) return true;
  return /(^|\.)[^.]*norm[^.]*\.weight$/i.test(name);
}

/** The checkpoint names that train under a stage and freeze flags (internvl_chat_finetune.py semantics). */
export function trainableParameters(
  names: readonly string[],
  config: ModelConfig,
  stage: TrainingStage,
  flags: TrainableSetOptions = {},
): string[] {
  if (stage !== 1 && stage !== 1.5 && stage !== 2) {
    throw new InternVLError('BAD_INPUT', `stage must be 1, 1.5 or 2, got ${JSON.stringify(stage)}`);
  }
  const lora = flags.llmLora !== undefined;
  const freezeLlm = lora || (flags.freezeLlm ?? stage !== 2);
  const freezeBackbone = flags.vitLora !== undefined || (flags.freezeBackbone ?? stage === 1);
  const freezeMlp = flags.freezeMlp ?? false;
  const layers = config.vision_config.num_hidden_layers;
  const k = flags.unfreezeVitLayers ?? 0;
  const firstUnfrozen = k === 0 ? layers : k < 0 ? Math.max(0, layers + k) : k;
  const vitLayer = (name: string) => /^vision_model\.encoder\.layers\.(\d+)\./.exec(name);
  return names.filter((name) => {
    if (isVisionParameter(name)) {
      if (!freezeBackbone) return true;
      const m = vitLayer(name);
      return m !== null && Number(m[1]) >= firstUnfrozen;
    }
    if (isProjectorParameter(name)) return !freezeMlp;
    if (isLmHeadParameter(name) && flags.unfreezeLmHead && !lora) return true;
    return !freezeLlm;
  });
}

/**
 * Adds zero-initialised B and kaiming-uniform A (PEFT: kaiming_uniform_(a=√5), i.e. U(±1/√in)) for
 * every LoRA target of the checkpoint; A is seeded by the run seed and the weight name.
 */
export function setUpLora(
  order: readonly string[],
  params: Map<string, Parameter>,
  options: LoraOptions,
  seed: number,
  option: 'llmLora' | 'vitLora',
): LoraSetup {
  const { rank } = options;
  const dropout = options.dropout ?? 0;
  if (!Number.isInteger(rank) || rank < 1) {
    throw new InternVLError('BAD_INPUT', `${option}.rank must be a positive integer, got ${rank}`);
  }
  if (!(dropout >= 0 && dropout < 1)) {
    throw new InternVLError('BAD_INPUT', `${option}.dropout must be in [0, 1), got ${dropout}`);
  }
  const targets = order.filter(option === 'llmLora' ? isLoraTarget : isVitLoraTarget);
  if (targets.length === 0) {
    throw new InternVLError(
      'BAD_CHECKPOINT',
      option === 'llmLora'
        ? 'LoRA: the checkpoint has no decoder Linear layers to adapt'
        : 'LoRA: the checkpoint has no InternViT attn.qkv / attn.proj / mlp.fc1 / mlp.fc2 layers to adapt',
    );
  }
  for (const w of targets) {
    const [out, inFeatures] = params.get(w)!.shape;
    const names = loraParameterNames(w);
    params.set(names.a, {
      shape: [rank, inFeatures],
      dtype: 'F32',
      data: uniform(rank * inFeatures, 1 / Math.sqrt(inFeatures), keyedRandom(seed, 'lora_A', w)),
    });
    params.set(names.b, { shape: [out, rank], dtype: 'F32', data: new Float32Array(out * rank) });
  }
  return { rank, scale: (2 * rank) / rank, dropout, targets };
}
