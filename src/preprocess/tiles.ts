import { InternVLError } from '../errors.js';
import type { RgbImage } from './image.js';
import { resizeBicubic } from './resize.js';
import { type Grid, planTiles, type TileBox, type TilingOptions } from './tiling.js';

export interface DynamicPreprocessResult {
  grid: Grid;
  /** Grid tiles in row-major order, then the thumbnail when one was appended; each tileSize². */
  tiles: RgbImage[];
}

/** Copy the [left, top, right, bottom) region of an image. */
export function cropImage(image: RgbImage, box: TileBox): RgbImage {
  const [left, top, right, bottom] = box;
  if (
    !(
      Number.isInteger(left) &&
      Number.isInteger(top) &&
      Number.isInteger(right) &&
      Number.isInteger(bottom)
    ) ||
    left < 0 ||
    top < 0 ||
    right > image.width ||
    bottom > image.height ||
    right <= left ||
    bottom <= top
  ) {
    throw new InternVLError(
      'BAD_INPUT',
      `crop box [${box.join(', ')}] is not inside the ${image.width}×${image.height} image`,
    );
  }
  const width = right - left;
  const height = bottom - top;
  const rowBytes = width * 3;
  const data = new Uint8Array(rowBytes * height);
  for (let y = 0; y < height; y++) {
    const start = ((top + y) * image.width + left) * 3;
    data.set(image.data.subarray(start, start + rowBytes), y * rowBytes);
  }
  return { width, height, data };
}

/**
 * InternVL's `dynamic_preprocess`: pick a grid, resize the whole image to cols·tileSize × rows·tileSize
 * (Pillow bicubic), cut it into row-major tiles, and append the whole image resized to tileSize² as a
 * thumbnail when there is more than one tile and `useThumbnail` is set.
 */
export function dynamicPreprocess(image: RgbImage, options: TilingOptions = {}): DynamicPreprocessResult {
  const tileSize = options.tileSize ?? 448;
  const plan = planTiles(image.width, image.height, options);
  const resized = resizeBicubic(image, plan.cols * tileSize, plan.rows * tileSize);
  const tiles = plan.boxes.length === 1 ? [resized] : plan.boxes.map((box) => cropImage(resized, box));
  if (plan.thumbnail) tiles.push(resizeBicubic(image, tileSize, tileSize));
  return { grid: { cols: plan.cols, rows: plan.rows }, tiles };
}
