/**
 * Runs a decoder graph (models/registry.ts) over sequences whose KV caches JS owns (kv-cache.ts): each
 * run feeds the caches to GroupQueryAttention as its past and appends the chunk's new rotated keys and
 * values that come back as graph outputs. Prefill runs in chunks, decode one token for the whole batch.
 */

import { InternVLError } from '../errors.js';
import { DECODER_IO, type DecoderDims } from '../models/decoder.js';
import { buildDecoderGraph, embeddingTensorName } from '../models/registry.js';
import type { RopeParams } from '../models/rope.js';
import type { WeightSource } from '../models/weights.js';
import { batchStepInputs, chunkInputs } from './decoder-feeds.js';
import {
  checkForwardArgs,
  checkRunnerOptions,
  type DecoderInspection,
  type DecoderRunnerOptions,
  defaultPrefillChunk,
  type ForwardOptions,
  positiveIntegerOption,
} from './decoder-options.js';
import { type EmbeddingTable, embedTokens } from './embeddings.js';
import { KvCache, Sequence } from './kv-cache.js';
import type * as ort from './ort.js';
import {
  decoderGraphOptions,
  PREFILL_GRAPH_MIN_TOKENS,
  resolveLlmPrecision,
  type WeightDtype,
} from './precision.js';
import { sessionForGraph } from './session.js';

export type { DecoderDims } from '../models/decoder.js';
export { decoderDimsFromConfig } from '../models/registry.js';
export {
  type DecoderInspection,
  type DecoderRunnerOptions,
  defaultPrefillChunk,
  type ForwardOptions,
} from './decoder-options.js';
export type { Sequence } from './kv-cache.js';

export { argmax } from './sampler.js';

interface RunResult {
  logits: Float32Array;
  /** With argmaxOnly: the argmax of the (single) logits row. */
  nextToken?: number;
  hidden?: Float32Array[];
  finalNorm?: Float32Array;
}

export class DecoderRunner {
  readonly dims: DecoderDims;
  /** Token embedding table [vocab, D]. */
  readonly embeddings: EmbeddingTable;
  readonly #session: ort.InferenceSession;
  /** Graph for long chunks when prefillDtype differs from llmDtype (set by create). */
  #prefillSession: ort.InferenceSession | undefined;
  readonly #rope: RopeParams;
  readonly #prefillChunk: number;
  readonly #hiddenStates: boolean;
  readonly #sequences = new WeakSet<Sequence>();
  readonly #kv: KvCache;
  #released = false;

  private constructor(
    dims: DecoderDims,
    session: ort.InferenceSession,
    embeddings: EmbeddingTable,
    options: DecoderRunnerOptions,
    prefillDtype: WeightDtype,
  ) {
    this.dims = dims;
    this.#session = session;
    this.embeddings = embeddings;
    this.#rope = {
      headDim: dims.headDim,
      theta: dims.ropeTheta,
      scaling: dims.ropeScaling,
      maxPositionEmbeddings: dims.maxPositionEmbeddings,
    };
    this.#prefillChunk = positiveIntegerOption(
      'prefillChunk',
      options.prefillChunk,
      defaultPrefillChunk(prefillDtype),
    );
    this.#kv = new KvCache(dims, positiveIntegerOption('capacityStep', options.capacityStep, 256));
    this.#hiddenStates = options.hiddenStates ?? false;
  }

  /**
   * Checks every tensor's shape, builds the graph and opens the session. When `weights` reads rows on
   * demand (checkpointWeights), the token embeddings are read from the checkpoint as tokens come, so
   * keep it open while the runner is used.
   */
  static async create(
    dims: DecoderDims,
    weights: WeightSource,
    options: DecoderRunnerOptions = {},
  ): Promise<DecoderRunner> {
    checkRunnerOptions(dims, options);
    const precision = resolveLlmPrecision(options);
    const build = (dtype: typeof precision.llmDtype) => () => {
      const graphOptions = { hiddenStates: options.hiddenStates, ...decoderGraphOptions(precision, dtype) };
      return buildDecoderGraph(dims, weights, graphOptions);
    };
    const session = await sessionForGraph(build(precision.llmDtype), options);
    const embeddingName = embeddingTensorName(dims);
    // Rows read on demand where the source can: the table is 136 M values for the 1B model.
    const embeddings =
      weights.rows?.(embeddingName) ??
      (await weights.bfloat16?.(embeddingName)) ??
      (await weights.float32(embeddingName));
    const runner = new DecoderRunner(dims, session, embeddings, options, precision.prefillDtype);
    if (precision.prefillDtype !== precision.llmDtype) {
      runner.#prefillSession = await sessionForGraph(build(precision.prefillDtype), {
        threads: options.threads,
        cache: options.prefillCache,
      });
    }
    return runner;
  }

  /**
   * A runner over sessions already opened on graphs from buildDecoderGraph (e.g. in
   * a browser) and the token-embedding table [vocab, D] (float32, or bf16 bit patterns).
   */
  static fromSessions(
    dims: DecoderDims,
    sessions: { decoder: ort.InferenceSession; prefill?: ort.InferenceSession },
    embeddings: Float32Array | Uint16Array,
    options: DecoderRunnerOptions = {},
  ): DecoderRunner {
    checkRunnerOptions(dims, options);
    if (embeddings.length === 0 || embeddings.length % dims.hiddenSize !== 0) {
      throw new InternVLError(
        'BAD_INPUT',
        `the token-embedding table holds ${embeddings.length} values, not whole rows of ${dims.hiddenSize}`,
      );
    }
    const prefillDtype = resolveLlmPrecision(options).prefillDtype;
    const runner = new DecoderRunner(dims, sessions.decoder, embeddings, options, prefillDtype);
    runner.#prefillSession = sessions.prefill;
    return runner;
  }

  /** Longest prefill chunk per graph run (the generation scheduler uses the same). */
  get prefillChunk(): number {
    return this.#prefillChunk;
  }

  /** Token embeddings [ids.length, D]; ids outside [0, vocab) are rejected. */
  embed(ids: ArrayLike<number>): Float32Array {
    return embedTokens(this.embeddings, this.dims.hiddenSize, ids);
  }

  /** A sequence with an empty KV cache. */
  newSequence(): Sequence {
    const seq = new Sequence();
    this.#sequences.add(seq);
    return seq;
  }

  /** A new sequence holding a copy of the first `length` cached tokens of `seq`. */
  fork(seq: Sequence, length: number): Sequence {
    if (!this.#sequences.has(seq)) {
      throw new InternVLError('BAD_INPUT', 'the sequence was not created by this decoder runner');
    }
    const copy = this.newSequence();
    this.#kv.copyPrefix(seq, copy, length);
    return copy;
  }

  /** Bytes of KV cache a sequence holds in buffers of its own. */
  sequenceBytes(seq: Sequence): number {
    return this.#kv.bytes(seq);
  }

  /**
   * Appends `numTokens` embeddings [numTokens, D] to the sequence's cache (in chunks of at most
   * `prefillChunk`) and returns the logits of the last position [vocab], or of every position
   * [numTokens, vocab] with `allLogits`.
   */
  async forward(
    seq: Sequence,
    embeds: Float32Array,
    numTokens: number,
    options: ForwardOptions = {},
  ): Promise<Float32Array> {
    this.#checkCall(seq, embeds, numTokens);
    const { hiddenSize: d, vocabSize: vocab } = this.dims;
    const allLogits = options.allLogits ?? false;
    // The dynamic-NTK base follows the length after the whole call, as one official forward would see it.
    const ropeSeqLen = options.ropeSeqLen ?? seq.length + numTokens;
    const out = new Float32Array(allLogits ? numTokens * vocab : vocab);
    seq.busy = true;
    try {
      for (let start = 0; start < numTokens; start += this.#prefillChunk) {
        const n = Math.min(this.#prefillChunk, numTokens - start);
        const rows = allLogits ? Array.from({ length: n }, (_, t) => t) : [n - 1];
        const chunk = embeds.subarray(start * d, (start + n) * d);
        const { logits } = await this.#run(seq, chunk, n, rows, ropeSeqLen, false);
        if (allLogits) out.set(logits, start * vocab);
        else if (start + n === numTokens) out.set(logits);
      }
    } finally {
      seq.busy = false;
    }
    return out;
  }

  /** forward for greedy decoding: the argmax of the last position's logits, computed inside the graph. */
  async forwardArgmax(
    seq: Sequence,
    embeds: Float32Array,
    numTokens: number,
    options: Omit<ForwardOptions, 'allLogits'> = {},
  ): Promise<number> {
    this.#checkCall(seq, embeds, numTokens);
    const d = this.dims.hiddenSize;
    const ropeSeqLen = options.ropeSeqLen ?? seq.length + numTokens;
    let next = -1;
    seq.busy = true;
    try {
      for (let start = 0; start < numTokens; start += this.#prefillChunk) {
        const n = Math.min(this.#prefillChunk, numTokens - start);
        const chunk = embeds.subarray(start * d, (start + n) * d);
        next = (await this.#run(seq, chunk, n, [n - 1], ropeSeqLen, false, true)).nextToken!;
      }
    } finally {
      seq.busy = false;
    }
    return next;
  }

  /** One unchunked forward returning every layer's hidden states; needs `hiddenStates: true` at create. */
  async inspect(seq: Sequence, embeds: Float32Array, numTokens: number): Promise<DecoderInspection> {
    if (!this.#hiddenStates) {
      throw new InternVLError('BAD_INPUT', 'inspect needs a runner created with hiddenStates: true');
    }
    this.#checkCall(seq, embeds, numTokens);
    seq.busy = true;
    try {
      const rows = Array.from({ length: numTokens }, (_, t) => t);
      const r = await this.#run(seq, embeds, numTokens, rows, seq.length + numTokens, true);
      return { logits: r.logits, layers: r.hidden!, finalNorm: r.finalNorm! };
    } finally {
      seq.busy = false;
    }
  }

  /**
   * Moves a sequence into the decode batch: its cache is copied into a slot of the shared pool, so
   * one graph run can decode every sequence of the batch (continuous batching).
   */
  joinBatch(seq: Sequence): void {
    if (!this.#sequences.has(seq))
      throw new InternVLError('BAD_INPUT', 'the sequence was not created by this runner');
    this.#kv.join(seq);
  }

  /**
   * Takes a sequence out of the decode batch. With `keepCache` (default) its cache moves into buffers
   * of its own; without, the sequence is left empty.
   */
  leaveBatch(seq: Sequence, options: { keepCache?: boolean } = {}): void {
    this.#kv.leave(seq, options.keepCache ?? true);
  }

  /** Sequences currently in the decode batch, in slot order. */
  get batch(): readonly Sequence[] {
    return this.#kv.members;
  }

  /**
   * One decode step for every sequence in the batch: `ids[b]` is the next token of `batch[b]`.
   * Appends them to their caches and returns the logits [batch.length, vocab].
   */
  async decodeBatch(ids: readonly number[]): Promise<Float32Array> {
    return (await this.#decodeBatch(ids, DECODER_IO.logits)) as Float32Array;
  }

  /** decodeBatch for greedy decoding: each sequence's next token, computed inside the graph. */
  async decodeBatchArgmax(ids: readonly number[]): Promise<number[]> {
    return Array.from(await this.#decodeBatch(ids, DECODER_IO.nextToken), Number);
  }

  async #decodeBatch(ids: readonly number[], fetch: string): Promise<Float32Array | BigInt64Array> {
    const members = this.#kv.members;
    const n = members.length;
    if (n === 0 || ids.length !== n) {
      throw new InternVLError(
        'BAD_INPUT',
        `decodeBatch needs one id per batched sequence (${n}), got ${ids.length}`,
      );
    }
    if (this.#released) throw new InternVLError('BAD_INPUT', 'the decoder runner has been released');
    const longest = Math.max(...members.map((s) => s.length));
    this.#kv.reserveBatch(longest + 1);
    const { feeds, fetches } = batchStepInputs(
      this.dims,
      this.#rope,
      members,
      this.embed(ids),
      (layer) => this.#kv.batchPast(layer),
      fetch,
    );
    for (const seq of members) seq.busy = true;
    try {
      const result = await this.#session.run(feeds, fetches);
      this.#appendKeysValues(result, members, 1);
      for (const seq of members) seq.length += 1;
      return result[fetch].data as Float32Array | BigInt64Array;
    } finally {
      for (const seq of members) seq.busy = false;
    }
  }

  /** Writes a run's new keys and values ([B, n, kvH·hd] per layer) after each sequence's cached tokens. */
  #appendKeysValues(
    result: ort.InferenceSession.OnnxValueMapType,
    seqs: readonly Sequence[],
    n: number,
  ): void {
    for (let i = 0; i < this.dims.numLayers; i++) {
      const k = result[DECODER_IO.key(i)].data as Float32Array;
      const v = result[DECODER_IO.value(i)].data as Float32Array;
      this.#kv.append(i, seqs, n, k, v);
    }
  }

  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    await this.#session.release();
    await this.#prefillSession?.release();
  }

  #checkCall(seq: Sequence, embeds: Float32Array, numTokens: number): void {
    if (this.#released) throw new InternVLError('BAD_INPUT', 'the decoder runner has been released');
    if (!this.#sequences.has(seq)) {
      throw new InternVLError('BAD_INPUT', 'the sequence was not created by this decoder runner');
    }
    checkForwardArgs(this.dims, seq, embeds, numTokens);
  }

  async #run(
    seq: Sequence,
    embeds: Float32Array,
    n: number,
    logitsRows: number[],
    ropeSeqLen: number,
    withHidden: boolean,
    argmaxOnly = false,
  ): Promise<RunResult> {
    const { numLayers } = this.dims;
    const total = seq.length + n;
    this.#kv.ensureCapacity(seq, total);
    const { feeds, fetches } = chunkInputs(this.dims, this.#rope, seq, embeds, n, logitsRows, ropeSeqLen, {
      withHidden,
      argmaxOnly,
    });
    // Long chunks go to the prefill graph (int8 DynamicQuantizeMatMul) when there is one.
    const session =
      n >= PREFILL_GRAPH_MIN_TOKENS && this.#prefillSession ? this.#prefillSession : this.#session;
    const result = await session.run(feeds, fetches);

    this.#appendKeysValues(result, [seq], n);
    seq.length = total;
    if (argmaxOnly) {
      return {
        logits: new Float32Array(0),
        nextToken: Number((result[DECODER_IO.nextToken].data as BigInt64Array)[0]),
      };
    }
    const out: RunResult = { logits: result[DECODER_IO.logits].data as Float32Array };
    if (withHidden) {
      out.hidden = Array.from(
        { length: numLayers },
        (_, i) => result[DECODER_IO.hidden(i)].data as Float32Array,
      );
      out.finalNorm = result[DECODER_IO.finalNorm].data as Float32Array;
    }
    return out;
  }
}
