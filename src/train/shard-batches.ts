/** Training batches (one per pack) from the data pipeline's packed shards (`internvl data pack`). */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { Checkpoint } from '../io/safetensors.js';
import type { TrainBatch } from './batch.js';

/** The packs of one shard file, in order; tiles with image_flags 0 (dummy tiles) are left out. */
export async function readShardBatches(file: string): Promise<TrainBatch[]> {
  const shard = await Checkpoint.open(file);
  try {
    const ids = await shard.readInt64('input_ids');
    const labels = await shard.readInt64('labels');
    const weights = await shard.readFloat32('loss_weight');
    const cu = await shard.readInt32('cu_seqlens');
    const packCu = await shard.readInt32('pack_cu_seqlens');
    const offsets = await shard.readInt32('pack_sample_offsets');
    const sampleTiles = await shard.readInt32('sample_tiles');
    const pixels = shard.has('pixel_values') ? await shard.readFloat32('pixel_values') : undefined;
    const flags = shard.has('image_flags') ? await shard.readInt32('image_flags') : undefined;
    const totalTiles = sampleTiles.reduce((a, b) => a + b, 0);
    // Image tiles per sample from the shard's sample references (text samples only have a dummy tile).
    const refs = pixels ? [] : sampleReferences(shard.metadata().samples);
    const imageTiles = (s: number) => {
      const patches = refs[s]?.num_patches;
      return Array.isArray(patches) ? patches.reduce((a, b) => a + b, 0) : 0;
    };
    const tileSize = pixels && totalTiles > 0 ? pixels.length / totalTiles : 0;
    const batches: TrainBatch[] = [];
    let tile = 0;
    for (let p = 0; p + 1 < packCu.length; p++) {
      const start = packCu[p];
      const end = packCu[p + 1];
      const samples = Array.from(cu.subarray(offsets[p], offsets[p + 1] + 1), (c) => c - start);
      let packTiles = 0;
      for (let s = offsets[p]; s < offsets[p + 1]; s++) packTiles += sampleTiles[s];
      let pixelValues: Float32Array | undefined;
      let numTiles = 0;
      // A pack with image samples needs their tiles; shards packed with --no-tiles hold none.
      let packImageTiles = 0;
      if (!pixels) for (let s = offsets[p]; s < offsets[p + 1]; s++) packImageTiles += imageTiles(s);
      if (packImageTiles > 0) {
        throw new InternVLError(
          'BAD_INPUT',
          `${file}: pack ${p} has image samples (${packImageTiles} tiles) but the shard stores no tiles (packed with --no-tiles); pack the data again with its tiles: internvl data pack META --model DIR --out SHARDS --max-len N --tiles`,
        );
      }
      if (packTiles > 0 && pixels) {
        const kept: number[] = [];
        for (let k = tile; k < tile + packTiles; k++) if (flags?.[k] !== 0) kept.push(k);
        pixelValues = new Float32Array(kept.length * tileSize);
        kept.forEach((k, i) => {
          pixelValues!.set(pixels.subarray(k * tileSize, (k + 1) * tileSize), i * tileSize);
        });
        numTiles = kept.length;
      }
      tile += packTiles;
      batches.push({
        inputIds: ids.slice(start, end),
        labels: labels.slice(start, end),
        lossWeight: weights.slice(start, end),
        cuSeqlens: Int32Array.from(samples),
        pixelValues: numTiles > 0 ? pixelValues : undefined,
        numTiles,
      });
    }
    return batches;
  } finally {
    await shard.close();
  }
}

/** The `samples` metadata of a shard (each sample's num_patches), or none when it is absent or unreadable. */
function sampleReferences(text: string | undefined): { num_patches?: number[] }[] {
  try {
    const refs = JSON.parse(text ?? '[]') as unknown;
    return Array.isArray(refs) ? refs : [];
  } catch {
    return [];
  }
}

/** Every pack of a shard folder: the shards listed in its index.json, else its .safetensors files by name. */
export async function readShardFolder(dir: string): Promise<TrainBatch[]> {
  let files: string[];
  try {
    const index = JSON.parse(await readFile(path.join(dir, 'index.json'), 'utf8')) as {
      shards?: { file: string }[];
    };
    files = (index.shards ?? []).map((s) => path.join(dir, s.file));
  } catch {
    let entries: string[];
    try {
      entries = await readdir(dir);
    } catch (err) {
      throw new InternVLError('NOT_FOUND', `${dir}: cannot read the shard folder`, { cause: err });
    }
    files = entries
      .filter((f) => f.endsWith('.safetensors'))
      .sort()
      .map((f) => path.join(dir, f));
  }
  const batches: TrainBatch[] = [];
  for (const f of files) batches.push(...(await readShardBatches(f)));
  if (batches.length === 0) throw new InternVLError('BAD_INPUT', `${dir}: no packed shards found`);
  return batches;
}
