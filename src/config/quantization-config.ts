/**
 * `quantization_config` of a pre-quantised checkpoint (at the top level of config.json and/or inside
 * `llm_config`): AWQ "gemm" 4-bit with zero points, as AutoAWQ and LMDeploy `lite auto_awq` write it, and
 * GPTQ 4-bit without act-order, as AutoGPTQ / optimum write it. Each LLM linear X is stored as X.qweight /
 * X.qzeros / X.scales (see models/awq.ts, models/gptq.ts).
 */
import { z } from 'zod';
import { InternVLError } from '../errors.js';
import { BLOCK_SIZES } from '../onnx/quantize.js';
import { configError, expected } from './config-errors.js';

export const SUPPORTED_QUANTIZATION =
  'awq (version "gemm", 4 bits, zero_point true), gptq (4 bits, desc_act false, checkpoint_format "gptq" or "gptq_v2")';

const quantizationConfigSchema = z.looseObject(
  {
    quant_method: z.string({ error: expected('a quantisation method name') }),
    version: z.string({ error: expected('a version name') }).default('gemm'),
    bits: z.number({ error: expected('a number of bits') }).default(4),
    w_bit: z.number({ error: expected('a number of bits') }).optional(),
    group_size: z.number({ error: expected('a group size') }).optional(),
    q_group_size: z.number({ error: expected('a group size') }).optional(),
    zero_point: z.boolean({ error: expected('true or false') }).default(true),
    desc_act: z.boolean({ error: expected('true or false') }).default(false),
    checkpoint_format: z.string({ error: expected('a format name') }).default('gptq'),
  },
  { error: expected('an object') },
);

/** A 4-bit checkpoint with `groupSize` input features per scale and zero point. */
export type LlmQuantization =
  | { method: 'awq'; groupSize: number }
  /** GPTQ: the stored zero points are the real ones minus `zeroPointOffset` (1 in the original format). */
  | { method: 'gptq'; groupSize: number; zeroPointOffset: 0 | 1 };

function unsupported(sourceName: string, field: string, what: string): never {
  throw new InternVLError(
    'UNSUPPORTED',
    `${sourceName}: ${field}: ${what} is not supported (supported: ${SUPPORTED_QUANTIZATION})`,
  );
}

function parseOne(json: unknown, sourceName: string, field: string): LlmQuantization {
  const r = quantizationConfigSchema.safeParse(json);
  if (!r.success) throw configError(sourceName, r.error, field.split('.'));
  const q = r.data;
  const method = q.quant_method.toLowerCase();
  if (method !== 'awq' && method !== 'gptq') {
    unsupported(sourceName, `${field}.quant_method`, JSON.stringify(q.quant_method));
  }
  const bits = q.w_bit ?? q.bits;
  if (bits !== 4) unsupported(sourceName, `${field}.bits`, `${bits}-bit ${method.toUpperCase()}`);
  const groupSize = q.group_size ?? q.q_group_size;
  if (groupSize === undefined) {
    throw new InternVLError('BAD_CONFIG', `${sourceName}: ${field}.group_size: required field is missing`);
  }
  if (!BLOCK_SIZES.includes(groupSize)) {
    unsupported(
      sourceName,
      `${field}.group_size`,
      `group size ${groupSize} (the int4 kernel takes ${BLOCK_SIZES.join(', ')})`,
    );
  }
  if (method === 'gptq') {
    if (q.desc_act) unsupported(sourceName, `${field}.desc_act`, 'act-order GPTQ (desc_act true)');
    const format = q.checkpoint_format.toLowerCase();
    if (format !== 'gptq' && format !== 'gptq_v2') {
      unsupported(
        sourceName,
        `${field}.checkpoint_format`,
        `GPTQ format ${JSON.stringify(q.checkpoint_format)}`,
      );
    }
    return { method: 'gptq', groupSize, zeroPointOffset: format === 'gptq' ? 1 : 0 };
  }
  if (q.version.toLowerCase() !== 'gemm') {
    unsupported(sourceName, `${field}.version`, `AWQ version ${JSON.stringify(q.version)}`);
  }
  if (!q.zero_point) unsupported(sourceName, `${field}.zero_point`, 'AWQ without zero points');
  return { method: 'awq', groupSize };
}

/**
 * The LLM's quantisation, from `llm_config.quantization_config` and/or the top-level
 * `quantization_config` of a config.json (they must agree when both are there); null when neither is.
 */
export function parseLlmQuantization(
  configJson: Record<string, unknown>,
  sourceName = 'config.json',
): LlmQuantization | null {
  const llm = configJson.llm_config as Record<string, unknown> | undefined;
  const inLlm = llm?.quantization_config;
  const top = configJson.quantization_config;
  const fromLlm = inLlm == null ? null : parseOne(inLlm, sourceName, 'llm_config.quantization_config');
  const fromTop = top == null ? null : parseOne(top, sourceName, 'quantization_config');
  if (fromLlm && fromTop && JSON.stringify(fromLlm) !== JSON.stringify(fromTop)) {
    throw new InternVLError(
      'BAD_CONFIG',
      `${sourceName}: quantization_config (${describeQuantization(fromTop)}) differs from llm_config.quantization_config (${describeQuantization(fromLlm)})`,
    );
  }
  return fromLlm ?? fromTop;
}

/**
 * The quantisation of a parsed config's LLM (validated when the config was parsed); null for 16-bit.
 * Takes the parsed ModelConfig (config/model-config.ts), whose quantization fields it reads.
 */
export function llmQuantization(config: { llm_config: object }): LlmQuantization | null {
  return parseLlmQuantization(config as unknown as Record<string, unknown>);
}

/** "awq, group size 128" */
export function describeQuantization(q: LlmQuantization): string {
  return `${q.method}, group size ${q.groupSize}`;
}
