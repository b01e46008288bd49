/**
 * Progressive scaling: the ViT of one InternVL checkpoint (vision_model.* and vision_config) joined
 * to another checkpoint's LLM with a freshly initialised mlp1 of the right shapes, ready for stage 1.
 */
import { copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { float32ToBf16, float32ToFloat16 } from '../io/float-formats.js';
import { Checkpoint } from '../io/safetensors.js';
import type { SafetensorsDType } from '../io/safetensors-format.js';
import { type TensorSpec, writeSafetensorsStreaming } from '../io/safetensors-write.js';
import { loadModelConfig, parseModelConfig } from '../models/model-config.js';
import { keyedRandom, uniform } from './random.js';

export interface TransplantOptions {
  /** Checkpoint whose ViT is copied. */
  from: string;
  /** Checkpoint whose LLM (and tokenizer, template settings) is kept. */
  into: string;
  out: string;
  /** Seed of the new mlp1 (default 0). */
  seed?: number;
}

export interface TransplantResult {
  /** Shapes of the new projector tensors. */
  mlp1: Record<string, number[]>;
  visionTensors: number;
  llmTensors: number;
}

interface ProjectorTensor {
  shape: number[];
  data: Float32Array;
}

const TRAINER_FILES = new Set(['trainer_state.json', 'optimizer_state.safetensors']);

/**
 * The new projector, as InternVLChatModel builds mlp1 (LayerNorm(Cin), Linear(Cin, D), GELU,
 * Linear(D, D)) with PyTorch's default init: LayerNorm weight 1 and bias 0, Linear weight and bias
 * U(±1/√fan_in) (kaiming_uniform_(a=√5)); seeded, not torch's generator.
 */
export function freshProjector(
  inFeatures: number,
  hidden: number,
  seed: number,
): Map<string, ProjectorTensor> {
  const linear = (name: string, fanIn: number, fanOut: number): [string, ProjectorTensor][] => {
    const bound = 1 / Math.sqrt(fanIn);
    return [
      [
        `${name}.weight`,
        { shape: [fanOut, fanIn], data: uniform(fanOut * fanIn, bound, keyedRandom(seed, `${name}.weight`)) },
      ],
      [`${name}.bias`, { shape: [fanOut], data: uniform(fanOut, bound, keyedRandom(seed, `${name}.bias`)) }],
    ];
  };
  return new Map<string, ProjectorTensor>([
    ['mlp1.0.weight', { shape: [inFeatures], data: new Float32Array(inFeatures).fill(1) }],
    ['mlp1.0.bias', { shape: [inFeatures], data: new Float32Array(inFeatures) }],
    ...linear('mlp1.1', inFeatures, hidden),
    ...linear('mlp1.3', hidden, hidden),
  ]);
}

async function readJson(file: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new InternVLError('BAD_CONFIG', `${file}: cannot read the config (${(err as Error).message})`, {
      cause: err,
    });
  }
}

function encode(data: Float32Array, dtype: SafetensorsDType): ArrayBufferView {
  if (dtype === 'BF16') return float32ToBf16(data);
  if (dtype === 'F16') return float32ToFloat16(data);
  return data;
}

/** Writes the joined checkpoint to `out` (config.json, model.safetensors, the LLM side's other files). */
export async function transplantVit(options: TransplantOptions): Promise<TransplantResult> {
  const from = path.resolve(options.from);
  const into = path.resolve(options.into);
  const out = path.resolve(options.out);
  if (out === from || out === into) {
    throw new InternVLError('BAD_INPUT', `--out ${out} must be a new folder, not --from or --into`);
  }
  await loadModelConfig(from);
  const target = await loadModelConfig(into);
  const fromJson = await readJson(path.join(from, 'config.json'));
  const intoJson = await readJson(path.join(into, 'config.json'));
  const joinedJson = { ...intoJson, vision_config: fromJson.vision_config };
  const joined = parseModelConfig(joinedJson, `${out}/config.json`);

  const scale = Math.round(1 / joined.downsample_ratio);
  const inFeatures = joined.vision_config.hidden_size * scale * scale;
  const hidden = target.llm_config.hidden_size;
  const vit = await Checkpoint.open(from);
  const llm = await Checkpoint.open(into);
  try {
    const visionNames = vit.names().filter((n) => n.startsWith('vision_model.'));
    if (visionNames.length === 0)
      throw new InternVLError('BAD_CHECKPOINT', `${vit.source}: no vision_model.* tensors`);
    const llmNames = llm.names().filter((n) => !n.startsWith('vision_model.') && !n.startsWith('mlp1.'));
    if (!llmNames.some((n) => n.startsWith('language_model.'))) {
      throw new InternVLError('BAD_CHECKPOINT', `${llm.source}: no language_model.* tensors`);
    }
    const projector = freshProjector(inFeatures, hidden, options.seed ?? 0);
    const existing = llm.has('mlp1.1.weight') ? llm.info('mlp1.1.weight').dtype : undefined;
    const projectorDtype: SafetensorsDType =
      existing === 'F32' || existing === 'F16' || existing === 'BF16' ? existing : 'BF16';
    const specs: TensorSpec[] = [
      ...visionNames.map((name) => ({ name, dtype: vit.info(name).dtype, shape: vit.info(name).shape })),
      ...[...projector].map(([name, t]) => ({ name, dtype: projectorDtype, shape: t.shape })),
      ...llmNames.map((name) => ({ name, dtype: llm.info(name).dtype, shape: llm.info(name).shape })),
    ];
    await rm(out, { recursive: true, force: true });
    const temp = `${out}.tmp-${process.pid}`;
    await rm(temp, { recursive: true, force: true });
    await mkdir(temp, { recursive: true });
    for (const entry of await readdir(into, { withFileTypes: true })) {
      if (!entry.isFile() || entry.name === 'config.json' || TRAINER_FILES.has(entry.name)) continue;
      if (entry.name.endsWith('.safetensors') || entry.name === 'model.safetensors.index.json') continue;
      await copyFile(path.join(into, entry.name), path.join(temp, entry.name));
    }
    await writeFile(path.join(temp, 'config.json'), `${JSON.stringify(joinedJson, null, 2)}\n`);
    await writeSafetensorsStreaming(
      path.join(temp, 'model.safetensors'),
      specs,
      async (i) => {
        const { name } = specs[i];
        const fresh = projector.get(name);
        if (fresh) return encode(fresh.data, projectorDtype);
        return name.startsWith('vision_model.') ? vit.readBytes(name) : llm.readBytes(name);
      },
      { format: 'pt' },
    );
    await rename(temp, out);
    return {
      mlp1: Object.fromEntries([...projector].map(([n, t]) => [n, t.shape])),
      visionTensors: visionNames.length,
      llmTensors: llmNames.length,
    };
  } finally {
    await vit.close();
    await llm.close();
  }
}
