/**
 * Random-weight InternVL 2.5 checkpoints at the real shapes (config.json, tensor names, special-token
 * ids), so loading, benchmarks and load tests run without downloading weights. The tokenizer is
 * byte-level (one id per UTF-8 byte) with the real special-token ids; the weights are bf16 drawn from
 * a seeded generator, so a seed always gives the same files.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { type ModelConfig, parseModelConfig } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { writeSafetensorsStreaming } from '../io/safetensors.js';
import { internVitDimsFromConfig, internVitTensorSpecs } from '../models/internvit.js';
import { projectorTensorSpecs } from '../models/projector.js';
import { decoderDimsFromConfig, decoderTensorSpecs } from '../models/registry.js';

interface LlmShape {
  arch: 'qwen2' | 'internlm2';
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
  vocab: number;
  rmsEps: number;
}

interface VitShape {
  hidden: number;
  layers: number;
  heads: number;
  intermediate: number;
  style: '300M' | '6B';
}

/** Real shapes (spec §1.3–1.4) of the sizes a CPU can hold. */
export const RANDOM_SHAPES: Record<string, { vit: VitShape; llm: LlmShape }> = {
  'InternVL2_5-1B': {
    vit: { hidden: 1024, layers: 24, heads: 16, intermediate: 4096, style: '300M' },
    llm: {
      arch: 'qwen2',
      hidden: 896,
      layers: 24,
      heads: 14,
      kvHeads: 2,
      intermediate: 4864,
      vocab: 151674,
      rmsEps: 1e-6,
    },
  },
  'InternVL2_5-2B': {
    vit: { hidden: 1024, layers: 24, heads: 16, intermediate: 4096, style: '300M' },
    llm: {
      arch: 'internlm2',
      hidden: 2048,
      layers: 24,
      heads: 16,
      kvHeads: 8,
      intermediate: 8192,
      vocab: 92553,
      rmsEps: 1e-5,
    },
  },
  'InternVL2_5-4B': {
    vit: { hidden: 1024, layers: 24, heads: 16, intermediate: 4096, style: '300M' },
    llm: {
      arch: 'qwen2',
      hidden: 2048,
      layers: 36,
      heads: 16,
      kvHeads: 2,
      intermediate: 11008,
      vocab: 151674,
      rmsEps: 1e-6,
    },
  },
  'InternVL2_5-8B': {
    vit: { hidden: 1024, layers: 24, heads: 16, intermediate: 4096, style: '300M' },
    llm: {
      arch: 'internlm2',
      hidden: 4096,
      layers: 32,
      heads: 32,
      kvHeads: 8,
      intermediate: 14336,
      vocab: 92553,
      rmsEps: 1e-5,
    },
  },
};

const INTERNVL_TOKENS = [
  '<img>',
  '</img>',
  '<IMG_CONTEXT>',
  '<quad>',
  '</quad>',
  '<ref>',
  '</ref>',
  '<box>',
  '</box>',
];

interface Specials {
  /** Id of byte 0; bytes b map to byteBase + b. */
  byteBase: number;
  tokens: [string, number][];
  bos?: number;
  eos: number;
  pad: number;
  generationEos: number[];
}

function specialsFor(llm: LlmShape): Specials {
  if (llm.arch === 'qwen2') {
    const base = 151665;
    return {
      byteBase: 0,
      tokens: [
        ['<|endoftext|>', 151643],
        ['<|im_start|>', 151644],
        ['<|im_end|>', 151645],
        ...INTERNVL_TOKENS.map((t, i): [string, number] => [t, base + i]),
      ],
      eos: 151645,
      pad: 151643,
      generationEos: [151644, 151645, 151643],
    };
  }
  const base = 92544;
  return {
    byteBase: 3,
    tokens: [
      ['<unk>', 0],
      ['<s>', 1],
      ['</s>', 2],
      ['<|im_end|>', 92542],
      ['<|im_start|>', 92543],
      ...INTERNVL_TOKENS.map((t, i): [string, number] => [t, base + i]),
    ],
    bos: 1,
    eos: 2,
    pad: 2,
    generationEos: [92542, 92543],
  };
}

/** GPT-2's byte → printable-character map used by byte-level BPE vocabularies. */
function byteToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const out: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    out[b] = printable.includes(b) ? String.fromCharCode(b) : String.fromCharCode(256 + extra++);
  }
  return out;
}

function tokenizerFiles(specials: Specials): Record<string, unknown> {
  const chars = byteToUnicode();
  const vocab: Record<string, number> = {};
  chars.forEach((c, b) => {
    vocab[c] = specials.byteBase + b;
  });
  const added = specials.tokens.map(([content, id]) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: { ...byteLevel, trim_offsets: false },
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
  const name = (id: number) => specials.tokens.find(([, i]) => i === id)?.[0];
  const tokenizerConfig = {
    added_tokens_decoder: Object.fromEntries(added.map(({ id, ...rest }) => [String(id), rest])),
    bos_token: specials.bos === undefined ? null : name(specials.bos),
    eos_token: name(specials.eos),
    pad_token: name(specials.pad),
    add_bos_token: specials.bos !== undefined,
    add_eos_token: false,
    model_max_length: 8192,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
  return {
    'tokenizer.json': tokenizer,
    'tokenizer_config.json': tokenizerConfig,
    'special_tokens_map.json': {
      eos_token: name(specials.eos),
      pad_token: name(specials.pad),
      ...(specials.bos === undefined ? {} : { bos_token: name(specials.bos) }),
      additional_special_tokens: INTERNVL_TOKENS,
    },
  };
}

function configJson(vit: VitShape, llm: LlmShape, specials: Specials): Record<string, unknown> {
  const llmConfig =
    llm.arch === 'qwen2'
      ? {
          architectures: ['Qwen2ForCausalLM'],
          model_type: 'qwen2',
          hidden_size: llm.hidden,
          intermediate_size: llm.intermediate,
          num_hidden_layers: llm.layers,
          num_attention_heads: llm.heads,
          num_key_value_heads: llm.kvHeads,
          max_position_embeddings: 32768,
          rms_norm_eps: llm.rmsEps,
          rope_theta: 1000000.0,
          rope_scaling: { factor: 2.0, rope_type: 'dynamic', type: 'dynamic' },
          sliding_window: 32768,
          use_sliding_window: false,
          hidden_act: 'silu',
          vocab_size: llm.vocab,
          tie_word_embeddings: false,
          bos_token_id: specials.pad,
          eos_token_id: specials.eos,
          torch_dtype: 'bfloat16',
        }
      : {
          architectures: ['InternLM2ForCausalLM'],
          model_type: 'internlm2',
          hidden_size: llm.hidden,
          intermediate_size: llm.intermediate,
          num_hidden_layers: llm.layers,
          num_attention_heads: llm.heads,
          num_key_value_heads: llm.kvHeads,
          max_position_embeddings: 32768,
          rms_norm_eps: llm.rmsEps,
          rope_theta: 1000000,
          rope_scaling: { type: 'dynamic', factor: 2.0 },
          bias: false,
          hidden_act: 'silu',
          vocab_size: llm.vocab,
          tie_word_embeddings: false,
          bos_token_id: specials.bos,
          eos_token_id: specials.eos,
          pad_token_id: specials.pad,
          torch_dtype: 'bfloat16',
        };
  return {
    architectures: ['InternVLChatModel'],
    model_type: 'internvl_chat',
    template: 'internvl2_5',
    downsample_ratio: 0.5,
    ps_version: 'v2',
    select_layer: -1,
    force_image_size: 448,
    dynamic_image_size: true,
    use_thumbnail: true,
    min_dynamic_patch: 1,
    max_dynamic_patch: 12,
    pad2square: false,
    use_backbone_lora: 0,
    use_llm_lora: 0,
    tie_word_embeddings: false,
    hidden_size: llm.hidden,
    torch_dtype: 'bfloat16',
    vision_config: {
      architectures: ['InternVisionModel'],
      model_type: 'intern_vit_6b',
      hidden_size: vit.hidden,
      num_hidden_layers: vit.layers,
      num_attention_heads: vit.heads,
      intermediate_size: vit.intermediate,
      image_size: 448,
      patch_size: 14,
      num_channels: 3,
      qkv_bias: vit.style === '300M',
      qk_normalization: vit.style === '6B',
      norm_type: vit.style === '300M' ? 'layer_norm' : 'rms_norm',
      layer_norm_eps: 1e-6,
      hidden_act: 'gelu',
      drop_path_rate: 0.0,
      initializer_factor: vit.style === '300M' ? 1.0 : 0.1,
      initializer_range: 0.02,
      torch_dtype: 'bfloat16',
    },
    llm_config: llmConfig,
  };
}

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

/** Fills bf16 values uniform in [center − spread, center + spread] (xoshiro128** per tensor). */
function randomBf16(
  count: number,
  center: number,
  spread: number,
  seeds: [number, number, number, number],
): Uint16Array {
  let [a, b, c, d] = seeds;
  const out = new Uint16Array(count);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const scale = (2 * spread) / 4294967296;
  for (let i = 0; i < count; i++) {
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
  return out;
}

export interface CreateRandomOptions {
  shape: string;
  out: string;
  seed?: number;
  /** Replace the layer counts (for small, fast test models with the real widths). */
  layers?: { vit?: number; llm?: number };
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
  const vit = { ...shape.vit, layers: options.layers?.vit ?? shape.vit.layers };
  const llm = { ...shape.llm, layers: options.layers?.llm ?? shape.llm.layers };
  const specials = specialsFor(llm);
  await mkdir(options.out, { recursive: true });
  const json = (value: unknown) => `${JSON.stringify(value, null, 2)}\n`;
  const config = configJson(vit, llm, specials);
  await writeFile(path.join(options.out, 'config.json'), json(config));
  await writeFile(
    path.join(options.out, 'generation_config.json'),
    json({ eos_token_id: specials.generationEos, pad_token_id: specials.pad }),
  );
  for (const [file, content] of Object.entries(tokenizerFiles(specials))) {
    await writeFile(path.join(options.out, file), json(content));
  }
  const random = new Random(options.seed ?? 0);
  const specs = randomTensors(parseModelConfig(config));
  const seeds = specs.map(() => random.seeds());
  await writeSafetensorsStreaming(
    path.join(options.out, 'model.safetensors'),
    specs.map((s) => ({ name: s.name, dtype: 'BF16' as const, shape: s.shape })),
    (index) => {
      const s = specs[index];
      return randomBf16(
        s.shape.reduce((x, y) => x * y, 1),
        s.center,
        s.spread,
        seeds[index],
      );
    },
    { format: 'pt', generator: `internvl-ts create-random ${options.shape} seed ${options.seed ?? 0}` },
  );
  return options.out;
}
