/**
 * A packed training batch (the data pipeline's shard tensors) turned into the training graph's feeds:
 * sample ids and restarting positions for the block-diagonal causal mask, per-token rotary tables,
 * the `<IMG_CONTEXT>` rows the image features fill, and the supervised rows of the shifted loss.
 */
import type { ModelConfig } from '../config/model-config.js';
import { imageSize, numImageTokens } from '../config/model-config.js';
import { InternVLError } from '../errors.js';
import { decoderDimsFromConfig } from '../models/registry.js';
import { rotaryTables } from '../models/rope.js';
import { IGNORE_TOKEN_ID } from '../text/training.js';

type IntArray = ArrayLike<number> | BigInt64Array;

/** One packed sequence, as stored in a shard (or a golden training case). */
export interface TrainBatch {
  inputIds: IntArray;
  /** -100 where not supervised. */
  labels: IntArray;
  /** Per-token loss weight (0 where not supervised). */
  lossWeight: ArrayLike<number>;
  /** Sample boundaries [0, …, T]. */
  cuSeqlens: IntArray;
  /** Normalised tiles [numTiles, 3, S, S]. */
  pixelValues?: Float32Array;
  numTiles?: number;
}

export interface PreparedBatch {
  /** Tokens after padding (a multiple of `padTo`). */
  seqLen: number;
  numTiles: number;
  numSupervised: number;
  inputIds: BigInt64Array;
  segmentIds: BigInt64Array;
  positionIds: BigInt64Array;
  ropeCos: Float32Array;
  ropeSin: Float32Array;
  /** [numTiles·tokensPerTile, 1] */
  imageRows: BigInt64Array;
  pixelValues?: Float32Array;
  lossRows: BigInt64Array;
  lossTargets: BigInt64Array;
  lossWeights: Float32Array;
  /** Supervised (weighted) tokens, for throughput reports. */
  tokens: number;
}

export interface PrepareBatchOptions {
  imageContextTokenId: number;
  /** Round the sequence up to a multiple of this with a padding sample (fewer distinct graph shapes). */
  padSeqTo?: number;
  /** Round the supervised rows up to a multiple of this with zero-weight rows. */
  padRowsTo?: number;
  /** Build the loss rows (default true); false for a logits-only forward. */
  loss?: boolean;
}

const toNumbers = (a: IntArray): number[] => Array.from(a as ArrayLike<number | bigint>, Number);
const roundUp = (n: number, m: number) => Math.ceil(n / m) * m;

export function prepareBatch(
  config: ModelConfig,
  batch: TrainBatch,
  options: PrepareBatchOptions,
): PreparedBatch {
  const ids = toNumbers(batch.inputIds);
  const labels = toNumbers(batch.labels);
  const cu = toNumbers(batch.cuSeqlens);
  const T0 = ids.length;
  const vocab = config.llm_config.vocab_size;
  if (T0 === 0) throw new InternVLError('BAD_INPUT', 'batch inputIds is empty');
  if (labels.length !== T0 || batch.lossWeight.length !== T0) {
    throw new InternVLError(
      'BAD_INPUT',
      `batch labels (${labels.length}) and lossWeight (${batch.lossWeight.length}) must have the length of inputIds (${T0})`,
    );
  }
  if (cu.length < 2 || cu[0] !== 0 || cu[cu.length - 1] !== T0 || cu.some((c, i) => i > 0 && c < cu[i - 1])) {
    throw new InternVLError(
      'BAD_INPUT',
      `batch cuSeqlens [${cu.join(',')}] must rise from 0 to the sequence length ${T0}`,
    );
  }
  for (let t = 0; t < T0; t++) {
    if (!Number.isInteger(ids[t]) || ids[t] < 0 || ids[t] >= vocab) {
      throw new InternVLError(
        'BAD_INPUT',
        `batch inputIds[${t}] = ${ids[t]} is outside the vocabulary (0..${vocab - 1})`,
      );
    }
  }

  const T = roundUp(T0, options.padSeqTo ?? 1);
  const inputIds = new BigInt64Array(T);
  const segmentIds = new BigInt64Array(T);
  const positionIds = new BigInt64Array(T);
  for (let t = 0; t < T0; t++) inputIds[t] = BigInt(ids[t]);
  const segments: [number, number][] = [];
  for (let s = 0; s + 1 < cu.length; s++) if (cu[s + 1] > cu[s]) segments.push([cu[s], cu[s + 1]]);
  if (T > T0) segments.push([T0, T]);
  const dims = decoderDimsFromConfig(config);
  const d = dims.headDim;
  const half = d / 2;
  const rope = {
    headDim: d,
    theta: dims.ropeTheta,
    scaling: dims.ropeScaling,
    maxPositionEmbeddings: dims.maxPositionEmbeddings,
  };
  const ropeCos = new Float32Array(T * d);
  const ropeSin = new Float32Array(T * d);
  segments.forEach(([start, end], s) => {
    const len = end - start;
    const { cos, sin } = rotaryTables(rope, 0, len, len);
    for (let t = start; t < end; t++) {
      segmentIds[t] = BigInt(s);
      positionIds[t] = BigInt(t - start);
      const r = (t - start) * half;
      for (let j = 0; j < half; j++) {
        ropeCos[t * d + j] = ropeCos[t * d + half + j] = cos[r + j];
        ropeSin[t * d + j] = ropeSin[t * d + half + j] = sin[r + j];
      }
    }
  });

  const perTile = numImageTokens(config);
  const S = imageSize(config);
  const tileSize = config.vision_config.num_channels * S * S;
  const pixels = batch.pixelValues;
  const numTiles = batch.numTiles ?? (pixels ? pixels.length / tileSize : 0);
  if (!Number.isInteger(numTiles) || numTiles < 0 || (pixels?.length ?? 0) !== numTiles * tileSize) {
    throw new InternVLError(
      'BAD_INPUT',
      `batch pixelValues has ${pixels?.length ?? 0} values; ${numTiles} tiles of ${config.vision_config.num_channels}x${S}x${S} need ${numTiles * tileSize}`,
    );
  }
  const contextRows: number[] = [];
  for (let t = 0; t < T0; t++) if (ids[t] === options.imageContextTokenId) contextRows.push(t);
  if (contextRows.length !== numTiles * perTile) {
    throw new InternVLError(
      'BAD_INPUT',
      `batch has ${contextRows.length} <IMG_CONTEXT> tokens but ${numTiles} tiles give ${numTiles * perTile} image features`,
    );
  }

  // Logits at t predict label t+1.
  const rows: number[] = [];
  const withLoss = options.loss ?? true;
  if (withLoss) for (let t = 0; t + 1 < T0; t++) if (labels[t + 1] !== IGNORE_TOKEN_ID) rows.push(t);
  if (withLoss && rows.length === 0)
    throw new InternVLError('BAD_INPUT', 'batch has no supervised labels (all are -100)');
  const K = roundUp(rows.length, options.padRowsTo ?? 1);
  const lossRows = new BigInt64Array(K);
  const lossTargets = new BigInt64Array(K);
  const lossWeights = new Float32Array(K);
  rows.forEach((t, i) => {
    const label = labels[t + 1];
    if (!Number.isInteger(label) || label < 0 || label >= vocab) {
      throw new InternVLError(
        'BAD_INPUT',
        `batch labels[${t + 1}] = ${label} is outside the vocabulary (0..${vocab - 1})`,
      );
    }
    lossRows[i] = BigInt(t);
    lossTargets[i] = BigInt(label);
    lossWeights[i] = batch.lossWeight[t + 1];
  });
  let weightSum = 0;
  for (const w of lossWeights) weightSum += w;
  if (withLoss && !(weightSum > 0))
    throw new InternVLError('BAD_INPUT', 'batch lossWeight is zero on every supervised label');

  return {
    seqLen: T,
    numTiles,
    numSupervised: K,
    inputIds,
    segmentIds,
    positionIds,
    ropeCos,
    ropeSin,
    imageRows: BigInt64Array.from(contextRows.map(BigInt)),
    pixelValues: numTiles > 0 ? pixels : undefined,
    lossRows,
    lossTargets,
    lossWeights,
    tokens: rows.length,
  };
}
