import { InternVLError } from '../errors.js';
import { float32ToBf16, type TensorToWrite, writeSafetensors } from '../io/safetensors.js';
import { toPixelValues } from '../preprocess/pixels.js';
import type { LossReduction } from '../text/training.js';
import type { DatasetSpec } from './meta.js';
import { buildShardArrays, type Pack, type TokenizedItem } from './pack.js';
import { loadSampleTiles, type PreparedSample, type PrepareOptions } from './prepare.js';
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
 */
export async function writePackShard(
  file: string,
  packs: readonly Pack<ShardItem>[],
  options: WriteShardOptions,
): Promise<ShardSummary> {
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
  if (options.tiles) {
    const size = options.tiles.prepare.tileSize ?? 448;
    const pixels = new Uint16Array(tileCount * 3 * size * size);
    const flags = new Int32Array(tileCount);
    let tile = 0;
    for (const item of items) {
      const loaded = await loadSampleTiles(
        item.prepared,
        item.dataset,
        options.tiles.rng,
        options.tiles.prepare,
      );
      if (loaded.tiles.length !== item.numTiles) {
        const { file: annotation, line } = item.prepared.sample;
        throw new InternVLError(
          'INTERNAL',
          `${annotation}:${line}: decoded ${loaded.tiles.length} tiles, planned ${item.numTiles}`,
        );
      }
      float32ToBf16(toPixelValues(loaded.tiles), pixels.subarray(tile * 3 * size * size));
      flags.set(loaded.imageFlags, tile);
      tile += loaded.tiles.length;
    }
    tensors.pixel_values = { dtype: 'BF16', shape: [tileCount, 3, size, size], data: pixels };
    tensors.image_flags = { dtype: 'I32', shape: [tileCount], data: flags };
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
