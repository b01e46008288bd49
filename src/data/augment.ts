import sharp from 'sharp';
import { InternVLError } from '../errors.js';
import type { RgbImage } from '../preprocess/image.js';
import { JPEG_QUALITY_MAX, JPEG_QUALITY_MIN } from './sampling.js';

/**
 * The training JPEG degradation (`dataset.py`): encode the RGB tile as JPEG at `quality` and decode it back.
 * The reference encodes with PIL (libjpeg defaults); this uses sharp's libjpeg-turbo/mozjpeg encoder without
 * its mozjpeg tunings, so the artefacts are similar but not byte-identical. What the recipe specifies, and
 * what is reproduced, is the quality range 75–100 and an independent random quality per tile.
 */
export async function jpegRecompress(tile: RgbImage, quality: number): Promise<RgbImage> {
  if (!Number.isInteger(quality) || quality < JPEG_QUALITY_MIN || quality > JPEG_QUALITY_MAX) {
    throw new InternVLError(
      'BAD_INPUT',
      `JPEG quality must be an integer in ${JPEG_QUALITY_MIN}..${JPEG_QUALITY_MAX}, got ${quality}`,
    );
  }
  const raw = { width: tile.width, height: tile.height, channels: 3 as const };
  const encoded = await sharp(tile.data, { raw })
    .jpeg({
      quality,
      // PIL's default subsampling is 4:2:0 at every quality.
      chromaSubsampling: '4:2:0',
      mozjpeg: false,
      trellisQuantisation: false,
      overshootDeringing: false,
      optimiseScans: false,
    })
    .toBuffer();
  const { data, info } = await sharp(encoded).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  if (info.width !== tile.width || info.height !== tile.height || info.channels !== 3) {
    throw new InternVLError(
      'INTERNAL',
      `JPEG round trip changed a ${tile.width}×${tile.height} tile's layout`,
    );
  }
  return {
    width: info.width,
    height: info.height,
    data: new Uint8Array(data.buffer, data.byteOffset, data.length),
  };
}

/** Applies `jpegRecompress` to each tile with its own quality; `qualities` has one entry per tile. */
export async function augmentTiles(
  tiles: readonly RgbImage[],
  qualities: readonly number[],
): Promise<RgbImage[]> {
  if (qualities.length !== tiles.length) {
    throw new InternVLError('BAD_INPUT', `${tiles.length} tiles but ${qualities.length} JPEG qualities`);
  }
  return Promise.all(tiles.map((tile, i) => jpegRecompress(tile, qualities[i])));
}
