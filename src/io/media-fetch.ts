/**
 * One reader of media named by a string, URL or bytes, used by `loadImage` and by the server: a file
 * path or file: URL, a data: URL (base64 or percent-encoded), or an http(s) URL. Every source has a
 * byte limit; a remote fetch has one deadline for all redirects, headers and body, a bounded number of
 * redirects (each hop checked again), an optional domain allow-list, and can refuse hosts that resolve
 * to loopback, private, link-local or otherwise non-public addresses (checked on the address actually
 * connected to). Errors are MediaFetchErrors whose `problem` says what went wrong.
 */
import { readFile, stat } from 'node:fs/promises';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { fileURLToPath } from 'node:url';
import { type ErrorCode, InternVLError } from '../errors.js';
import { describeUrl, guardedLookup, hopRefusal } from './fetch-guard.js';

export { describeUrl, domainAllowed, isNonPublicAddress } from './fetch-guard.js';

/** What went wrong, for callers that answer each differently (the server's OpenAI error codes). */
export type MediaProblem =
  | 'invalid_source'
  | 'not_found'
  | 'too_large'
  | 'fetch_failed'
  | 'timeout'
  | 'not_allowed';

export class MediaFetchError extends InternVLError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly problem: MediaProblem,
    cause?: unknown,
  ) {
    super(code, message, cause === undefined ? undefined : { cause });
    this.name = 'MediaFetchError';
  }
}

export interface MediaFetchOptions {
  /** Largest encoded size accepted, from any source. */
  maxBytes: number;
  /** Deadline of a remote fetch: all redirects, headers and body. */
  timeoutMs: number;
  /** The error code of a bad source (BAD_IMAGE for images). */
  code: ErrorCode;
  /** What the media is, in messages ("image file not found: …"). Default 'media'. */
  what?: string;
  /** Aborts a remote fetch (an ABORTED error). */
  signal?: AbortSignal;
  /** Hosts that may be fetched; `example.com` also admits its subdomains. Absent: any host. */
  allowedDomains?: readonly string[];
  /** Fetch from loopback, private and link-local addresses. Default true. */
  allowPrivateAddresses?: boolean;
  /** Default 20 (as fetch()). */
  maxRedirects?: number;
}

/** Where a source's bytes are; `label` names it in messages (URLs without their credentials). */
export type MediaLocation =
  | { kind: 'bytes'; bytes: Uint8Array; label: string }
  | { kind: 'data'; url: string; label: string }
  | { kind: 'remote'; url: URL; label: string }
  | { kind: 'file'; path: string; label: string };

const errorMessage = (err: unknown) => (err instanceof Error ? err.message : String(err));

/**
 * Where `src` is: bytes as given; "data:…"; "scheme://…" or "file:…" as a URL (http, https, file and
 * data schemes); anything else a file path. A one-letter scheme would be a Windows drive letter.
 */
export function locateMedia(src: string | URL | Uint8Array, options: MediaFetchOptions): MediaLocation {
  const fail = (message: string, cause?: unknown) =>
    new MediaFetchError(options.code, message, 'invalid_source', cause);
  const what = options.what ?? 'media';
  if (src instanceof Uint8Array) return { kind: 'bytes', bytes: src, label: `bytes (${src.length} bytes)` };
  let url: URL;
  if (src instanceof URL) url = src;
  else if (typeof src !== 'string') {
    throw fail(`unsupported ${what} source of type ${src === null ? 'null' : typeof src}`);
  } else if (/^data:/i.test(src)) return { kind: 'data', url: src, label: dataUrlLabel(src) };
  else if (/^[a-z][a-z0-9+.-]+:\/\//i.test(src) || /^file:/i.test(src)) {
    try {
      url = new URL(src);
    } catch (err) {
      throw fail(`invalid ${what} URL: ${JSON.stringify(src.slice(0, 200))}`, err);
    }
  } else {
    if (src.length === 0) throw fail(`${what} path is empty`);
    return { kind: 'file', path: src, label: src };
  }
  switch (url.protocol) {
    case 'data:':
      return { kind: 'data', url: url.href, label: dataUrlLabel(url.href) };
    case 'file:':
      try {
        const file = fileURLToPath(url);
        return { kind: 'file', path: file, label: file };
      } catch (err) {
        throw fail(`invalid file URL ${describeUrl(url)}: ${errorMessage(err)}`, err);
      }
    case 'http:':
    case 'https:':
      return { kind: 'remote', url, label: describeUrl(url) };
    default:
      throw fail(`unsupported ${what} URL scheme ${url.protocol} in ${describeUrl(url)}`);
  }
}

function dataUrlLabel(url: string): string {
  const comma = url.indexOf(',');
  const header = comma < 0 ? '' : url.slice(5, comma);
  const mediaType = header.split(';')[0] || 'text/plain';
  return `data URL (${mediaType}${isBase64DataUrl(url) ? ', base64' : ''}, ${url.length} chars)`;
}

/** Whether a data URL's header ends in `;base64`. */
export function isBase64DataUrl(url: string): boolean {
  const comma = url.indexOf(',');
  return comma >= 0 && /;\s*base64\s*$/i.test(url.slice(5, comma));
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

/** The bytes of a data URL (RFC 2397: base64 or percent-encoded). */
export function decodeDataUrl(url: string, options: MediaFetchOptions): Uint8Array {
  const label = dataUrlLabel(url);
  const comma = url.indexOf(',');
  if (comma < 0) {
    throw new MediaFetchError(
      options.code,
      'malformed data URL: no "," separating the header from the data',
      'invalid_source',
    );
  }
  const payload = percentDecode(url.slice(comma + 1));
  let bytes = payload;
  if (isBase64DataUrl(url)) {
    const text = Buffer.from(payload)
      .toString('latin1')
      .replace(/[\t\n\f\r ]/g, '');
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(text) || text.length % 4 === 1) {
      throw new MediaFetchError(options.code, `${label} has invalid base64 data`, 'invalid_source');
    }
    bytes = new Uint8Array(Buffer.from(text, 'base64'));
  }
  if (bytes.length > options.maxBytes) {
    throw new MediaFetchError(
      options.code,
      `${label} holds ${bytes.length} bytes, above the limit of ${options.maxBytes} bytes`,
      'too_large',
    );
  }
  return bytes;
}

/** Checks that `file` is a readable file within the byte limit. */
export async function checkMediaFile(file: string, options: MediaFetchOptions): Promise<void> {
  const what = options.what ?? 'media';
  const fail = (message: string, problem: MediaProblem, cause?: unknown) =>
    new MediaFetchError(options.code, message, problem, cause);
  let size: number;
  try {
    const info = await stat(file);
    if (info.isDirectory()) throw fail(`${what} path is a directory: ${file}`, 'invalid_source');
    if (!info.isFile()) throw fail(`${what} path is not a file: ${file}`, 'invalid_source');
    size = info.size;
  } catch (err) {
    if (err instanceof InternVLError) throw err;
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw fail(`${what} file not found: ${file}`, 'not_found', err);
    }
    throw fail(`cannot read ${what} file ${file}: ${errorMessage(err)}`, 'fetch_failed', err);
  }
  if (size > options.maxBytes) {
    throw fail(
      `${what} file ${file} is ${size} bytes, above the limit of ${options.maxBytes} bytes`,
      'too_large',
    );
  }
}

function get(url: URL, options: MediaFetchOptions, signal: AbortSignal): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const client = url.protocol === 'https:' ? https : http;
    const req = client.get(url, {
      signal,
      headers: { 'user-agent': 'internvl-ts', accept: '*/*' },
      ...(options.allowPrivateAddresses === false
        ? { lookup: guardedLookup((message) => new MediaFetchError(options.code, message, 'not_allowed')) }
        : {}),
    });
    req.on('response', resolve);
    req.on('error', reject);
  });
}

/** Streams a remote body to `sink`, following redirects under the options; returns the final URL. */
export async function fetchRemote(
  url: URL,
  options: MediaFetchOptions,
  sink: (chunk: Uint8Array) => Promise<void> | void,
): Promise<URL> {
  const { maxBytes, code } = options;
  const maxRedirects = options.maxRedirects ?? 20;
  const timeout = AbortSignal.timeout(Math.min(Math.ceil(options.timeoutMs), 2_147_483_647));
  const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
  const label = describeUrl(url);
  const fail = (message: string, problem: MediaProblem, cause?: unknown) =>
    new MediaFetchError(code, message, problem, cause);
  let current = url;
  try {
    for (let hop = 0; ; hop++) {
      const refused = hopRefusal(current, options);
      if (refused) throw fail(refused.message, refused.problem);
      const res = await get(current, options, signal);
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400 && res.headers.location) {
        res.destroy();
        if (hop >= maxRedirects)
          throw fail(`${label} redirected more than ${maxRedirects} times`, 'fetch_failed');
        current = new URL(res.headers.location, current);
        continue;
      }
      const at = describeUrl(current);
      if (status < 200 || status >= 300) {
        res.destroy();
        const reason = `HTTP ${status} ${res.statusMessage ?? ''}`.trimEnd();
        throw fail(`fetching ${at} failed: ${reason}`, status === 404 ? 'not_found' : 'fetch_failed');
      }
      const declared = Number(res.headers['content-length'] ?? Number.NaN);
      if (declared > maxBytes) {
        res.destroy();
        throw fail(`${at} is ${declared} bytes, above the limit of ${maxBytes} bytes`, 'too_large');
      }
      let total = 0;
      for await (const chunk of res as AsyncIterable<Buffer>) {
        total += chunk.length;
        if (total > maxBytes) {
          res.destroy();
          throw fail(`${at} is larger than the limit of ${maxBytes} bytes`, 'too_large');
        }
        await sink(chunk);
      }
      return current;
    }
  } catch (err) {
    if (err instanceof InternVLError) throw err;
    if (options.signal?.aborted) throw new InternVLError('ABORTED', `fetching ${label} was aborted`);
    if (timeout.aborted) {
      throw fail(`fetching ${label} timed out after ${options.timeoutMs} ms`, 'timeout', err);
    }
    const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : '';
    throw fail(`cannot fetch ${label}: ${errorMessage(err)}${cause}`, 'fetch_failed', err);
  }
}

/** The encoded bytes of a located source, within the byte limit. */
export async function readMedia(
  where: MediaLocation,
  options: MediaFetchOptions,
): Promise<{ bytes: Uint8Array; label: string }> {
  const { label } = where;
  switch (where.kind) {
    case 'bytes':
      if (where.bytes.length > options.maxBytes) {
        throw new MediaFetchError(
          options.code,
          `${label} exceed the limit of ${options.maxBytes} bytes`,
          'too_large',
        );
      }
      return { bytes: where.bytes, label };
    case 'data':
      return { bytes: decodeDataUrl(where.url, options), label };
    case 'file':
      await checkMediaFile(where.path, options);
      try {
        return { bytes: new Uint8Array(await readFile(where.path)), label };
      } catch (err) {
        throw new MediaFetchError(
          options.code,
          `cannot read ${options.what ?? 'media'} file ${where.path}: ${errorMessage(err)}`,
          'fetch_failed',
          err,
        );
      }
    case 'remote': {
      const chunks: Uint8Array[] = [];
      await fetchRemote(where.url, options, (c) => void chunks.push(c));
      return { bytes: new Uint8Array(Buffer.concat(chunks)), label };
    }
  }
}

/** `locateMedia` then `readMedia`: the bytes of a file, data URL, http(s) URL or byte array. */
export function fetchMedia(
  src: string | URL | Uint8Array,
  options: MediaFetchOptions,
): Promise<{ bytes: Uint8Array; label: string }> {
  return readMedia(locateMedia(src, options), options);
}
