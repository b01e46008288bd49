/**
 * Image decoding in a browser into the same RgbImage that Node's loadImage (sharp) gives, matching
 * Pillow's `convert('RGB')`:
 * - PNGs of 8 bits or fewer per sample, not interlaced, are decoded here (zlib through the browser's
 *   DecompressionStream): a canvas stores premultiplied alpha, which would change the colour of every
 *   translucent pixel, while Pillow keeps it and drops alpha.
 * - Everything else (JPEG, WebP, GIF, BMP, other PNGs) goes through createImageBitmap with colour
 *   management and premultiplication off, drawn on an OffscreenCanvas; alpha is dropped.
 */
import { InternVLError } from '../errors.js';
import type { RgbImage } from './rgb-image.js';

/** Pillow's decompression-bomb threshold (`Image.MAX_IMAGE_PIXELS`), as loadImage in Node. */
export const BROWSER_MAX_IMAGE_PIXELS = 178_956_970;

interface ImageBitmapLike {
  width: number;
  height: number;
  close(): void;
}
interface Canvas2dLike {
  drawImage(image: ImageBitmapLike, x: number, y: number): void;
  getImageData(x: number, y: number, w: number, h: number): { data: Uint8ClampedArray };
}
interface BrowserImageApi {
  createImageBitmap(blob: Blob, options: Record<string, string>): Promise<ImageBitmapLike>;
  OffscreenCanvas: new (
    w: number,
    h: number,
  ) => { getContext(kind: '2d', options?: Record<string, unknown>): Canvas2dLike | null };
}

const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

function badImage(label: string, message: string, cause?: unknown): InternVLError {
  return new InternVLError('BAD_IMAGE', `${label}: ${message}`, cause === undefined ? undefined : { cause });
}

function isPng(bytes: Uint8Array): boolean {
  return bytes.length > 8 && PNG_SIGNATURE.every((b, i) => bytes[i] === b);
}

interface PngHeader {
  width: number;
  height: number;
  bitDepth: number;
  colorType: number;
  interlace: number;
  palette?: Uint8Array;
  idat: Uint8Array[];
}

function readPngChunks(bytes: Uint8Array, label: string): PngHeader {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 8;
  let header: PngHeader | undefined;
  let ended = false;
  while (pos + 8 <= bytes.length) {
    const length = view.getUint32(pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + length);
    if (data.length !== length) throw badImage(label, `truncated PNG (chunk ${type})`);
    if (type === 'IHDR') {
      if (length < 13) throw badImage(label, 'PNG IHDR chunk is too short');
      header = {
        width: view.getUint32(pos + 8),
        height: view.getUint32(pos + 12),
        bitDepth: data[8],
        colorType: data[9],
        interlace: data[12],
        idat: [],
      };
    } else if (type === 'PLTE' && header) {
      header.palette = data;
    } else if (type === 'IDAT' && header) {
      header.idat.push(data);
    } else if (type === 'IEND') {
      ended = true;
      break;
    }
    pos += 12 + length;
  }
  if (!header) throw badImage(label, 'PNG without an IHDR chunk');
  if (!ended || header.idat.length === 0) throw badImage(label, 'truncated PNG (no image data end)');
  return header;
}

const CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

async function inflate(parts: Uint8Array[], label: string): Promise<Uint8Array> {
  const Decompression = (globalThis as { DecompressionStream?: typeof DecompressionStream })
    .DecompressionStream;
  if (!Decompression) throw badImage(label, 'this browser has no DecompressionStream to inflate PNG data');
  try {
    const stream = new Blob(parts).stream().pipeThrough(new Decompression('deflate'));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch (err) {
    throw badImage(label, `corrupt PNG data: ${(err as Error).message}`, err);
  }
}

/** Reverses the PNG row filters in place; returns the raw scanlines without filter bytes. */
function unfilter(
  data: Uint8Array,
  rowBytes: number,
  height: number,
  bpp: number,
  label: string,
): Uint8Array {
  if (data.length < (rowBytes + 1) * height) throw badImage(label, 'truncated PNG image data');
  const out = new Uint8Array(rowBytes * height);
  for (let y = 0; y < height; y++) {
    const filter = data[y * (rowBytes + 1)];
    const src = y * (rowBytes + 1) + 1;
    const row = y * rowBytes;
    const prev = row - rowBytes;
    for (let x = 0; x < rowBytes; x++) {
      const raw = data[src + x];
      const a = x >= bpp ? out[row + x - bpp] : 0;
      const b = y > 0 ? out[prev + x] : 0;
      const c = x >= bpp && y > 0 ? out[prev + x - bpp] : 0;
      let v: number;
      switch (filter) {
        case 0:
          v = raw;
          break;
        case 1:
          v = raw + a;
          break;
        case 2:
          v = raw + b;
          break;
        case 3:
          v = raw + ((a + b) >> 1);
          break;
        case 4: {
          const p = a + b - c;
          const pa = Math.abs(p - a);
          const pb = Math.abs(p - b);
          const pc = Math.abs(p - c);
          v = raw + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
          break;
        }
        default:
          throw badImage(label, `PNG row ${y} has unknown filter type ${filter}`);
      }
      out[row + x] = v & 255;
    }
  }
  return out;
}

/** PNGs of 1–8 bits per sample, not interlaced; undefined for the others (decoded by the canvas). */
async function decodePng(bytes: Uint8Array, label: string, maxPixels: number): Promise<RgbImage | undefined> {
  const h = readPngChunks(bytes, label);
  const channels = CHANNELS[h.colorType];
  if (channels === undefined) throw badImage(label, `PNG colour type ${h.colorType} is not valid`);
  if (h.width < 1 || h.height < 1) throw badImage(label, `PNG size ${h.width}x${h.height} is empty`);
  checkPixels(h.width, h.height, maxPixels, label);
  if (h.bitDepth > 8 || h.interlace !== 0) return undefined;
  if (h.colorType === 3 && !h.palette) throw badImage(label, 'palette PNG without a PLTE chunk');
  const bitsPerPixel = channels * h.bitDepth;
  const rowBytes = Math.ceil((h.width * bitsPerPixel) / 8);
  const raw = unfilter(
    await inflate(h.idat, label),
    rowBytes,
    h.height,
    Math.max(1, bitsPerPixel >> 3),
    label,
  );
  const out = new Uint8Array(h.width * h.height * 3);
  const depth = h.bitDepth;
  const maxValue = (1 << depth) - 1;
  const sample = (row: number, index: number): number => {
    if (depth === 8) return raw[row + index];
    const bit = index * depth;
    return (raw[row + (bit >> 3)] >> (8 - depth - (bit & 7))) & maxValue;
  };
  const palette = h.palette;
  for (let y = 0; y < h.height; y++) {
    const row = y * rowBytes;
    for (let x = 0; x < h.width; x++) {
      const o = (y * h.width + x) * 3;
      if (h.colorType === 2 || h.colorType === 6) {
        out[o] = raw[row + x * channels];
        out[o + 1] = raw[row + x * channels + 1];
        out[o + 2] = raw[row + x * channels + 2];
      } else if (h.colorType === 3) {
        const i = sample(row, x);
        if (!palette || i * 3 + 2 >= palette.length) {
          out[o] = out[o + 1] = out[o + 2] = 0;
        } else {
          out[o] = palette[i * 3];
          out[o + 1] = palette[i * 3 + 1];
          out[o + 2] = palette[i * 3 + 2];
        }
      } else {
        // Grey (with or without alpha); low bit depths scale to 0..255 as Pillow's L;1/L;2/L;4 unpackers.
        const v = sample(row, x * channels);
        const g = depth === 8 ? v : Math.round((v * 255) / maxValue);
        out[o] = out[o + 1] = out[o + 2] = g;
      }
    }
  }
  return { width: h.width, height: h.height, data: out };
}

function checkPixels(width: number, height: number, maxPixels: number, label: string): void {
  if (width * height > maxPixels) {
    throw badImage(label, `${width}x${height} = ${width * height} pixels is above the limit of ${maxPixels}`);
  }
}

async function decodeWithCanvas(blob: Blob, label: string, maxPixels: number): Promise<RgbImage> {
  const api = globalThis as unknown as Partial<BrowserImageApi>;
  if (!api.createImageBitmap || !api.OffscreenCanvas) {
    throw badImage(label, 'decoding this image needs createImageBitmap and OffscreenCanvas (a browser)');
  }
  let bitmap: ImageBitmapLike;
  try {
    bitmap = await api.createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch (err) {
    throw badImage(label, `cannot decode the image: ${(err as Error).message}`, err);
  }
  try {
    const { width, height } = bitmap;
    checkPixels(width, height, maxPixels, label);
    const ctx = new api.OffscreenCanvas(width, height).getContext('2d', { willReadFrequently: true });
    if (!ctx) throw badImage(label, 'no 2D canvas context to decode the image');
    ctx.drawImage(bitmap, 0, 0);
    const rgba = ctx.getImageData(0, 0, width, height).data;
    const data = new Uint8Array(width * height * 3);
    for (let i = 0, j = 0; j < data.length; i += 4, j += 3) {
      data[j] = rgba[i];
      data[j + 1] = rgba[i + 1];
      data[j + 2] = rgba[i + 2];
    }
    return { width, height, data };
  } finally {
    bitmap.close();
  }
}

export interface DecodeImageOptions {
  /** Names the image in error messages (a file name or URL). */
  label?: string;
  maxPixels?: number;
}

/** Decodes encoded image bytes (a File, Blob or bytes) into RGB, as Pillow's convert('RGB'). */
export async function decodeImage(
  input: Blob | Uint8Array,
  options: DecodeImageOptions = {},
): Promise<RgbImage> {
  const label =
    options.label ?? (input instanceof Uint8Array ? `bytes (${input.byteLength} bytes)` : 'image');
  const maxPixels = options.maxPixels ?? BROWSER_MAX_IMAGE_PIXELS;
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(await input.arrayBuffer());
  if (bytes.byteLength === 0) throw badImage(label, 'the image is empty');
  if (isPng(bytes)) {
    const png = await decodePng(bytes, label, maxPixels);
    if (png) return png;
  }
  const blob = input instanceof Uint8Array ? new Blob([bytes]) : input;
  return decodeWithCanvas(blob, label, maxPixels);
}
