/**
 * The image steps of a generate call before its prefill: which images need features after the reused
 * prefix, one tile of vision encoding per scheduler step (features cached by content key), and the
 * prompt embeddings with those features in the image-context rows.
 */
import { InternVLError } from '../errors.js';
import { scatterImageEmbeddings } from './embeddings.js';
import type { FeatureCache } from './feature-cache.js';
import type { Job } from './generate-job.js';
import type { GeneratorDeps } from './generate-types.js';

/** Which images need features: those with a token after the reused prefix and not in the cache. */
export function planImages(job: Job, deps: GeneratorDeps, cache: FeatureCache): void {
  const { imgContextId, tokensPerTile } = deps;
  let skippedRows = 0;
  for (let t = 0; t < job.reused; t++) if (job.request.inputIds[t] === imgContextId) skippedRows++;
  let start = 0;
  job.features = job.request.images.map((image) => {
    const end = start + image.numTiles * tokensPerTile;
    const needed = end > skippedRows;
    start = end;
    return needed ? (cache.get(image.key) ?? undefined) : new Float32Array(0);
  });
  const pending = new Map<string, number>();
  job.request.images.forEach((image, i) => {
    if (job.features[i] === undefined) pending.set(image.key, image.numTiles);
  });
  job.tilesToEncode = [...pending.values()].reduce((a, b) => a + b, 0);
}

/** Encodes one tile of the next image that still lacks features; false when none is left. */
export async function encodeNextTile(job: Job, deps: GeneratorDeps, cache: FeatureCache): Promise<boolean> {
  const images = job.request.images;
  // An image repeated in one request is encoded once: later copies find the first in the cache.
  for (; job.imageIndex < images.length; job.imageIndex++) {
    const i = job.imageIndex;
    job.features[i] ??= cache.get(images[i].key);
    if (job.features[i] === undefined) break;
  }
  if (job.imageIndex >= job.request.images.length) return false;
  const image = job.request.images[job.imageIndex];
  if (!image.pixelValues) {
    throw new InternVLError('BAD_INPUT', `image ${image.key} is not cached and has no pixel values`);
  }
  const size = deps.tileValues;
  const tile = image.pixelValues.subarray(job.tileIndex * size, (job.tileIndex + 1) * size);
  job.tileFeatures.push(await deps.encode(tile, 1));
  job.encodedTiles++;
  job.onEvent({ type: 'encode', done: job.encodedTiles, total: job.tilesToEncode });
  job.tileIndex++;
  if (job.tileIndex === image.numTiles) {
    const rows = deps.tokensPerTile * deps.decoder.dims.hiddenSize;
    const features = new Float32Array(image.numTiles * rows);
    for (const [i, f] of job.tileFeatures.entries()) features.set(f, i * rows);
    cache.set(image.key, features);
    job.features[job.imageIndex] = features;
    job.tileFeatures = [];
    job.tileIndex = 0;
  }
  return true;
}

/** Embeddings of the prompt after the reused prefix, with image features in the image-context rows. */
export function promptEmbeddings(job: Job, deps: GeneratorDeps): Float32Array {
  const { decoder, imgContextId, tokensPerTile } = deps;
  const ids = job.request.inputIds;
  const from = job.reused;
  const d = decoder.dims.hiddenSize;
  let firstRow = 0;
  for (let t = 0; t < from; t++) if (ids[t] === imgContextId) firstRow++;
  // Each image's feature rows not already in the reused prefix.
  const pieces: Float32Array[] = [];
  let imageStart = 0;
  job.request.images.forEach((image, i) => {
    const imageEnd = imageStart + image.numTiles * tokensPerTile;
    if (imageEnd > firstRow)
      pieces.push(job.features[i]!.subarray((Math.max(firstRow, imageStart) - imageStart) * d));
    imageStart = imageEnd;
  });
  return scatterImageEmbeddings(decoder.embed(ids.slice(from)), ids.slice(from), imgContextId, pieces);
}
