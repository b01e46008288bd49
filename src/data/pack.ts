import { InternVLError } from '../errors.js';
import { type LossReduction, lossWeights } from '../text/training.js';
import { type Rng, weightedChoice } from './sampling.js';

/** Limits of the packed dataset (`dataset_packed.py`); defaults are the 2.5 stage scripts' values. */
export interface PackLimits {
  /** max_packed_tokens. */
  maxTokens: number;
  /** num_images_expected: most tiles per pack (48). */
  maxTiles?: number;
  /** max_buffer_size: open packs kept before the one with the most tiles is emitted (20). */
  maxBuffers?: number;
}

export interface PackItem {
  numTokens: number;
  /** Tiles the sample feeds the vision model (text samples count their dummy tile). */
  numTiles: number;
}

export interface Pack<T extends PackItem> {
  items: T[];
  numTokens: number;
  numTiles: number;
}

/**
 * The buffer logic of `PackedDataset` with allow_overflow False and strict_mode False. Open packs are kept sorted
 * by tile count, descending; a sample joins the first open pack where both its tokens and its tiles still fit,
 * else starts a new one. A pack is emitted as soon as it holds exactly maxTokens tokens or maxTiles tiles, and while
 * more than maxBuffers packs are open the one with the most tiles is emitted. Samples are never split: one that
 * alone exceeds a limit is refused (`add` throws), where the reference would have truncated or dropped it.
 */
export class Packer<T extends PackItem> {
  readonly maxTokens: number;
  readonly maxTiles: number;
  readonly maxBuffers: number;
  #open: Pack<T>[] = [];

  constructor(limits: PackLimits) {
    this.maxTokens = limits.maxTokens;
    this.maxTiles = limits.maxTiles ?? 48;
    this.maxBuffers = limits.maxBuffers ?? 20;
    for (const [name, value] of [
      ['maxTokens', this.maxTokens],
      ['maxTiles', this.maxTiles],
      ['maxBuffers', this.maxBuffers],
    ] as const) {
      if (!Number.isSafeInteger(value) || value < 1) {
        throw new InternVLError(
          'BAD_INPUT',
          `packing limit ${name} must be a positive integer, got ${value}`,
        );
      }
    }
  }

  /** Why an item can never be packed, or undefined when it fits an empty pack. */
  refusal(item: PackItem): string | undefined {
    if (item.numTokens > this.maxTokens) {
      return `sample has ${item.numTokens} tokens, more than the pack length ${this.maxTokens}`;
    }
    if (item.numTiles > this.maxTiles) {
      return `sample has ${item.numTiles} tiles, more than the ${this.maxTiles} tiles a pack holds`;
    }
    if (item.numTokens < 1) return 'sample has no tokens';
    return undefined;
  }

  /** Adds an item; returns the packs that became complete. */
  add(item: T): Pack<T>[] {
    const refusal = this.refusal(item);
    if (refusal) throw new InternVLError('BAD_INPUT', refusal);
    const at = this.#open.findIndex(
      (pack) =>
        pack.numTiles + item.numTiles <= this.maxTiles && pack.numTokens + item.numTokens <= this.maxTokens,
    );
    const pack = at === -1 ? { items: [], numTokens: 0, numTiles: 0 } : this.#open.splice(at, 1)[0];
    pack.items.push(item);
    pack.numTokens += item.numTokens;
    pack.numTiles += item.numTiles;

    const done: Pack<T>[] = [];
    if (pack.numTokens >= this.maxTokens || pack.numTiles >= this.maxTiles) {
      done.push(pack);
    } else {
      const before = this.#open.findIndex((open) => open.numTiles < pack.numTiles);
      this.#open.splice(before === -1 ? this.#open.length : before, 0, pack);
    }
    while (this.#open.length > this.maxBuffers) done.push(this.#open.shift() as Pack<T>);
    return done;
  }

  /** The open packs, most tiles first; the packer is empty afterwards. */
  flush(): Pack<T>[] {
    const rest = this.#open;
    this.#open = [];
    return rest;
  }
}

/**
 * The dataset order of the packed loader: each draw picks a dataset with probability ∝ its length among those
 * with samples left (replacement False: a drained dataset leaves the draw). Yields dataset indices until every
 * dataset has given all its samples. Seeded by `rng`, so reproducible, but not numpy's stream.
 */
export function* interleaveDatasets(lengths: readonly number[], rng: Rng): Generator<number> {
  const remaining = [...lengths];
  const active = lengths.map((_, i) => i).filter((i) => lengths[i] > 0);
  const weights = active.map((i) => lengths[i]);
  while (active.length > 0) {
    const slot = weightedChoice(rng, weights);
    const picked = active[slot];
    remaining[picked]--;
    if (remaining[picked] === 0) {
      active.splice(slot, 1);
      weights.splice(slot, 1);
    }
    yield picked;
  }
}

/** Token arrays of one sample in a shard. */
export interface TokenizedItem extends PackItem {
  inputIds: Int32Array;
  labels: Int32Array;
}

/** The flattened token tensors of a shard. */
export interface ShardArrays {
  inputIds: Int32Array;
  labels: Int32Array;
  lossWeight: Float32Array;
  /** Sample boundaries over the flattened tokens: 0, end of sample 1, …, total. */
  cuSeqlens: Int32Array;
  /** Pack boundaries over the flattened tokens: 0, end of pack 1, …, total. */
  packCuSeqlens: Int32Array;
  /** Pack boundaries in samples: pack p holds samples [packSampleOffsets[p], packSampleOffsets[p+1]). */
  packSampleOffsets: Int32Array;
}

/**
 * Concatenates packs into shard tensors. Loss weights follow `packed_collate_fn`: each sample's tokens get
 * len2weight(n) for its n supervised labels, 0 where the label is ignored. No padding is added; a trainer pads
 * each pack to its length itself (pad id 0, label −100, weight 0).
 */
export function buildShardArrays(
  packs: readonly Pack<TokenizedItem>[],
  reduction: LossReduction,
): ShardArrays {
  const items = packs.flatMap((pack) => pack.items);
  const total = items.reduce((sum, item) => sum + item.inputIds.length, 0);
  const inputIds = new Int32Array(total);
  const labels = new Int32Array(total);
  const cuSeqlens = new Int32Array(items.length + 1);
  let offset = 0;
  items.forEach((item, i) => {
    if (item.labels.length !== item.inputIds.length) {
      throw new InternVLError(
        'BAD_INPUT',
        `sample ${i} has ${item.inputIds.length} ids but ${item.labels.length} labels`,
      );
    }
    inputIds.set(item.inputIds, offset);
    labels.set(item.labels, offset);
    offset += item.inputIds.length;
    cuSeqlens[i + 1] = offset;
  });
  const packCuSeqlens = new Int32Array(packs.length + 1);
  const packSampleOffsets = new Int32Array(packs.length + 1);
  packs.forEach((pack, p) => {
    packCuSeqlens[p + 1] = packCuSeqlens[p] + pack.items.reduce((sum, item) => sum + item.inputIds.length, 0);
    packSampleOffsets[p + 1] = packSampleOffsets[p] + pack.items.length;
  });
  return {
    inputIds,
    labels,
    lossWeight: lossWeights(labels, { cuSeqlens }, reduction),
    cuSeqlens,
    packCuSeqlens,
    packSampleOffsets,
  };
}
