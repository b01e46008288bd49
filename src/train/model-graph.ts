/**
 * The InternVL forward pass for training, built from primitive ONNX ops that all have gradient
 * rules (no fused inference ops): InternViT (300M and 6B style) with plain softmax attention, pixel
 * shuffle, mlp1, token embedding lookup with the image features scattered into the `<IMG_CONTEXT>`
 * rows, the architecture's decoder layers over a packed sequence (./decoder-ops.ts), ending in the
 * weighted loss Σ w·CE / Σ w over the shifted labels — or in the logits of every position.
 * Parameters are graph inputs in checkpoint layout (./param-graph.ts).
 */
import type { ModelConfig } from '../config/model-config.js';
import { imageSize, numImageTokens } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { decoderArchitecture, decoderDimsFromConfig } from '../models/registry.js';
import type { Graph } from '../onnx/graph.js';
import { trainingDecoder } from './decoder-ops.js';
import { BATCH_INPUTS, type LoraGraphSpec, type NoiseInput, ParamGraph } from './param-graph.js';

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

export interface TrainGraph {
  graph: Graph;
  /** Names of the parameters the graph reads (checkpoint names, and LoRA adapter names). */
  params: string[];
  /** Random scale inputs to feed (LoRA dropout, drop-path); empty without them. */
  noise: NoiseInput[];
}

/** Builds the training forward graph for one batch shape. */
export async function buildTrainingGraph(spec: TrainGraphSpec): Promise<TrainGraph> {
  const m = new ParamGraph(spec.paramShapes, spec.seqLen, spec.lora, spec.mode === 'loss');
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
  hidden = await trainingDecoder(m, architecture, decoderDimsFromConfig(config), hidden, T);

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

function lmHeadName(m: ParamGraph, config: ModelConfig): string {
  const llm = config.llm_config;
  const architecture = decoderArchitecture(llm.model_type);
  if (llm.tie_word_embeddings) return architecture.embeddingName;
  if (m.has(architecture.lmHeadName)) return architecture.lmHeadName;
  if (config.tie_word_embeddings) return architecture.embeddingName;
  throw new InternVLError('BAD_CHECKPOINT', `${architecture.lmHeadName}: missing from the checkpoint`);
}

/** InternViT → drop CLS → pixel shuffle → mlp1; returns [N·tokensPerTile, D]. */
function visionTower(m: ParamGraph, config: ModelConfig, N: number, dropPath: readonly number[]): string {
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
