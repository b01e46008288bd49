import { readFile, stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import sharp, { type Metadata } from 'sharp';
import { InternVLError } from '../errors.js';
import type { RgbImage } from '../preprocess/image.js';

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

interface EncodedImage {
  bytes: Uint8Array;
  /** Names the source in error messages: the path, the URL, "data URL (…)" or "bytes (N bytes)". */
  label: string;
}

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

/** The URL without user name or password, for messages. */
function describeUrl(url: URL): string {
  if (!url.username && !url.password) return url.href;
  const copy = new URL(url.href);
  copy.username = '';
  copy.password = '';
  return copy.href;
}

async function readImageFile(path: string, maxBytes: number): Promise<EncodedImage> {
  try {
    const info = await stat(path);
    if (info.isDirectory()) throw badImage(`image path is a directory: ${path}`);
    if (info.size > maxBytes) {
      throw badImage(`image file ${path} is ${info.size} bytes, above the limit of ${maxBytes}`);
    }
    return { bytes: new Uint8Array(await readFile(path)), label: path };
  } catch (err) {
    if (err instanceof InternVLError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw badImage(`image file not found: ${path}`, err);
    throw badImage(`cannot read image file ${path}: ${errorMessage(err)}`, err);
  }
}

async function fetchImage(url: URL, timeoutMs: number, maxBytes: number): Promise<EncodedImage> {
  const label = describeUrl(url);
  const signal = AbortSignal.timeout(Math.min(Math.ceil(timeoutMs), 2_147_483_647));
  const mapError = (err: unknown): InternVLError => {
    if (err instanceof InternVLError) return err;
    if (signal.aborted) return badImage(`fetching ${label} timed out after ${timeoutMs} ms`, err);
    const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : '';
    return badImage(`cannot fetch ${label}: ${errorMessage(err)}${cause}`, err);
  };
  let response: Response;
  try {
    response = await fetch(url, { signal, redirect: 'follow' });
  } catch (err) {
    throw mapError(err);
  }
  try {
    if (!response.ok) {
      throw badImage(`fetching ${label} failed: HTTP ${response.status} ${response.statusText}`.trimEnd());
    }
    const declared = Number(response.headers.get('content-length') ?? Number.NaN);
    if (declared > maxBytes) {
      throw badImage(`${label} is ${declared} bytes, above the limit of ${maxBytes}`);
    }
    const chunks: Uint8Array[] = [];
    let total = 0;
    if (response.body) {
      for await (const chunk of response.body) {
        total += chunk.length;
        if (total > maxBytes) throw badImage(`${label} is larger than the limit of ${maxBytes} bytes`);
        chunks.push(chunk);
      }
    }
    const bytes = new Uint8Array(total);
    let offset = 0;
    for (const chunk of chunks) {
      bytes.set(chunk, offset);
      offset += chunk.length;
    }
    return { bytes, label };
  } catch (err) {
    await response.body?.cancel().catch(() => undefined);
    throw mapError(err);
  }
}

/** Percent-decodes at the byte level (characters outside %XX are taken as their UTF-8 bytes). */
function percentDecode(text: string): Uint8Array {
  const utf8 = new TextEncoder().encode(text);
  const out = new Uint8Array(utf8.length);
  const hex = (b: number): number =>
    b >= 48 && b <= 57 ? b - 48 : b >= 65 && b <= 70 ? b - 55 : b >= 97 && b <= 102 ? b - 87 : -1;
  let n = 0;
  for (let i = 0; i < utf8.length; i++) {
    if (utf8[i] === 37 && i + 2 < utf8.length) {
      const hi = hex(utf8[i + 1]);
      const lo = hex(utf8[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out[n++] = hi * 16 + lo;
        i += 2;
        continue;
      }
    }
    out[n++] = utf8[i];
  }
  return out.subarray(0, n);
}

function decodeDataUrl(url: string, maxBytes: number): EncodedImage {
  const comma = url.indexOf(',');
  if (comma < 0) throw badImage('malformed data URL: no "," separating the header from the data');
  const header = url.slice(5, comma);
  const mediaType = header.split(';')[0] || 'text/plain';
  const isBase64 = /;\s*base64\s*$/i.test(header);
  const label = `data URL (${mediaType}${isBase64 ? ', base64' : ''}, ${url.length} chars)`;
  const payload = percentDecode(url.slice(comma + 1));
  let bytes: Uint8Array;
  if (isBase64) {
    const text = Buffer.from(payload)
      .toString('latin1')
      .replace(/[\t\n\f\r ]/g, '');
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(text) || text.length % 4 === 1) {
      throw badImage(`${label} has invalid base64 data`);
    }
    bytes = new Uint8Array(Buffer.from(text, 'base64'));
  } else {
    bytes = payload;
  }
  if (bytes.length > maxBytes)
    throw badImage(`${label} holds ${bytes.length} bytes, above the limit of ${maxBytes}`);
  return { bytes, label };
}

async function readSource(src: ImageSource, timeoutMs: number, maxBytes: number): Promise<EncodedImage> {
  if (src instanceof Uint8Array) {
    if (src.length > maxBytes)
      throw badImage(`image bytes (${src.length} bytes) exceed the limit of ${maxBytes}`);
    return { bytes: src, label: `bytes (${src.length} bytes)` };
  }
  let url: URL | undefined;
  if (src instanceof URL) {
    url = src;
  } else if (typeof src === 'string') {
    if (/^data:/i.test(src)) return decodeDataUrl(src, maxBytes);
    // "scheme://…" or "file:…" is a URL; a one-letter scheme would be a Windows drive letter.
    if (/^[a-z][a-z0-9+.-]+:\/\//i.test(src) || /^file:/i.test(src)) {
      try {
        url = new URL(src);
      } catch (err) {
        throw badImage(`invalid image URL: ${src}`, err);
      }
    } else {
      if (src.length === 0) throw badImage('image path is empty');
      return readImageFile(src, maxBytes);
    }
  } else {
    throw badImage(`unsupported image source of type ${src === null ? 'null' : typeof src}`);
  }
  switch (url.protocol) {
    case 'data:':
      return decodeDataUrl(url.href, maxBytes);
    case 'file:':
      return readImageFile(fileURLToPath(url), maxBytes);
    case 'http:':
    case 'https:':
      return fetchImage(url, timeoutMs, maxBytes);
    default:
      throw badImage(`unsupported image URL scheme ${url.protocol} in ${describeUrl(url)}`);
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
  const { bytes, label } = await readSource(src, fetchTimeoutMs, maxBytes);
  return decodeImage(bytes, label, maxPixels);
}
