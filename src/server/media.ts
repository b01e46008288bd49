/**
 * The server's policy for media named in requests. Accepted: base64 data URLs and http(s) URLs;
 * local paths and file: URLs only when the server allows local files. The fetching itself (size
 * limit, one deadline for all hops and the body, a few redirects each checked again, the domain
 * allow-list, and by default no loopback, private or link-local hosts) is io/media-fetch.ts, as
 * for `loadImage`; here its errors become 400s naming the request field.
 */
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { DEFAULT_MAX_IMAGE_PIXELS, decodeImage } from '../io/image.js';
import {
  checkMediaFile,
  decodeDataUrl,
  fetchRemote,
  isBase64DataUrl,
  locateMedia,
  MediaFetchError,
  type MediaFetchOptions,
  type MediaLocation,
  type MediaProblem,
  readMedia,
} from '../io/media-fetch.js';
import type { RgbImage } from '../preprocess/image.js';
import { HttpError } from './errors.js';

export interface MediaPolicy {
  /** Hosts that may be fetched; `example.com` also admits its subdomains. Absent = any public host. */
  allowedDomains?: string[];
  /** Accept absolute paths and file: URLs (read from the server's disk). */
  allowLocalFiles: boolean;
  /** Fetch from loopback/private/link-local addresses too (off by default: SSRF). */
  allowPrivateAddresses: boolean;
  maxImageBytes: number;
  maxVideoBytes: number;
  /** Largest decoded image, in pixels (checked from the header before decoding). */
  maxImagePixels: number;
  /** Deadline for one fetch: all redirects, headers and body. */
  fetchTimeoutMs: number;
  maxRedirects: number;
}

export const DEFAULT_MEDIA_POLICY: MediaPolicy = {
  allowLocalFiles: false,
  allowPrivateAddresses: false,
  maxImageBytes: 20 * 1024 * 1024,
  maxVideoBytes: 256 * 1024 * 1024,
  maxImagePixels: DEFAULT_MAX_IMAGE_PIXELS,
  fetchTimeoutMs: 15_000,
  maxRedirects: 5,
};

export { domainAllowed, isNonPublicAddress } from '../io/media-fetch.js';

function mediaError(message: string, openaiCode: string, param?: string, cause?: unknown): HttpError {
  return new HttpError(400, message, { code: 'BAD_INPUT', openaiCode, param, cause });
}

const OPENAI_CODES: Record<MediaProblem, string> = {
  invalid_source: 'invalid_url',
  not_found: 'media_fetch_failed',
  too_large: 'media_too_large',
  fetch_failed: 'media_fetch_failed',
  timeout: 'media_fetch_timeout',
  not_allowed: 'media_domain_not_allowed',
};

/** Runs a fetch; its MediaFetchError becomes a 400 that names `param` and has the problem's OpenAI code. */
async function asRequestError<T>(param: string, run: () => Promise<T> | T): Promise<T> {
  try {
    return await run();
  } catch (err) {
    if (!(err instanceof MediaFetchError)) throw err;
    throw mediaError(`${param}: ${err.message}`, OPENAI_CODES[err.problem], param, err);
  }
}

function fetchOptions(policy: MediaPolicy, maxBytes: number, signal?: AbortSignal): MediaFetchOptions {
  return {
    maxBytes,
    timeoutMs: policy.fetchTimeoutMs,
    code: 'BAD_INPUT',
    signal,
    allowedDomains: policy.allowedDomains,
    allowPrivateAddresses: policy.allowPrivateAddresses,
    maxRedirects: policy.maxRedirects,
  };
}

/**
 * Where a request's media is, under the policy: a base64 data URL, an http(s) URL, or (when local
 * files are allowed) an absolute path or file: URL; anything else is a 400 naming `param`.
 */
function locate(
  source: string,
  policy: MediaPolicy,
  param: string,
  options: MediaFetchOptions,
): Promise<MediaLocation> {
  return asRequestError(param, () => {
    const isData = /^data:/i.test(source);
    const isRemote = /^https?:\/\//i.test(source);
    const isLocal = /^file:/i.test(source) || path.isAbsolute(source);
    if (isData && !isBase64DataUrl(source)) {
      throw mediaError(`${param}: a data URL must be data:<mime type>;base64,<data>`, 'invalid_url', param);
    }
    if (isLocal && !policy.allowLocalFiles) {
      throw mediaError(
        `${param}: local files are not served (start the server with --allow-local-files to allow them)`,
        'local_files_not_allowed',
        param,
      );
    }
    if (!isData && !isRemote && !isLocal) {
      throw mediaError(
        `${param} must be an http(s) URL or a base64 data URL${policy.allowLocalFiles ? ', a file: URL or an absolute path' : ''}, got ${JSON.stringify(source.slice(0, 80))}`,
        'invalid_url',
        param,
      );
    }
    return locateMedia(source, options);
  });
}

/** The encoded bytes of an image named in a request, under the policy. */
export async function fetchImageBytes(
  source: string,
  policy: MediaPolicy,
  param: string,
  signal?: AbortSignal,
): Promise<{ bytes: Uint8Array; label: string }> {
  const options = fetchOptions(policy, policy.maxImageBytes, signal);
  const where = await locate(source, policy, param, options);
  const { bytes, label } = await asRequestError(param, () => readMedia(where, options));
  return { bytes, label: `${param} (${where.kind === 'data' ? 'data URL' : label})` };
}

/** Fetches and decodes a request's image to RGB; every failure is a 400 that names `param`. */
export async function loadRequestImage(
  source: string,
  policy: MediaPolicy,
  param: string,
  signal?: AbortSignal,
): Promise<RgbImage> {
  const { bytes, label } = await fetchImageBytes(source, policy, param, signal);
  try {
    return await decodeImage(bytes, label, policy.maxImagePixels);
  } catch (err) {
    if (err instanceof InternVLError && err.code === 'BAD_IMAGE') {
      throw mediaError(err.message, 'invalid_image', param, err);
    }
    throw err;
  }
}

/** A video as a file ffmpeg can read; `release` removes it when it was downloaded. */
export interface LocalVideo {
  path: string;
  release(): Promise<void>;
}

/** Puts a request's video on local disk (remote and data URLs go to a temporary file). */
export async function materializeVideo(
  source: string,
  policy: MediaPolicy,
  param: string,
  signal?: AbortSignal,
): Promise<LocalVideo> {
  const options = fetchOptions(policy, policy.maxVideoBytes, signal);
  const where = await locate(source, policy, param, options);
  if (where.kind === 'file') {
    await asRequestError(param, () => checkMediaFile(where.path, options));
    return { path: where.path, release: async () => {} };
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-video-'));
  const release = () => rm(dir, { recursive: true, force: true });
  const file = path.join(dir, 'video');
  try {
    const out = createWriteStream(file);
    const closed = new Promise<void>((resolve, reject) => {
      out.on('close', resolve);
      out.on('error', reject);
    });
    const write = (chunk: Uint8Array) =>
      new Promise<void>((resolve, reject) => out.write(chunk, (e) => (e ? reject(e) : resolve())));
    try {
      await asRequestError(param, async () => {
        if (where.kind === 'data') await write(decodeDataUrl(where.url, options));
        else if (where.kind === 'remote') await fetchRemote(where.url, options, write);
      });
    } finally {
      out.end();
      await closed;
    }
    return { path: file, release };
  } catch (err) {
    await release();
    throw err;
  }
}
