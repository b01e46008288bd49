/**
 * What a DecoderRunner (decoder.ts) is configured with and what its calls return, and the checks of
 * its dims, options and forward-call arguments.
 */
import { InternVLError } from '../errors.js';
import type { DecoderDims } from '../models/decoder.js';
import type { Sequence } from './kv-cache.js';
import type { LlmPrecisionOptions, WeightDtype } from './precision.js';
import type { GraphCacheOptions } from './session.js';

/**
 * Longest prefill chunk per graph run, by the kernel that runs prefill (measured on the 1B shape, see
 * docs/performance.md): fp32 MatMul and int8 DynamicQuantizeMatMul are fastest in chunks of 512; int4
 * MatMulNBits is as fast in chunks of 256, whose smaller activations keep the peak memory 80 MB lower.
 */
export function defaultPrefillChunk(prefillDtype: WeightDtype): number {
  return prefillDtype === 'int4' ? 256 : 512;
}

export interface DecoderRunnerOptions extends LlmPrecisionOptions {
  /** Intra-op threads; default: the number of cores. */
  threads?: number;
  /** Keep the built graph in this on-disk cache entry. */
  cache?: GraphCacheOptions;
  /** Cache entry of the prefill graph when prefillDtype differs from llmDtype. */
  prefillCache?: GraphCacheOptions;
  /** Longest chunk one graph run takes during prefill (default: defaultPrefillChunk of the prefill precision). */
  prefillChunk?: number;
  /** KV capacity grows in multiples of this many tokens (default 256). */
  capacityStep?: number;
  /** Build the graph with every layer's hidden states as outputs, for `inspect`. */
  hiddenStates?: boolean;
}

export interface ForwardOptions {
  /** Logits of every position ([numTokens, vocab]) instead of only the last ([vocab]). */
  allLogits?: boolean;
  /**
   * Sequence length the dynamic-NTK rope base is computed for; default the length after this call.
   * A prompt prefilled over several calls passes its full length, as one official forward would see it.
   */
  ropeSeqLen?: number;
}

export interface DecoderInspection {
  /** [numTokens, vocab] */
  logits: Float32Array;
  /** Output of each decoder layer, [numTokens, D] each. */
  layers: Float32Array[];
  /** After the final RMSNorm, [numTokens, D]. */
  finalNorm: Float32Array;
}

function checkDims(dims: DecoderDims): void {
  const positive = [
    'hiddenSize',
    'numLayers',
    'numHeads',
    'numKvHeads',
    'headDim',
    'intermediateSize',
    'vocabSize',
    'maxPositionEmbeddings',
  ] as const;
  for (const key of positive) {
    if (!Number.isInteger(dims[key]) || dims[key] <= 0) {
      throw new InternVLError('BAD_CONFIG', `decoder ${key} must be a positive integer, got ${dims[key]}`);
    }
  }
  if (dims.numHeads % dims.numKvHeads !== 0) {
    throw new InternVLError(
      'BAD_CONFIG',
      `decoder numKvHeads ${dims.numKvHeads} does not divide numHeads ${dims.numHeads}`,
    );
  }
  if (dims.headDim % 2 !== 0)
    throw new InternVLError('BAD_CONFIG', `decoder headDim ${dims.headDim} must be even`);
}

export function positiveIntegerOption(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value <= 0) {
    throw new InternVLError('BAD_INPUT', `${name} must be a positive integer, got ${value}`);
  }
  return value;
}

/** The options create and fromSessions check before anything is built. */
export function checkRunnerOptions(dims: DecoderDims, options: DecoderRunnerOptions): void {
  checkDims(dims);
  positiveIntegerOption('prefillChunk', options.prefillChunk, 1);
  positiveIntegerOption('capacityStep', options.capacityStep, 1);
}

/**
 * The checks of a forward call that need no runner state: the sequence is idle and not batched, and
 * `embeds` holds `numTokens` rows of the hidden size.
 */
export function checkForwardArgs(
  dims: DecoderDims,
  seq: Sequence,
  embeds: Float32Array,
  numTokens: number,
): void {
  if (seq.busy) throw new InternVLError('BAD_INPUT', 'the sequence is already running a forward pass');
  if (seq.slot !== undefined)
    throw new InternVLError('BAD_INPUT', 'the sequence is in the decode batch (use decodeBatch)');
  if (!Number.isInteger(numTokens) || numTokens < 1) {
    throw new InternVLError('BAD_INPUT', `numTokens must be a positive integer, got ${numTokens}`);
  }
  const expected = numTokens * dims.hiddenSize;
  if (embeds.length !== expected) {
    throw new InternVLError(
      'BAD_INPUT',
      `embeddings have ${embeds.length} values, expected ${numTokens} tokens × ${dims.hiddenSize} = ${expected}`,
    );
  }
}
