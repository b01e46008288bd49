/**
 * The decoder's KV cache, owned by JS: per sequence and layer, K and V buffers [1, kvH, capacity, hd]
 * (BNSH) that GroupQueryAttention reads as its past, and the decode batch's pool, where each member's
 * cache is a slot of [slots, kvH, capacity, hd] buffers so one graph run decodes them all. Capacity grows
 * in steps, because GroupQueryAttention's cost follows the capacity, not the valid length.
 */
import { InternVLError } from '../errors.js';
import * as ort from './ort.js';

export interface KvShape {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
}

/** One sequence's KV cache: per layer K and V buffers [kvH, capacity, hd] and the number of cached tokens. */
export class Sequence {
  /** Tokens held in the cache. */
  length = 0;
  /** Token slots allocated per buffer. */
  capacity = 0;
  keys: Float32Array[] = [];
  values: Float32Array[] = [];
  /** ORT views of `keys`/`values` (zero-copy), rebuilt when the buffers are reallocated. */
  pastTensors: { key: ort.Tensor; value: ort.Tensor }[] = [];
  busy = false;
  /** Index in the runner's decode batch while the sequence is in it (its buffers are then views of the batch pool). */
  slot: number | undefined;

  /** Keeps only the first `length` cached tokens (to reuse a shared prompt prefix); the rest is overwritten later. */
  truncate(length: number): void {
    if (!Number.isInteger(length) || length < 0 || length > this.length) {
      throw new InternVLError('BAD_INPUT', `cannot truncate a ${this.length}-token sequence to ${length}`);
    }
    this.length = length;
  }
}

/** Per-layer K and V buffers and where one cache starts in them. */
interface CacheView {
  keys: Float32Array[];
  values: Float32Array[];
  capacity: number;
  offset: number;
}

const ownView = (seq: Sequence): CacheView => ({
  keys: seq.keys,
  values: seq.values,
  capacity: seq.capacity,
  offset: 0,
});

export class KvCache {
  readonly #shape: KvShape;
  readonly #capacityStep: number;
  /** The decode batch: members' caches in slots [members.length, kvH, capacity, hd] per layer. */
  #capacity = 0;
  #slots = 0;
  readonly #members: Sequence[] = [];
  #keys: Float32Array[] = [];
  #values: Float32Array[] = [];

  constructor(shape: KvShape, capacityStep: number) {
    this.#shape = shape;
    this.#capacityStep = capacityStep;
  }

  /** Sequences in the decode batch, in slot order. */
  get members(): readonly Sequence[] {
    return this.#members;
  }

  /** Token slots per member in the batch pool. */
  get batchCapacity(): number {
    return this.#capacity;
  }

  /** Makes room for `needed` tokens in a sequence's own buffers (not in the batch). */
  ensureCapacity(seq: Sequence, needed: number): void {
    if (needed <= seq.capacity) return;
    const capacity = this.#roundCapacity(needed);
    const keys = this.#allocate(capacity);
    const values = this.#allocate(capacity);
    if (seq.keys.length > 0) this.#copyCache(seq.length, ownView(seq), { keys, values, capacity, offset: 0 });
    this.#bindOwn(seq, keys, values, capacity);
  }

  /** Gives `to` (an empty sequence) a copy of the first `length` cached tokens of `from`. */
  copyPrefix(from: Sequence, to: Sequence, length: number): void {
    if (
      !Number.isInteger(length) ||
      length < 0 ||
      length > from.length ||
      to.length !== 0 ||
      to.slot !== undefined
    ) {
      throw new InternVLError('INTERNAL', `cannot copy ${length} of ${from.length} cached tokens`);
    }
    this.ensureCapacity(to, Math.max(length, 1));
    this.#copyCache(length, ownView(from), ownView(to));
    to.length = length;
  }

  /** Bytes held by a sequence's own buffers. */
  bytes(seq: Sequence): number {
    return 2 * this.#shape.numLayers * this.#slotSize(seq.capacity) * 4;
  }

  /** Moves a sequence into the batch: its cache is copied into a slot of the pool. */
  join(seq: Sequence): void {
    if (seq.slot !== undefined) return;
    const capacity = Math.max(this.#capacity, this.#roundCapacity(seq.length + 1));
    if (capacity > this.#capacity || this.#members.length === this.#slots) {
      this.#resize(capacity, Math.max(this.#slots * 2, this.#members.length + 1, 4));
    }
    const slot = this.#members.length;
    this.#members.push(seq);
    this.#copyCache(seq.length, ownView(seq), this.#slotView(slot));
    this.#bindSlot(seq, slot);
  }

  /** Takes a sequence out of the batch, its cache moved into buffers of its own (or dropped). */
  leave(seq: Sequence, keepCache: boolean): void {
    const slot = seq.slot;
    if (slot === undefined) return;
    if (keepCache) {
      const capacity = this.#roundCapacity(Math.max(seq.length, 1));
      const keys = this.#allocate(capacity);
      const values = this.#allocate(capacity);
      this.#copyCache(seq.length, this.#slotView(slot), { keys, values, capacity, offset: 0 });
      this.#bindOwn(seq, keys, values, capacity);
    } else {
      this.#bindOwn(seq, [], [], 0);
      seq.length = 0;
    }
    // Keep the batch dense: the last member takes the freed slot.
    const last = this.#members.pop() as Sequence;
    if (last !== seq) {
      this.#members[slot] = last;
      const from = this.#offset(last.slot as number);
      const to = this.#offset(slot);
      const size = this.#slotSize(this.#capacity);
      for (let i = 0; i < this.#shape.numLayers; i++) {
        this.#keys[i].copyWithin(to, from, from + size);
        this.#values[i].copyWithin(to, from, from + size);
      }
      this.#bindSlot(last, slot);
    }
  }

  /** Grows the pool so every member has room for `needed` tokens. */
  reserveBatch(needed: number): void {
    if (needed > this.#capacity) this.#resize(this.#roundCapacity(needed), this.#slots);
  }

  /** The pool of layer `layer` over the current members, as the graph's past inputs. */
  batchPast(layer: number): { key: ort.Tensor; value: ort.Tensor } {
    const n = this.#members.length;
    const size = n * this.#slotSize(this.#capacity);
    const dims = [n, this.#shape.numKvHeads, this.#capacity, this.#shape.headDim];
    return {
      key: new ort.Tensor('float32', this.#keys[layer].subarray(0, size), dims),
      value: new ort.Tensor('float32', this.#values[layer].subarray(0, size), dims),
    };
  }

  /**
   * Writes a graph run's new keys and values of layer `layer`, [B, n, kvH·hd] (BSNH), after the cached
   * tokens of each sequence (B = 1 for `seqs` of one sequence, else the batch members).
   */
  append(layer: number, seqs: readonly Sequence[], n: number, k: Float32Array, v: Float32Array): void {
    const { numKvHeads: kvH, headDim: hd } = this.#shape;
    seqs.forEach((seq, b) => {
      const keys = seq.keys[layer];
      const values = seq.values[layer];
      for (let t = 0; t < n; t++) {
        for (let h = 0; h < kvH; h++) {
          const src = ((b * n + t) * kvH + h) * hd;
          const dst = (h * seq.capacity + seq.length + t) * hd;
          keys.set(k.subarray(src, src + hd), dst);
          values.set(v.subarray(src, src + hd), dst);
        }
      }
    });
  }

  #roundCapacity(needed: number): number {
    return Math.ceil(needed / this.#capacityStep) * this.#capacityStep;
  }

  #slotSize(capacity: number): number {
    return this.#shape.numKvHeads * capacity * this.#shape.headDim;
  }

  #offset(slot: number): number {
    return slot * this.#slotSize(this.#capacity);
  }

  #allocate(capacity: number, slots = 1): Float32Array[] {
    return Array.from(
      { length: this.#shape.numLayers },
      () => new Float32Array(slots * this.#slotSize(capacity)),
    );
  }

  /** Copies the valid part of a cache (per KV head) between buffers of possibly different capacities. */
  #copyCache(tokens: number, from: CacheView, to: CacheView): void {
    const { numLayers, numKvHeads: kvH, headDim: hd } = this.#shape;
    const valid = tokens * hd;
    for (let i = 0; i < numLayers; i++) {
      for (let h = 0; h < kvH; h++) {
        const src = from.offset + h * from.capacity * hd;
        const dst = to.offset + h * to.capacity * hd;
        to.keys[i].set(from.keys[i].subarray(src, src + valid), dst);
        to.values[i].set(from.values[i].subarray(src, src + valid), dst);
      }
    }
  }

  /** Slot `slot` of the pool. */
  #slotView(slot: number): CacheView {
    return { keys: this.#keys, values: this.#values, capacity: this.#capacity, offset: this.#offset(slot) };
  }

  #resize(capacity: number, slots: number): void {
    const keys = this.#allocate(capacity, slots);
    const values = this.#allocate(capacity, slots);
    const size = this.#slotSize(capacity);
    this.#members.forEach((seq, slot) => {
      this.#copyCache(seq.length, this.#slotView(slot), { keys, values, capacity, offset: slot * size });
    });
    this.#keys = keys;
    this.#values = values;
    this.#capacity = capacity;
    this.#slots = slots;
    for (const [slot, seq] of this.#members.entries()) this.#bindSlot(seq, slot);
  }

  #bindSlot(seq: Sequence, slot: number): void {
    const start = this.#offset(slot);
    const end = start + this.#slotSize(this.#capacity);
    this.#bindOwn(
      seq,
      this.#keys.map((k) => k.subarray(start, end)),
      this.#values.map((v) => v.subarray(start, end)),
      this.#capacity,
    );
    seq.slot = slot;
  }

  #bindOwn(seq: Sequence, keys: Float32Array[], values: Float32Array[], capacity: number): void {
    const dims = [1, this.#shape.numKvHeads, capacity, this.#shape.headDim];
    seq.keys = keys;
    seq.values = values;
    seq.capacity = capacity;
    seq.slot = undefined;
    seq.pastTensors = keys.map((key, i) => ({
      key: new ort.Tensor('float32', key, dims),
      value: new ort.Tensor('float32', values[i], dims),
    }));
  }
}
