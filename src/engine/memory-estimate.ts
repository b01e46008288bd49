/**
 * Parameter counts and a peak-memory (RSS) estimate of a model from its config.json alone, before
 * anything is loaded: the bytes of each engine graph's weights as stored at the chosen precision
 * (fp32 4 bytes a parameter; int8 1 byte + a scale per column; int4 half a byte + an fp32 scale and
 * half a byte of zero point per block), the token-embedding rows read from the checkpoint on demand,
 * and allowances for the runtime and for converting the checkpoint into graphs (the peak of a first
 * load), both fitted to measurements on random-weight 1B and 2B checkpoints (docs/memory.md).
 */
import type { ModelConfig } from '../config/model-config.js';
import { outputHeadName } from '../models/decoder.js';
import { internVitDimsFromConfig, internVitTensorSpecs, layersForSelectLayer } from '../models/internvit.js';
import { projectorTensorSpecs } from '../models/projector.js';
import { decoderArchitecture, decoderDimsFromConfig, decoderTensorSpecs } from '../models/registry.js';
import type { TensorSpec } from '../models/weights.js';
import type { VitDtype, WeightDtype } from './precision.js';
import { visionDimsFromConfig, visionGeometry } from './vision.js';

export interface ParameterCounts {
  vit: number;
  projector: number;
  /** The language model, token embeddings and output head included. */
  llm: number;
  /** Of llm: the token-embedding table (not part of any graph; its rows are read as tokens come). */
  embedding: number;
  total: number;
}

const elements = (shape: number[]) => shape.reduce((n, d) => n * d, 1);
const count = (specs: TensorSpec[]) => specs.reduce((n, s) => n + elements(s.shape), 0);

interface ModelTensors {
  vitAll: TensorSpec[];
  /** The ViT layers the vision graph runs (up to select_layer). */
  vitGraph: TensorSpec[];
  projector: TensorSpec[];
  llm: TensorSpec[];
  embeddingName: string;
  /** The output head's tensor name (the embedding table's when they are tied). */
  headName: string;
}

function modelTensors(config: ModelConfig): ModelTensors {
  const vit = internVitDimsFromConfig(config.vision_config);
  const dims = decoderDimsFromConfig(config);
  const llm = decoderTensorSpecs(dims);
  const arch = decoderArchitecture(dims.arch);
  const embeddingName = arch.embeddingName;
  return {
    vitAll: internVitTensorSpecs(vit, vit.numLayers),
    vitGraph: internVitTensorSpecs(vit, layersForSelectLayer(vit.numLayers, config.select_layer)),
    projector: projectorTensorSpecs({
      inputSize: vit.hiddenSize / config.downsample_ratio ** 2,
      llmHiddenSize: dims.hiddenSize,
    }),
    llm,
    embeddingName,
    headName: outputHeadName(arch, dims),
  };
}

/** Parameters of the ViT, the projector (mlp1) and the LLM, from the tensor shapes the engine reads. */
export function parameterCounts(config: ModelConfig): ParameterCounts {
  const t = modelTensors(config);
  const vit = count(t.vitAll);
  const projector = count(t.projector);
  const llm = count(t.llm);
  const embedding = count(t.llm.filter((s) => s.name === t.embeddingName));
  return { vit, projector, llm, embedding, total: vit + projector + llm };
}

const INT4_BLOCK = 32;

/** Bytes of one tensor stored in a graph whose linear weights are `dtype` (vectors stay fp32). */
function storedBytes(spec: TensorSpec, dtype: WeightDtype, linear: boolean): number {
  const n = elements(spec.shape);
  if (!linear || dtype === 'fp32' || spec.shape.length !== 2) return 4 * n;
  const [rows, k] = spec.shape;
  if (dtype === 'int8') return n + 4 * rows;
  const blocks = rows * Math.ceil(k / INT4_BLOCK);
  return n / 2 + blocks * 4 + Math.ceil(blocks / 2);
}

const isMatrixWeight = (s: TensorSpec) => s.shape.length === 2 && s.name.endsWith('.weight');

/** One precision choice as `internvl chat --llm-dtype … --prefill-dtype … --vit-dtype …` makes it. */
export interface MemoryPrecision {
  llmDtype: WeightDtype;
  prefillDtype: WeightDtype;
  vitDtype: VitDtype;
}

export function describePrecision(p: MemoryPrecision): string {
  const llm = p.prefillDtype === p.llmDtype ? p.llmDtype : `${p.llmDtype} decode + ${p.prefillDtype} prefill`;
  return `ViT ${p.vitDtype}, LLM ${llm}`;
}

/** The command-line flags for a precision (empty for the all-fp32 default). */
export function precisionFlags(p: MemoryPrecision): string {
  const flags: string[] = [];
  if (p.llmDtype !== 'fp32') flags.push(`--llm-dtype ${p.llmDtype}`);
  if (p.prefillDtype !== p.llmDtype) flags.push(`--prefill-dtype ${p.prefillDtype}`);
  if (p.vitDtype !== 'fp32') flags.push(`--vit-dtype ${p.vitDtype}`);
  return flags.join(' ');
}

/** The precisions `internvl info` reports, smallest memory last. */
export const REPORTED_PRECISIONS: readonly MemoryPrecision[] = [
  { llmDtype: 'fp32', prefillDtype: 'fp32', vitDtype: 'fp32' },
  { llmDtype: 'int4', prefillDtype: 'int8', vitDtype: 'fp32' },
  { llmDtype: 'int4', prefillDtype: 'int8', vitDtype: 'int8' },
];

/**
 * Fitted to peak RSS measured with /usr/bin/time -v on `npx internvl chat` (one image tile, 8 new
 * tokens) of random-weight InternVL2_5-1B and -2B checkpoints, fp32 and int4 + int8 prefill; see
 * docs/memory.md for the runs, the fit and how far each estimate is from its measurement.
 */
export const MEMORY_CALIBRATION = {
  /** Resident bytes per byte of fp32 graph weights once the session is loaded. */
  perFp32GraphByte: 1.02,
  /** Resident bytes per byte of int8/int4 graph weights (ONNX Runtime keeps repacked copies of some). */
  perQuantGraphByte: 1.25,
  /** Node, ONNX Runtime, the tokenizer, the media worker and the activations of one request. */
  runtimeBytes: 525e6,
  /**
   * Converting: extra resident bytes while a graph is built, per fp32 byte of its largest tensor (its
   * weights stream to disk as they are made, so only the tensor being read and converted is in memory).
   */
  buildPerLargestTensorByte: 1.0,
};

export interface MemoryEstimate {
  precision: MemoryPrecision;
  /** Bytes of weights stored in each graph: vision, decoder and (when prefill differs) prefill. */
  graphs: { role: string; dtype: string; bytes: number }[];
  /** Bytes of the token-embedding rows a request reads (read on demand, not a table in memory). */
  embeddingRows: number;
  /** Peak RSS running from cached graphs. */
  running: number;
  /** Peak RSS of a first load, which converts the checkpoint into graphs. */
  converting: number;
}

/** Tokens a request's prompt is assumed to have for the embedding rows it reads. */
const ESTIMATE_PROMPT_TOKENS = 8192;

export function estimateMemory(config: ModelConfig, precision: MemoryPrecision): MemoryEstimate {
  const t = modelTensors(config);
  const dims = decoderDimsFromConfig(config);
  // The graph holds the position rows resized to the tile's patch grid instead of the checkpoint's table.
  const { grid } = visionGeometry(visionDimsFromConfig(config));
  const positionRows = (1 + grid * grid) * config.vision_config.hidden_size * 4;
  const vitBytes = (dtype: WeightDtype) =>
    [...t.vitGraph, ...t.projector]
      .filter((s) => !s.name.endsWith('.position_embedding'))
      .reduce((n, s) => n + storedBytes(s, dtype, isMatrixWeight(s) && !s.name.startsWith('mlp1.')), 0) +
    positionRows;
  const decoderSpecs = t.llm.filter((s) => s.name !== t.embeddingName && s.name !== t.headName);
  const head = t.llm.find((s) => s.name === t.headName);
  // Quantised graphs keep the output head in int4 (lmHeadDtype 'auto'), the prefill graph too.
  const decoderBytes = (dtype: WeightDtype) =>
    decoderSpecs.reduce((n, s) => n + storedBytes(s, dtype, isMatrixWeight(s)), 0) +
    (head ? storedBytes(head, dtype === 'fp32' ? 'fp32' : 'int4', true) : 0);
  const largest = (specs: TensorSpec[]) => Math.max(0, ...specs.map((s) => 4 * elements(s.shape)));
  const vitLargest = largest([...t.vitGraph, ...t.projector]);
  const decoderLargest = largest([...decoderSpecs, ...(head ? [head] : [])]);
  const graphs: (MemoryEstimate['graphs'][number] & { largestTensor: number })[] = [
    {
      role: 'vision',
      dtype: precision.vitDtype,
      bytes: vitBytes(precision.vitDtype),
      largestTensor: vitLargest,
    },
  ];
  const decoderGraph = (role: string, dtype: WeightDtype) => ({
    role,
    dtype,
    bytes: decoderBytes(dtype),
    largestTensor: decoderLargest,
  });
  graphs.push(decoderGraph('decoder', precision.llmDtype));
  if (precision.prefillDtype !== precision.llmDtype) {
    graphs.push(decoderGraph('decoder-prefill', precision.prefillDtype));
  }
  const embeddingRows = ESTIMATE_PROMPT_TOKENS * dims.hiddenSize * 2;
  const c = MEMORY_CALIBRATION;
  const base = embeddingRows + c.runtimeBytes;
  const resident = (g: { dtype: string; bytes: number }) =>
    g.bytes * (g.dtype === 'fp32' ? c.perFp32GraphByte : c.perQuantGraphByte);
  const running = graphs.reduce((n, g) => n + resident(g), 0) + base;
  // Graphs are built one after another (vision, decoder, prefill), each while the sessions before it are
  // loaded; its weights stream to disk, and what the build leaves is collected before its session loads.
  let loaded = 0;
  let converting = running;
  for (const g of graphs) {
    converting = Math.max(converting, loaded + g.largestTensor * c.buildPerLargestTensorByte + base);
    loaded += resident(g);
  }
  return {
    precision,
    graphs: graphs.map(({ role, dtype, bytes }) => ({ role, dtype, bytes })),
    embeddingRows,
    running,
    converting,
  };
}
