/**
 * The InternVL forward pass for training, built from primitive ONNX ops that all have gradient
 * rules (no fused inference ops): InternViT (300M and 6B style) with plain softmax attention, pixel
 * shuffle, mlp1, token embedding lookup with the image features scattered into the `<IMG_CONTEXT>`
 * rows, and a Qwen2 / InternLM2 decoder over a packed sequence (block-diagonal causal mask from the
 * sample boundaries, positions restarting at 0 per sample), ending in the weighted loss
 * Σ w·CE / Σ w over the shifted labels — or in the logits of every position.
 *
 * Every parameter is a graph input named by its checkpoint name, in checkpoint layout, so the
 * trainer can feed updated fp32 masters without rebuilding the graph and gradients come out in
 * checkpoint layout.
 */
import type { ModelConfig } from '../config/model-config.js';
import { imageSize, numImageTokens } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { decoderArchitecture } from '../models/registry.js';
import { type Graph, GraphBuilder } from '../onnx/graph.js';

/** The parts of a packed batch that fix the graph's shapes. */
export interface TrainGraphShape {
  seqLen: number;
  numTiles: number;
  /** Positions t whose next label is supervised (loss mode); ignored for logits. */
  numSupervised: number;
}

export interface TrainGraphSpec extends TrainGraphShape {
  config: ModelConfig;
  /** Checkpoint tensor shapes (all parameters the model may use). */
  paramShapes: ReadonlyMap<string, readonly number[]>;
  /** 'loss': scalar output `loss`; 'logits': output `logits` [T, vocab]. */
  mode: 'loss' | 'logits';
  /** LoRA adapters on these Linear weights (LLM, ViT): y = x·Wᵀ + scale·(dropout(x)·Aᵀ)·Bᵀ. */
  lora?: LoraGraphSpec;
  /** ViT drop-path rate of each encoder layer; layers above 0 drop residual branches per tile (loss mode only). */
  dropPathRates?: readonly number[];
}

export interface LoraGraphSpec {
  /**
   * Checkpoint names of the adapted Linear weights, each with its alpha / r and the dropout
   * probability on its input (loss mode only).
   */
  targets: ReadonlyMap<string, { scale: number; dropout: number }>;
}

/** A graph input of inverted-dropout scales (1/keep or 0) that the caller draws for each run. */
export interface NoiseInput {
  name: string;
  shape: number[];
  dropProbability: number;
}

export interface TrainGraph {
  graph: Graph;
  /** Names of the parameters the graph reads (checkpoint names, and LoRA adapter names). */
  params: string[];
  /** Random scale inputs to feed (LoRA dropout, drop-path); empty without them. */
  noise: NoiseInput[];
}

/** The adapter parameter names of a LoRA-adapted Linear weight (trainer-only, never in a saved checkpoint). */
export function loraParameterNames(weight: string): { a: string; b: string } {
  const base = weight.endsWith('.weight') ? weight.slice(0, -'.weight'.length) : weight;
  return { a: `${base}.lora_A.weight`, b: `${base}.lora_B.weight` };
}

/** Names of the non-parameter graph inputs. */
export const BATCH_INPUTS = {
  inputIds: 'input_ids',
  pixelValues: 'pixel_values',
  imageRows: 'image_rows',
  segmentIds: 'segment_ids',
  positionIds: 'position_ids',
  ropeCos: 'rope_cos',
  ropeSin: 'rope_sin',
  lossRows: 'loss_rows',
  lossTargets: 'loss_targets',
  lossWeights: 'loss_weights',
} as const;

const NEG_LARGE = -1e30;

class ModelGraph {
  readonly g = new GraphBuilder('internvl_train');
  readonly params: string[] = [];
  readonly noise: NoiseInput[] = [];
  constructor(
    private readonly shapes: ReadonlyMap<string, readonly number[]>,
    /** Rows of the decoder's [T, D] activations, the only inputs LoRA adapters see. */
    private readonly seqLen: number,
    private readonly lora?: LoraGraphSpec,
    readonly training = false,
  ) {}

  /** A float input of inverted-dropout scales, registered with its drop probability. */
  noiseInput(name: string, shape: number[], dropProbability: number): string {
    this.noise.push({ name, shape, dropProbability });
    return this.g.input(name, 'float32', shape);
  }

  has(name: string): boolean {
    return this.shapes.has(name);
  }

  /** A parameter input (registered once). */
  param(name: string): string {
    const shape = this.shapes.get(name);
    if (!shape) throw new InternVLError('BAD_CHECKPOINT', `${name}: missing from the checkpoint`);
    if (!this.params.includes(name)) {
      this.params.push(name);
      this.g.input(name, 'float32', [...shape]);
    }
    return name;
  }

  /**
   * x @ W^T (+ b) for a torch Linear weight [out, in]. `rows` are x's dimensions before the last
   * (default [T], the decoder's rows), the shape of a LoRA dropout mask.
   */
  linear(x: string, weight: string, bias?: string, rows: number[] = [this.seqLen]): string {
    const g = this.g;
    let y = g.matMul(x, g.transpose(this.param(weight), [1, 0]));
    if (bias && this.has(bias)) y = g.add(y, this.param(bias));
    const adapter = this.lora?.targets.get(weight);
    if (adapter) y = g.add(y, this.#loraDelta(x, weight, adapter, rows));
    return y;
  }

  /** scale·(dropout(x)·Aᵀ)·Bᵀ for an input x [...rows, in] (PEFT's lora.Linear). */
  #loraDelta(x: string, weight: string, adapter: { scale: number; dropout: number }, rows: number[]): string {
    const g = this.g;
    const { a, b } = loraParameterNames(weight);
    let input = x;
    if (this.training && adapter.dropout > 0) {
      const inFeatures = (this.shapes.get(weight) as readonly number[])[1];
      input = g.mul(x, this.noiseInput(`lora_dropout.${weight}`, [...rows, inFeatures], adapter.dropout));
    }
    const down = g.matMul(input, g.transpose(this.param(a), [1, 0]));
    const up = g.matMul(down, g.transpose(this.param(b), [1, 0]));
    return g.mul(up, g.scalarF32(adapter.scale));
  }

  mean(x: string): string {
    return this.g.op('ReduceMean', [x, this.g.constI64([-1])], { keepdims: { int: 1 } });
  }

  layerNorm(x: string, prefix: string, eps: number): string {
    const g = this.g;
    const xc = g.sub(x, this.mean(x));
    const variance = this.mean(g.mul(xc, xc));
    const normed = g.div(xc, g.op('Sqrt', [g.add(variance, g.scalarF32(eps))]));
    return g.add(g.mul(normed, this.param(`${prefix}.weight`)), this.param(`${prefix}.bias`));
  }

  rmsNorm(x: string, weight: string, eps: number): string {
    const g = this.g;
    const ms = this.mean(g.mul(x, x));
    return g.mul(g.div(x, g.op('Sqrt', [g.add(ms, g.scalarF32(eps))])), this.param(weight));
  }

  /** Exact GELU: 0.5·x·(1 + erf(x/√2)). */
  gelu(x: string): string {
    const g = this.g;
    const erf = g.op('Erf', [g.mul(x, g.scalarF32(Math.SQRT1_2))]);
    return g.mul(g.mul(x, g.scalarF32(0.5)), g.add(g.scalarF32(1), erf));
  }

  silu(x: string): string {
    return this.g.mul(x, this.g.sigmoid(x));
  }
}

/** Builds the training forward graph for one batch shape. */
export function buildTrainingGraph(spec: TrainGraphSpec): TrainGraph {
  const m = new ModelGraph(spec.paramShapes, spec.seqLen, spec.lora, spec.mode === 'loss');
  const g = m.g;
  const { config, seqLen: T, numTiles: N } = spec;
  const llm = config.llm_config;

  const inputIds = g.input(BATCH_INPUTS.inputIds, 'int64', [T]);
  const architecture = decoderArchitecture(llm.model_type);
  let hidden = g.gather(m.param(architecture.embeddingName), inputIds);
  if (N > 0) {
    const imageEmbeds = visionTower(m, config, N, spec.mode === 'loss' ? (spec.dropPathRates ?? []) : []);
    const rows = g.input(BATCH_INPUTS.imageRows, 'int64', [N * numImageTokens(config), 1]);
    hidden = g.op('ScatterND', [hidden, rows, imageEmbeds]);
  }
  hidden = decoder(m, config, hidden, T);

  if (spec.mode === 'logits') {
    g.output(m.linear(hidden, lmHeadName(m, config)), 'logits', 'float32', [T, llm.vocab_size]);
    return { graph: g.graph, params: m.params, noise: m.noise };
  }
  const K = spec.numSupervised;
  const rows = g.input(BATCH_INPUTS.lossRows, 'int64', [K]);
  const targets = g.input(BATCH_INPUTS.lossTargets, 'int64', [K, 1]);
  const weights = g.input(BATCH_INPUTS.lossWeights, 'float32', [K]);
  // Only rows that predict a supervised label reach the (vocabulary-sized) lm_head.
  const logits = m.linear(g.gather(hidden, rows), lmHeadName(m, config));
  const logProbs = g.op('LogSoftmax', [logits], { axis: { int: -1 } });
  const picked = g.reshape(g.op('GatherElements', [logProbs, targets], { axis: { int: 1 } }), [K]);
  const weighted = g.op('ReduceSum', [g.mul(g.op('Neg', [picked]), weights)], { keepdims: { int: 0 } });
  const total = g.op('ReduceSum', [weights], { keepdims: { int: 0 } });
  g.output(g.div(weighted, total), 'loss', 'float32', []);
  return { graph: g.graph, params: m.params, noise: m.noise };
}

function lmHeadName(m: ModelGraph, config: ModelConfig): string {
  const llm = config.llm_config;
  const architecture = decoderArchitecture(llm.model_type);
  if (llm.tie_word_embeddings) return architecture.embeddingName;
  if (m.has(architecture.lmHeadName)) return architecture.lmHeadName;
  if (config.tie_word_embeddings) return architecture.embeddingName;
  throw new InternVLError('BAD_CHECKPOINT', `${architecture.lmHeadName}: missing from the checkpoint`);
}

/** InternViT → drop CLS → pixel shuffle → mlp1; returns [N·tokensPerTile, D]. */
function visionTower(m: ModelGraph, config: ModelConfig, N: number, dropPath: readonly number[]): string {
  const g = m.g;
  const v = config.vision_config;
  const C = v.hidden_size;
  const P = v.patch_size;
  const S = imageSize(config);
  const G = S / P;
  if (Math.floor(v.image_size / P) !== G) {
    throw new InternVLError(
      'UNSUPPORTED',
      `training at image size ${S} needs a position embedding for ${G}x${G} patches; the checkpoint's is ${Math.floor(v.image_size / P)}x${Math.floor(v.image_size / P)} (resize it first)`,
    );
  }
  const layers =
    config.select_layer < 0 ? v.num_hidden_layers + 1 + config.select_layer : config.select_layer;
  const E = 'vision_model.embeddings';

  // Patch embedding as reshape + MatMul: each patch's (channel, row, col) values against the conv kernel.
  const pixels = g.input(BATCH_INPUTS.pixelValues, 'float32', [N, v.num_channels, S, S]);
  const patches = g.reshape(
    g.transpose(g.reshape(pixels, [N, v.num_channels, G, P, G, P]), [0, 2, 4, 1, 3, 5]),
    [N, G * G, v.num_channels * P * P],
  );
  const kernel = g.reshape(m.param(`${E}.patch_embedding.weight`), [C, v.num_channels * P * P]);
  const embedded = g.add(
    g.matMul(patches, g.transpose(kernel, [1, 0])),
    m.param(`${E}.patch_embedding.bias`),
  );
  const cls = g.op('Expand', [m.param(`${E}.class_embedding`), g.constI64([N, 1, C])]);
  let x = g.add(g.concat([cls, embedded], 1), m.param(`${E}.position_embedding`));

  const H = v.num_attention_heads;
  const d = C / H;
  const Lt = 1 + G * G;
  const norm = (value: string, prefix: string) =>
    v.norm_type === 'layer_norm'
      ? m.layerNorm(value, prefix, v.layer_norm_eps)
      : m.rmsNorm(value, `${prefix}.weight`, v.layer_norm_eps);
  for (let i = 0; i < layers; i++) {
    const p = `vision_model.encoder.layers.${i}`;
    // timm DropPath on each residual branch: one keep/drop draw per tile, kept branches scaled by 1/keep.
    const branch = (value: string, which: string) =>
      (dropPath[i] ?? 0) > 0
        ? g.mul(value, m.noiseInput(`drop_path.${i}.${which}`, [N, 1, 1], dropPath[i]))
        : value;
    g.within(`vit${i}`, () => {
      const h = norm(x, `${p}.norm1`);
      const qkv = m.linear(h, `${p}.attn.qkv.weight`, v.qkv_bias ? `${p}.attn.qkv.bias` : undefined, [N, Lt]);
      let q = g.slice(qkv, [0], [C], [2]);
      let k = g.slice(qkv, [C], [2 * C], [2]);
      const val = g.slice(qkv, [2 * C], [3 * C], [2]);
      if (v.qk_normalization) {
        q = m.rmsNorm(q, `${p}.attn.q_norm.weight`, v.layer_norm_eps);
        k = m.rmsNorm(k, `${p}.attn.k_norm.weight`, v.layer_norm_eps);
      }
      const heads = (t: string) => g.transpose(g.reshape(t, [N, Lt, H, d]), [0, 2, 1, 3]);
      const scores = g.matMul(g.mul(heads(q), g.scalarF32(d ** -0.5)), g.transpose(heads(k), [0, 1, 3, 2]));
      const attn = g.matMul(g.softmax(scores, -1), heads(val));
      const merged = g.reshape(g.transpose(attn, [0, 2, 1, 3]), [N, Lt, C]);
      const out = m.linear(merged, `${p}.attn.proj.weight`, `${p}.attn.proj.bias`, [N, Lt]);
      x = g.add(x, branch(g.mul(out, m.param(`${p}.ls1`)), 'attn'));
      const h2 = norm(x, `${p}.norm2`);
      const mlp = m.linear(
        m.gelu(m.linear(h2, `${p}.mlp.fc1.weight`, `${p}.mlp.fc1.bias`, [N, Lt])),
        `${p}.mlp.fc2.weight`,
        `${p}.mlp.fc2.bias`,
        [N, Lt],
      );
      x = g.add(x, branch(g.mul(mlp, m.param(`${p}.ls2`)), 'mlp'));
    });
  }

  // Drop CLS, then pixel shuffle: output token (i, j) = patches (fi+a, fj+b) concatenated over (a, b).
  const f = Math.round(1 / config.downsample_ratio);
  const Go = G / f;
  const grid = g.reshape(g.slice(x, [1], [Lt], [1]), [N, Go, f, Go, f, C]);
  const perm = config.ps_version === 'v2' ? [0, 1, 3, 2, 4, 5] : [0, 3, 1, 2, 4, 5];
  const shuffled = g.reshape(g.transpose(grid, perm), [N, Go * Go, f * f * C]);
  const projected = m.linear(
    m.gelu(m.linear(m.layerNorm(shuffled, 'mlp1.0', 1e-5), 'mlp1.1.weight', 'mlp1.1.bias')),
    'mlp1.3.weight',
    'mlp1.3.bias',
  );
  return g.reshape(projected, [N * Go * Go, config.llm_config.hidden_size]);
}

/** Decoder layers and final norm over [T, D]; attention stays inside each packed sample. */
function decoder(m: ModelGraph, config: ModelConfig, input: string, T: number): string {
  const g = m.g;
  const llm = config.llm_config;
  const H = llm.num_attention_heads;
  const KV = llm.num_key_value_heads;
  const rep = H / KV;
  const d = llm.head_dim;
  const eps = llm.rms_norm_eps;
  // Training writes the two block layouts out in primitive ops; other architectures are refused.
  const modelType: string = llm.model_type;
  const qwenFamily = modelType === 'qwen2' || modelType === 'qwen3';
  if (!qwenFamily && modelType !== 'internlm2') {
    throw new InternVLError('UNSUPPORTED', `training is not implemented for LLM model_type ${modelType}`);
  }

  const seg = g.input(BATCH_INPUTS.segmentIds, 'int64', [T]);
  const pos = g.input(BATCH_INPUTS.positionIds, 'int64', [T]);
  const cos = g.input(BATCH_INPUTS.ropeCos, 'float32', [T, d]);
  const sin = g.input(BATCH_INPUTS.ropeSin, 'float32', [T, d]);
  const column = (t: string) => g.op('Unsqueeze', [t, g.constI64([1])]);
  const row = (t: string) => g.op('Unsqueeze', [t, g.constI64([0])]);
  const visible = g.op('And', [
    g.op('Equal', [column(seg), row(seg)]),
    g.op('LessOrEqual', [row(pos), column(pos)]),
  ]);
  const mask = g.op('Where', [visible, g.scalarF32(0), g.scalarF32(NEG_LARGE)]);

  const rope = (t: string) => {
    const half = d / 2;
    const x1 = g.slice(t, [0], [half], [-1]);
    const x2 = g.slice(t, [half], [d], [-1]);
    return g.add(g.mul(t, cos), g.mul(g.concat([g.op('Neg', [x2]), x1], -1), sin));
  };
  // [T, groups, n, d] → [groups, n, T, d]
  const grouped = (t: string, n: number) => g.transpose(g.reshape(t, [T, KV, n, d]), [1, 2, 0, 3]);

  let x = input;
  for (let i = 0; i < llm.num_hidden_layers; i++) {
    g.within(`llm${i}`, () => {
      let q: string;
      let k: string;
      let v: string;
      let o: string;
      let h: string;
      if (qwenFamily) {
        const p = `language_model.model.layers.${i}.self_attn`;
        h = m.rmsNorm(x, `language_model.model.layers.${i}.input_layernorm.weight`, eps);
        let qh = m.linear(h, `${p}.q_proj.weight`, `${p}.q_proj.bias`);
        let kh = m.linear(h, `${p}.k_proj.weight`, `${p}.k_proj.bias`);
        if (m.has(`${p}.q_norm.weight`)) {
          // Qwen3: RMSNorm over each head's q and k before RoPE.
          qh = g.reshape(m.rmsNorm(g.reshape(qh, [T, H, d]), `${p}.q_norm.weight`, eps), [T, H * d]);
          kh = g.reshape(m.rmsNorm(g.reshape(kh, [T, KV, d]), `${p}.k_norm.weight`, eps), [T, KV * d]);
        }
        q = grouped(qh, rep);
        k = grouped(kh, 1);
        v = grouped(m.linear(h, `${p}.v_proj.weight`, `${p}.v_proj.bias`), 1);
        o = `${p}.o_proj.weight`;
      } else {
        const p = `language_model.model.layers.${i}`;
        h = m.rmsNorm(x, `${p}.attention_norm.weight`, eps);
        // wqkv rows per KV head g: [q heads g·rep … g·rep+rep−1 | k | v].
        const qkv = g.reshape(m.linear(h, `${p}.attention.wqkv.weight`, `${p}.attention.wqkv.bias`), [
          T,
          KV,
          rep + 2,
          d,
        ]);
        q = g.transpose(g.slice(qkv, [0], [rep], [2]), [1, 2, 0, 3]);
        k = g.transpose(g.slice(qkv, [rep], [rep + 1], [2]), [1, 2, 0, 3]);
        v = g.transpose(g.slice(qkv, [rep + 1], [rep + 2], [2]), [1, 2, 0, 3]);
        o = `${p}.attention.wo.weight`;
      }
      const scores = g.matMul(rope(q), g.transpose(rope(k), [0, 1, 3, 2]));
      const probs = g.softmax(g.add(g.mul(scores, g.scalarF32(d ** -0.5)), mask), -1);
      const attn = g.reshape(g.transpose(g.matMul(probs, v), [2, 0, 1, 3]), [T, H * d]);
      x = g.add(x, m.linear(attn, o, `${o.slice(0, -'.weight'.length)}.bias`));
      if (qwenFamily) {
        const p = `language_model.model.layers.${i}`;
        const h2 = m.rmsNorm(x, `${p}.post_attention_layernorm.weight`, eps);
        const gate = m.silu(m.linear(h2, `${p}.mlp.gate_proj.weight`));
        x = g.add(
          x,
          m.linear(g.mul(gate, m.linear(h2, `${p}.mlp.up_proj.weight`)), `${p}.mlp.down_proj.weight`),
        );
      } else {
        const p = `language_model.model.layers.${i}`;
        const h2 = m.rmsNorm(x, `${p}.ffn_norm.weight`, eps);
        const gate = m.silu(m.linear(h2, `${p}.feed_forward.w1.weight`));
        x = g.add(
          x,
          m.linear(g.mul(gate, m.linear(h2, `${p}.feed_forward.w3.weight`)), `${p}.feed_forward.w2.weight`),
        );
      }
    });
  }
  return m.rmsNorm(x, 'language_model.model.norm.weight', eps);
}
