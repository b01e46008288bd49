/**
 * Random-weight InternVL 2.5 / 3 / 3.5 checkpoints at the real shapes (random-shapes.ts) (config.json, tensor names, special-token
 * ids), so loading, conversion, benchmarks and load tests run without downloading weights. The
 * tokenizer (random-tokenizer.ts) has the real vocabulary size and special-token ids, and every id
 * decodes to visible text; the weights are bf16 drawn from a seeded generator, so a seed always gives
 * the same files. Weights are generated and written a chunk at a time, in shards like the published
 * checkpoints, so even the 78B shape needs little memory; or they can be left out.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ModelConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { writeSafetensorsStreaming } from '../io/safetensors-write.js';
import { internVitDimsFromConfig, internVitTensorSpecs } from '../models/internvit.js';
import { parseModelConfig } from '../models/model-config.js';
import { projectorTensorSpecs } from '../models/projector.js';
import { decoderDimsFromConfig, decoderTensorSpecs } from '../models/registry.js';
import { RANDOM_SHAPES, randomConfigJson } from './random-shapes.js';
import { tokenizerFiles, tokenizerLayout } from './random-tokenizer.js';

export { RANDOM_SHAPES } from './random-shapes.js';

/** How a tensor's random values are drawn: uniform around `center` with half-width `spread`. */
interface RandomTensor {
  name: string;
  shape: number[];
  center: number;
  spread: number;
}

/** Norm weights near 1, layer scales near 0.1, matrices scaled by fan-in, the rest small. */
function distribution(name: string, shape: number[]): { center: number; spread: number } {
  if (/\.ls[12]$/.test(name)) return { center: 0.1, spread: 0.05 };
  if (/norm[^.]*\.weight$/.test(name) || name === 'mlp1.0.weight') return { center: 1, spread: 0.1 };
  if (name.endsWith('patch_embedding.weight')) return { center: 0, spread: 0.1 };
  if (/embed_tokens|tok_embeddings/.test(name)) return { center: 0, spread: 0.05 };
  if (shape.length === 2) return { center: 0, spread: Math.sqrt(3 / shape[1]) };
  return { center: 0, spread: 0.02 };
}

/** Every tensor the engine expects for `config` (the model files' own lists), with its distribution. */
function randomTensors(config: ModelConfig): RandomTensor[] {
  const vit = internVitDimsFromConfig(config.vision_config);
  const llm = decoderDimsFromConfig(config);
  const projector = {
    inputSize: vit.hiddenSize / config.downsample_ratio ** 2,
    llmHiddenSize: llm.hiddenSize,
  };
  return [
    ...internVitTensorSpecs(vit, vit.numLayers),
    ...projectorTensorSpecs(projector),
    ...decoderTensorSpecs(llm),
  ].map(({ name, shape }) => ({ name, shape, ...distribution(name, shape) }));
}

/** xorshift128+ seeded through splitmix64: fast, deterministic uniform 32-bit values. */
class Random {
  private s0: bigint;
  private s1: bigint;
  constructor(seed: number) {
    let z = BigInt.asUintN(64, BigInt(seed) + 0x9e3779b97f4a7c15n);
    const next = () => {
      z = BigInt.asUintN(64, z + 0x9e3779b97f4a7c15n);
      let x = z;
      x = BigInt.asUintN(64, (x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n);
      x = BigInt.asUintN(64, (x ^ (x >> 27n)) * 0x94d049bb133111ebn);
      return x ^ (x >> 31n);
    };
    this.s0 = next();
    this.s1 = next();
  }
  /** 32-bit state pairs for a fast per-tensor stream. */
  seeds(): [number, number, number, number] {
    const a = this.s0;
    const b = this.s1;
    let x = a;
    const y = b;
    this.s0 = y;
    x ^= BigInt.asUintN(64, x << 23n);
    this.s1 = x ^ y ^ (x >> 17n) ^ (y >> 26n);
    const words = [a & 0xffffffffn, a >> 32n, b & 0xffffffffn, b >> 32n].map(Number);
    return [words[0] | 1, words[1], words[2], words[3]];
  }
}

/** Values generated per chunk (8 MB of bf16), so no tensor is whole in memory. */
const CHUNK_VALUES = 1 << 22;

/** bf16 values uniform in [center − spread, center + spread] (xoshiro128** per tensor), in chunks. */
function* randomBf16(
  count: number,
  center: number,
  spread: number,
  seeds: [number, number, number, number],
): Generator<Uint16Array> {
  let [a, b, c, d] = seeds;
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const scale = (2 * spread) / 4294967296;
  for (let start = 0; start < count; start += CHUNK_VALUES) {
    const out = new Uint16Array(Math.min(CHUNK_VALUES, count - start));
    for (let i = 0; i < out.length; i++) {
      const r = Math.imul(((Math.imul(b, 5) << 7) | (Math.imul(b, 5) >>> 25)) >>> 0, 9) >>> 0;
      const t = b << 9;
      c ^= a;
      d ^= b;
      b ^= c;
      a ^= d;
      c ^= t;
      d = (d << 11) | (d >>> 21);
      f[0] = center - spread + r * scale;
      // Round to nearest even bf16.
      const bits = u[0];
      out[i] = (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
    }
    yield out;
  }
}

/** transformers' default max_shard_size ("5GB"). */
export const DEFAULT_MAX_SHARD_BYTES = 5e9;

export interface CreateRandomOptions {
  shape: string;
  out: string;
  seed?: number;
  /** Replace the layer counts (for small, fast test models with the real widths). */
  layers?: { vit?: number; llm?: number };
  /** false: write config, generation config and tokenizer only (default true). */
  weights?: boolean;
  /** Bytes per safetensors shard (default 5e9); a checkpoint that fits one shard is model.safetensors. */
  maxShardBytes?: number;
}

/** Groups tensors, in order, into shards of at most `max` bytes (a larger tensor gets a shard alone). */
function shardGroups(sizes: number[], max: number): number[][] {
  const groups: number[][] = [];
  let bytes = 0;
  sizes.forEach((size, i) => {
    const last = groups.at(-1);
    if (last && bytes + size <= max) {
      last.push(i);
      bytes += size;
    } else {
      groups.push([i]);
      bytes = size;
    }
  });
  return groups;
}

const INDEX_FILE = 'model.safetensors.index.json';

/** Removes weight files of an earlier run, so the folder never mixes old weights with a new config. */
async function removeOldWeights(dir: string): Promise<void> {
  const old = (await readdir(dir)).filter(
    (f) => f === 'model.safetensors' || f === INDEX_FILE || /^model-\d+-of-\d+\.safetensors$/.test(f),
  );
  await Promise.all(old.map((f) => rm(path.join(dir, f), { force: true })));
}

/** Whether `dir` holds a complete checkpoint's weights (model.safetensors, or the shards' index, written last). */
export function hasWeights(dir: string): boolean {
  return existsSync(path.join(dir, 'model.safetensors')) || existsSync(path.join(dir, INDEX_FILE));
}

/** Writes a random checkpoint folder; returns the folder. */
export async function createRandomCheckpoint(options: CreateRandomOptions): Promise<string> {
  const shape = RANDOM_SHAPES[options.shape];
  if (!shape) {
    throw new InternVLError(
      'BAD_INPUT',
      `unknown shape ${JSON.stringify(options.shape)}; known shapes: ${Object.keys(RANDOM_SHAPES).join(', ')}`,
    );
  }
  const maxShard = options.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
  if (!(maxShard > 0)) {
    throw new InternVLError('BAD_INPUT', `maxShardBytes must be a positive number, got ${maxShard}`);
  }
  const vit = { ...shape.vit, layers: options.layers?.vit ?? shape.vit.layers };
  const llm = { ...shape.llm, layers: options.layers?.llm ?? shape.llm.layers };
  const layout = tokenizerLayout(llm.arch, llm.vocab);
  await mkdir(options.out, { recursive: true });
  await removeOldWeights(options.out);
  const json = (value: unknown) => `${JSON.stringify(value, null, 2)}\n`;
  const config = randomConfigJson(vit, llm, layout);
  await writeFile(path.join(options.out, 'config.json'), json(config));
  await writeFile(
    path.join(options.out, 'generation_config.json'),
    json({ eos_token_id: layout.generationEos, pad_token_id: layout.pad }),
  );
  for (const [file, content] of Object.entries(tokenizerFiles(layout))) {
    await writeFile(path.join(options.out, file), json(content));
  }
  if (options.weights === false) return options.out;

  const seed = options.seed ?? 0;
  const random = new Random(seed);
  const specs = randomTensors(parseModelConfig(config));
  const seeds = specs.map(() => random.seeds());
  const count = (s: RandomTensor) => s.shape.reduce((x, y) => x * y, 1);
  const groups = shardGroups(
    specs.map((s) => 2 * count(s)),
    maxShard,
  );
  const names = groups.map((_, i) =>
    groups.length === 1
      ? 'model.safetensors'
      : `model-${String(i + 1).padStart(5, '0')}-of-${String(groups.length).padStart(5, '0')}.safetensors`,
  );
  const metadata = { format: 'pt', generator: `internvl-ts create-random ${options.shape} seed ${seed}` };
  for (const [g, group] of groups.entries()) {
    await writeSafetensorsStreaming(
      path.join(options.out, names[g]),
      group.map((i) => ({ name: specs[i].name, dtype: 'BF16' as const, shape: specs[i].shape })),
      (k) => {
        const s = specs[group[k]];
        return randomBf16(count(s), s.center, s.spread, seeds[group[k]]);
      },
      metadata,
    );
  }
  if (groups.length > 1) {
    const weightMap = Object.fromEntries(
      groups.flatMap((group, g) => group.map((i) => [specs[i].name, names[g]])),
    );
    const totalSize = specs.reduce((sum, s) => sum + 2 * count(s), 0);
    await writeFile(
      path.join(options.out, INDEX_FILE),
      json({ metadata: { total_size: totalSize }, weight_map: weightMap }),
    );
  }
  return options.out;
}
