/**
 * The InternVL forward pass for training, built from primitive ONNX ops that all have gradient
 * rules (no fused inference ops): InternViT (300M and 6B style) with plain softmax attention, pixel
 * shuffle, mlp1, token embedding lookup with the image features scattered into the `<IMG_CONTEXT>`
 * rows, the architecture's decoder layers over a packed sequence (./decoder-ops.ts), ending in the
 * weighted loss Σ w·CE / Σ w over the shifted labels — or in the logits of every position.
 * Parameters are graph inputs in checkpoint layout (./param-graph.ts).
 */
import type { ModelConfig } from '../config/model-config.js';
import { numImageTokens } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { decoderArchitecture, decoderDimsFromConfig } from '../models/registry.js';
import type { Graph } from '../onnx/graph.js';
import { trainingDecoder } from './decoder-ops.js';
import { BATCH_INPUTS, type LoraGraphSpec, type NoiseInput, ParamGraph } from './param-graph.js';
import { trainingVisionTower } from './vision-ops.js';

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
    const imageEmbeds = await trainingVisionTower(
      m,
      config,
      N,
      spec.mode === 'loss' ? (spec.dropPathRates ?? []) : [],
    );
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
