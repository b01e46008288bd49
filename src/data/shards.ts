import { InternVLError } from '../errors.js';
import { float32ToBf16 } from '../io/float-formats.js';
import { type TensorToWrite, writeSafetensors } from '../io/safetensors-write.js';
import { toPixelValues } from '../preprocess/pixels.js';
import type { LossReduction } from '../text/training.js';
import type { DatasetSpec } from './meta.js';
import { buildShardArrays, type Pack, type TokenizedItem } from './pack.js';
import { loadSampleTiles, type PreparedSample, type PrepareOptions, type SampleTiles } from './prepare.js';
import type { Rng } from './sampling.js';

export const SHARD_FORMAT = 'internvl-ts.packed-shard.v1';

/** A prepared sample as a pack item. */
export interface ShardItem extends TokenizedItem {
  prepared: PreparedSample;
  dataset: DatasetSpec;
}

export function toShardItem(prepared: PreparedSample, dataset: DatasetSpec): ShardItem {
  return {
    prepared,
    dataset,
    inputIds: prepared.inputIds,
    labels: prepared.labels,
    numTokens: prepared.inputIds.length,
    numTiles: prepared.numTiles,
  };
}

/** What a shard records about each sample, in `__metadata__.samples` (JSON). */
export interface ShardSampleReference {
  dataset: string;
  annotation: string;
  line: number;
  kind: PreparedSample['sample']['kind'];
  images: string[];
  video: string | null;
  num_patches: number[];
  num_frames: number | null;
  jpeg_qualities: number[] | null;
}

export interface ShardSummary {
  file: string;
  packs: number;
  samples: number;
  tokens: number;
  tiles: number;
}

export interface WriteShardOptions {
  reduction: LossReduction;
  /** Decode and store the tiles (`pixel_values` BF16, `image_flags`); otherwise only references. */
  tiles?: { rng: Rng; prepare: PrepareOptions };
  /**
   * Called for a sample whose tiles cannot be decoded (a video that does not open, an image changed
   * since it was checked); the sample is left out of its pack. Without it such a sample is an error.
   */
  onSkip?: (item: ShardItem, message: string) => void;
}

interface PackTiles {
  /** The packs without the samples that failed to decode; packs left empty are gone. */
  packs: Pack<ShardItem>[];
  pixels: Uint16Array;
  flags: Int32Array;
  tileCount: number;
}

/**
 * Decodes every item's tiles straight into BF16 pixel values (one sample's tiles in memory at a time),
 * leaving out through onSkip the items that fail.
 */
async function loadPackTiles(
  packs: readonly Pack<ShardItem>[],
  tiles: NonNullable<WriteShardOptions['tiles']>,
  onSkip: WriteShardOptions['onSkip'],
): Promise<PackTiles> {
  const size = tiles.prepare.tileSize ?? 448;
  const tileValues = 3 * size * size;
  const planned = packs.reduce((sum, pack) => sum + pack.numTiles, 0);
  const pixels = new Uint16Array(planned * tileValues);
  const flags = new Int32Array(planned);
  let tile = 0;
  const kept: Pack<ShardItem>[] = [];
  for (const pack of packs) {
    const items: ShardItem[] = [];
    for (const item of pack.items) {
      const { file: annotation, line } = item.prepared.sample;
      let loaded: SampleTiles;
      try {
        loaded = await loadSampleTiles(item.prepared, item.dataset, tiles.rng, tiles.prepare);
      } catch (err) {
        if (!(err instanceof InternVLError) || !onSkip) throw err;
        onSkip(item, err.message);
        continue;
      }
      if (loaded.tiles.length !== item.numTiles) {
        throw new InternVLError(
          'INTERNAL',
          `${annotation}:${line}: decoded ${loaded.tiles.length} tiles, planned ${item.numTiles}`,
        );
      }
      float32ToBf16(toPixelValues(loaded.tiles), pixels.subarray(tile * tileValues));
      flags.set(loaded.imageFlags, tile);
      tile += loaded.tiles.length;
      items.push(item);
    }
    if (items.length === 0) continue;
    const sum = (key: 'numTokens' | 'numTiles') => items.reduce((n, item) => n + item[key], 0);
    kept.push({ items, numTokens: sum('numTokens'), numTiles: sum('numTiles') });
  }
  return {
    packs: kept,
    pixels: pixels.subarray(0, tile * tileValues),
    flags: flags.subarray(0, tile),
    tileCount: tile,
  };
}

function toInt64(values: Int32Array): BigInt64Array {
  const out = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = BigInt(values[i]);
  return out;
}

/**
 * Writes packs as one safetensors file: `input_ids` and `labels` I64 [T] (−100 where not supervised),
 * `loss_weight` F32 [T] (0 where not supervised), `cu_seqlens` I32 [S+1] (sample boundaries over the
 * flattened tokens), `pack_cu_seqlens` I32 [P+1] and `pack_sample_offsets` I32 [P+1] (pack boundaries in
 * tokens and in samples), `sample_tiles` I32 [S]; with tiles also `pixel_values` BF16 [N,3,S,S] and
 * `image_flags` I32 [N]. `__metadata__.samples` lists each sample's source line and visual references.
 * Returns undefined, writing nothing, when no pack is left (every sample skipped through onSkip).
 */
export async function writePackShard(
  file: string,
  allPacks: readonly Pack<ShardItem>[],
  options: WriteShardOptions,
): Promise<ShardSummary | undefined> {
  const decoded = options.tiles ? await loadPackTiles(allPacks, options.tiles, options.onSkip) : undefined;
  const packs = decoded?.packs ?? allPacks;
  if (packs.length === 0) return undefined;
  const arrays = buildShardArrays(packs, options.reduction);
  const items = packs.flatMap((pack) => pack.items);
  const tensors: Record<string, TensorToWrite> = {
    input_ids: { dtype: 'I64', shape: [arrays.inputIds.length], data: toInt64(arrays.inputIds) },
    labels: { dtype: 'I64', shape: [arrays.labels.length], data: toInt64(arrays.labels) },
    loss_weight: { dtype: 'F32', shape: [arrays.lossWeight.length], data: arrays.lossWeight },
    cu_seqlens: { dtype: 'I32', shape: [arrays.cuSeqlens.length], data: arrays.cuSeqlens },
    pack_cu_seqlens: { dtype: 'I32', shape: [arrays.packCuSeqlens.length], data: arrays.packCuSeqlens },
    pack_sample_offsets: {
      dtype: 'I32',
      shape: [arrays.packSampleOffsets.length],
      data: arrays.packSampleOffsets,
    },
    sample_tiles: {
      dtype: 'I32',
      shape: [items.length],
      data: Int32Array.from(items, (item) => item.numTiles),
    },
  };
  const tileCount = items.reduce((sum, item) => sum + item.numTiles, 0);
  if (options.tiles && decoded) {
    const size = options.tiles.prepare.tileSize ?? 448;
    tensors.pixel_values = { dtype: 'BF16', shape: [tileCount, 3, size, size], data: decoded.pixels };
    tensors.image_flags = { dtype: 'I32', shape: [tileCount], data: decoded.flags };
  }
  const samples: ShardSampleReference[] = items.map(({ prepared }) => ({
    dataset: prepared.sample.dataset,
    annotation: prepared.sample.file,
    line: prepared.sample.line,
    kind: prepared.sample.kind,
    images: prepared.sample.images,
    video: prepared.sample.video ?? null,
    num_patches: prepared.numPatches,
    num_frames: prepared.numFrames ?? null,
    jpeg_qualities: prepared.jpegQualities,
  }));
  await writeSafetensors(file, tensors, {
    format: SHARD_FORMAT,
    loss_reduction: options.reduction,
    samples: JSON.stringify(samples),
  });
  return {
    file,
    packs: packs.length,
    samples: items.length,
    tokens: arrays.inputIds.length,
    tiles: tileCount,
  };
}
