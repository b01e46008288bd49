/**
 * Decoded images and video frames → the engine's image inputs: tiles (dynamic tiling, PIL-exact
 * resize), normalised pixel values, and a content key for the feature cache. Runs in the media
 * worker so the caller's thread (an HTTP server's, say) does no pixel work.
 */
import { createHash } from 'node:crypto';
import type { ImageRef } from '../engine/generate.js';
import type { RgbImage } from '../preprocess/image.js';
import { toPixelValues } from '../preprocess/pixels.js';
import { dynamicPreprocess } from '../preprocess/tiles.js';
import { videoToTiles } from '../preprocess/video.js';

export interface ImageTiling {
  minTiles: number;
  maxTiles: number;
  useThumbnail: boolean;
  tileSize: number;
}

function contentKey(tiles: RgbImage[]): string {
  const h = createHash('sha256');
  for (const t of tiles) {
    h.update(`${t.width}x${t.height};`);
    h.update(t.data);
  }
  return h.digest('hex');
}

/** One image → its tiles as one engine input. */
export function prepareImage(image: RgbImage, tiling: ImageTiling): Required<ImageRef> {
  const { tiles } = dynamicPreprocess(image, tiling);
  return { key: contentKey(tiles), numTiles: tiles.length, pixelValues: toPixelValues(tiles) };
}

/** Video frames → one single-tile engine input per frame. */
export function prepareFrames(frames: RgbImage[], tileSize: number): Required<ImageRef>[] {
  return videoToTiles(frames, tileSize).map((tile) => ({
    key: contentKey([tile]),
    numTiles: 1,
    pixelValues: toPixelValues([tile]),
  }));
}
