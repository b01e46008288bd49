/**
 * Fields of newer InternVL configs (InternVL3, InternVL3.5, the MPO releases) that describe variants this
 * engine does not run: mixture-of-experts blocks and sliding-window layers. When they are off (as in every
 * dense checkpoint: `moe_config: null`, `vision_config.use_moe: false`, `layer_types` all
 * "full_attention") they are ignored; when on, loading stops with an UNSUPPORTED error naming the field.
 */
import { InternVLError } from '../errors.js';

const MOE_ARCHITECTURE = /moe|mixtral|gptoss|gpt_oss|deepseek/i;

function unsupported(sourceName: string, field: string, message: string): never {
  throw new InternVLError('UNSUPPORTED', `${sourceName}: ${field}: ${message}`);
}

/** True for LLM architecture names of mixture-of-experts models (Qwen3MoeForCausalLM, GptOssForCausalLM, …). */
export function isMoeArchitecture(name: string): boolean {
  return MOE_ARCHITECTURE.test(name);
}

type Json = Record<string, unknown>;
const asObject = (value: unknown): Json | undefined =>
  typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Json) : undefined;

/** Throws UNSUPPORTED when a config turns on a MoE or sliding-window variant (see the module comment). */
export function checkDenseVariant(top: Json, sourceName: string): void {
  const llm = asObject(top.llm_config) ?? {};
  const vision = asObject(top.vision_config) ?? {};
  const moe = 'mixture-of-experts (MoE) variants are not supported; only dense LLMs and ViTs load';
  if (vision.use_moe === true) unsupported(sourceName, 'vision_config.use_moe', `true: ${moe}`);
  for (const [field, value] of [
    ['moe_config', top.moe_config],
    ['llm_config.moe_config', llm.moe_config],
  ] as const) {
    if (value !== undefined && value !== null) unsupported(sourceName, field, `set: ${moe}`);
  }
  if (llm.use_moe === true) unsupported(sourceName, 'llm_config.use_moe', `true: ${moe}`);
  const arch = Array.isArray(llm.architectures) ? llm.architectures[0] : undefined;
  if (typeof arch === 'string' && isMoeArchitecture(arch)) {
    unsupported(sourceName, 'llm_config.architectures[0]', `${JSON.stringify(arch)} is a ${moe}`);
  }
  if (llm.use_sliding_window === true) {
    unsupported(
      sourceName,
      'llm_config.use_sliding_window',
      'true: sliding-window attention is not supported',
    );
  }
  if (Array.isArray(llm.layer_types)) {
    const other = llm.layer_types.findIndex((t) => t !== 'full_attention');
    if (other >= 0) {
      unsupported(
        sourceName,
        `llm_config.layer_types[${other}]`,
        `${JSON.stringify(llm.layer_types[other])}: only "full_attention" layers are supported`,
      );
    }
  }
}
