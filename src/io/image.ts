import sharp, { type Metadata } from 'sharp';
import { InternVLError } from '../errors.js';
import { fetchMedia } from './media-fetch.js';
import type { RgbImage } from './rgb-image.js';

/** Pillow's decompression-bomb threshold (`Image.MAX_IMAGE_PIXELS`). */
export const DEFAULT_MAX_IMAGE_PIXELS = 178_956_970;
/** Largest encoded image accepted from a file, URL, data URL or buffer. */
export const DEFAULT_MAX_IMAGE_BYTES = 128 * 1024 * 1024;
export const DEFAULT_FETCH_TIMEOUT_MS = 30_000;

export interface LoadImageOptions {
  /** Reject images whose header declares more pixels than this, before decoding. */
  maxPixels?: number;
  /** Abort an http(s) fetch after this many milliseconds (headers and body together). */
  fetchTimeoutMs?: number;
  /** Reject encoded data larger than this many bytes. */
  maxBytes?: number;
}

export type ImageSource = string | URL | Uint8Array;

function badImage(message: string, cause?: unknown): InternVLError {
  return new InternVLError('BAD_IMAGE', message, cause === undefined ? undefined : { cause });
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function checkLimit(value: number, name: string): void {
  if (typeof value !== 'number' || Number.isNaN(value) || value <= 0) {
    throw new InternVLError('BAD_INPUT', `loadImage option ${name} must be a positive number, got ${value}`);
  }
}

/** Expand decoded samples with 1–4 channels (gray, gray+alpha, RGB, RGBA) to packed RGB, dropping alpha. */
function toRgb(samples: Uint8Array, channels: number, pixels: number): Uint8Array {
  if (channels === 3) return samples;
  const rgb = new Uint8Array(pixels * 3);
  if (channels === 1 || channels === 2) {
    for (let i = 0, p = 0; i < pixels; i++, p += channels) {
      rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = samples[p];
    }
  } else {
    for (let i = 0, p = 0; i < pixels; i++, p += channels) {
      rgb[i * 3] = samples[p];
      rgb[i * 3 + 1] = samples[p + 1];
      rgb[i * 3 + 2] = samples[p + 2];
    }
  }
  return rgb;
}

/**
 * Decode encoded image bytes to 8-bit RGB the way Pillow's `Image.open(f).convert('RGB')` does:
 * first frame only, no EXIF rotation, no colour management, alpha dropped without compositing,
 * gray replicated to R, G and B.
 */
export async function decodeImage(
  bytes: Uint8Array,
  label: string,
  maxPixels: number = DEFAULT_MAX_IMAGE_PIXELS,
): Promise<RgbImage> {
  checkLimit(maxPixels, 'maxPixels');
  if (bytes.length === 0) throw badImage(`${label} is empty, not an image`);
  let meta: Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw badImage(`${label} is not a readable image (${errorMessage(err)})`, err);
  }
  const { width, height } = meta;
  if (!width || !height) throw badImage(`${label} has no image dimensions`);
  if (width * height > maxPixels) {
    throw badImage(
      `${label} declares ${width}×${height} = ${width * height} pixels, above the limit of ${maxPixels}`,
    );
  }
  const input = sharp(bytes, {
    limitInputPixels: Number.isFinite(maxPixels) ? Math.floor(maxPixels) : false,
    failOn: 'error',
    autoOrient: false,
    ignoreIcc: true,
    pages: 1,
    page: 0,
  });
  try {
    if (meta.depth === 'ushort' && meta.channels === 1) {
      // 16-bit gray without alpha opens in Pillow as mode "I"; convert('RGB') clamps to 0..255.
      const { data, info } = await input
        .toColorspace('grey16')
        .raw({ depth: 'ushort' })
        .toBuffer({ resolveWithObject: true });
      const pixels = info.width * info.height;
      const gray = new Uint16Array(data.buffer, data.byteOffset, pixels);
      const rgb = new Uint8Array(pixels * 3);
      for (let i = 0; i < pixels; i++) {
        const v = Math.min(gray[i], 255);
        rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = v;
      }
      return { width: info.width, height: info.height, data: rgb };
    }
    // Other 16-bit layouts keep the high byte, as Pillow's ";16B" raw modes do.
    const { data, info } = await input
      .removeAlpha()
      .toColorspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    const pixels = info.width * info.height;
    const samples = new Uint8Array(data.buffer, data.byteOffset, data.length);
    if (info.channels < 1 || info.channels > 4 || samples.length !== pixels * info.channels) {
      throw badImage(
        `${label} decoded to an unexpected layout (${info.channels} channels, ${samples.length} bytes)`,
      );
    }
    return { width: info.width, height: info.height, data: toRgb(samples, info.channels, pixels) };
  } catch (err) {
    if (err instanceof InternVLError) throw err;
    throw badImage(`cannot decode image from ${label}: ${errorMessage(err)}`, err);
  }
}

/**
 * Load an image as 8-bit RGB from a file path, a file:, http(s): or data: URL, or encoded bytes.
 * Decoding matches Pillow's `Image.open(f).convert('RGB')` (see `decodeImage`).
 */
export async function loadImage(src: ImageSource, options: LoadImageOptions = {}): Promise<RgbImage> {
  const {
    maxPixels = DEFAULT_MAX_IMAGE_PIXELS,
    fetchTimeoutMs = DEFAULT_FETCH_TIMEOUT_MS,
    maxBytes = DEFAULT_MAX_IMAGE_BYTES,
  } = options;
  checkLimit(maxPixels, 'maxPixels');
  checkLimit(fetchTimeoutMs, 'fetchTimeoutMs');
  checkLimit(maxBytes, 'maxBytes');
  const { bytes, label } = await fetchMedia(src, {
    maxBytes,
    timeoutMs: fetchTimeoutMs,
    code: 'BAD_IMAGE',
    what: 'image',
  });
  return decodeImage(bytes, label, maxPixels);
}
