/**
 * Attention of a short chunk (a decode step, or a few tokens) over the engine's KV buffers by plain
 * matmuls: scores against the whole buffer [B, kvH, capacity, hd] with the slots past each sequence's
 * length masked, scores against the chunk's own keys with a causal mask, one softmax over both, and the
 * two weighted sums of values. Unlike GroupQueryAttention it copies nothing: that kernel zeroes a present
 * buffer of the full capacity and copies the past into it in every layer of every step. It computes
 * every query row against every key, so it is for short chunks; long prefill chunks keep
 * GroupQueryAttention (see DecoderGraphOptions.attention).
 *
 * The masked slots add exact zeros, so a sequence's output does not depend on the buffer's capacity,
 * and so not on the other sequences of its decode batch (test/cache-attention.test.ts).
 */
import { type GraphBuilder, MS_DOMAIN } from '../onnx/graph.js';
import type { DecoderDims } from './decoder.js';

/** The per-graph masks, built once from the first layer's inputs and shared by every layer. */
interface Masks {
  /** [B, 1, 1, capacity]: 0 for cached tokens, -Infinity for the free slots. */
  past: string;
  /** [S·G, S]: query row s·G + g (token s, head g of its group) sees chunk keys 0…s. */
  causal: string;
  /** [capacity, S] (int64), to split the softmax back into its two parts. */
  splitSizes: string;
}

export class CacheAttention {
  #masks: Masks | undefined;

  constructor(
    private readonly g: GraphBuilder,
    private readonly dims: DecoderDims,
    /** GroupQueryAttention's seqlens_k input [B] (int32): each sequence's total length − 1. */
    private readonly seqlensK: string,
  ) {}

  /** q [B, S, H·hd], k and v [B, S, kvH·hd] (rotated), past buffers [B, kvH, capacity, hd] → [B, S, H·hd]. */
  attend(q: string, k: string, v: string, pastKey: string, pastValue: string): string {
    const { g, dims } = this;
    const { numHeads, numKvHeads: kvHeads, headDim: hd } = dims;
    const group = numHeads / kvHeads;
    const masks = this.#masks ?? this.#buildMasks(q, pastKey);
    // Rows of one KV head's group together: [B, kvH, S·G, hd].
    const queries = g.reshape(g.transpose(g.reshape(q, [0, 0, kvHeads, group, hd]), [0, 2, 1, 3, 4]), [
      0,
      0,
      -1,
      hd,
    ]);
    const perHead = (x: string) => g.transpose(g.reshape(x, [0, 0, kvHeads, hd]), [0, 2, 1, 3]);
    const scores = (keys: string, mask: string) =>
      g.add(
        g.op('FusedMatMul', [queries, keys], { transB: { int: 1 }, alpha: 1 / Math.sqrt(hd) }, MS_DOMAIN),
        mask,
      );
    const probs = g.softmax(
      g.concat([scores(pastKey, masks.past), scores(perHead(k), masks.causal)], -1),
      -1,
    );
    const [pastProbs, chunkProbs] = g.node(
      'Split',
      [probs, masks.splitSizes],
      { axis: { int: -1 } },
      { outputs: 2 },
    );
    const out = g.add(g.matMul(pastProbs, pastValue), g.matMul(chunkProbs, perHead(v)));
    return g.reshape(g.transpose(g.reshape(out, [0, 0, -1, group, hd]), [0, 2, 1, 3, 4]), [
      0,
      0,
      numHeads * hd,
    ]);
  }

  #buildMasks(q: string, pastKey: string): Masks {
    const { g } = this;
    const group = this.dims.numHeads / this.dims.numKvHeads;
    const zero = g.constF32([0], []);
    const blocked = g.constF32([Number.NEGATIVE_INFINITY], []);
    const range = (end: string) =>
      g.op('Range', [g.constI64([0], []), g.reshape(end, []), g.constI64([1], [])]);
    const chunk = g.op('Shape', [q], { start: { int: 1 }, end: { int: 2 } });
    const capacity = g.op('Shape', [pastKey], { start: { int: 2 }, end: { int: 3 } });
    // Tokens cached before the chunk: seqlens_k + 1 − S.
    const cached = g.sub(g.add(g.cast(this.seqlensK, 'int64'), g.constI64([1], [])), chunk);
    const slots = g.reshape(range(capacity), [1, 1, 1, -1]);
    const past = g.op('Where', [g.op('Less', [slots, g.reshape(cached, [-1, 1, 1, 1])]), zero, blocked]);
    const groupSize = g.constI64([group], []);
    const rowToken = g.div(range(g.mul(chunk, groupSize)), groupSize);
    const chunkKeys = g.reshape(range(chunk), [1, -1]);
    const causal = g.op('Where', [
      g.op('LessOrEqual', [chunkKeys, g.reshape(rowToken, [-1, 1])]),
      zero,
      blocked,
    ]);
    this.#masks = { past, causal, splitSizes: g.concat([capacity, chunk], 0) };
    return this.#masks;
  }
}
