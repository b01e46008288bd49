/**
 * The server's policy for media named in requests. Accepted: base64 data URLs and http(s) URLs;
 * local paths and file: URLs only when the server allows local files. Remote fetches have a size
 * limit, one deadline for all hops and the body, at most a few redirects (each hop checked again),
 * an optional domain allow-list, and by default refuse hosts that resolve to loopback, private,
 * link-local or otherwise non-public addresses (the check runs on the address actually connected to).
 */

import dns from 'node:dns';
import { createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { InternVLError } from '../errors.js';
import { DEFAULT_MAX_IMAGE_PIXELS, decodeImage } from '../io/image.js';
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

function mediaError(message: string, openaiCode: string, param?: string, cause?: unknown): HttpError {
  return new HttpError(400, message, { code: 'BAD_INPUT', openaiCode, param, cause });
}

const NON_PUBLIC_V4 = new BlockList();
const NON_PUBLIC_V6 = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 3],
] as const) {
  NON_PUBLIC_V4.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 127],
  ['64:ff9b::', 96],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
] as const) {
  NON_PUBLIC_V6.addSubnet(net, prefix, 'ipv6');
}

/** Loopback, private, link-local, CGNAT, multicast, unspecified or IPv4-mapped addresses. */
export function isNonPublicAddress(ip: string): boolean {
  const family = isIP(ip);
  if (family === 0) return false;
  if (family === 4) return NON_PUBLIC_V4.check(ip, 'ipv4');
  // IPv4-mapped (::ffff:a.b.c.d) addresses are refused whatever they map to.
  return /^::ffff:/i.test(ip) || NON_PUBLIC_V6.check(ip, 'ipv6');
}

/** Whether `host` is one of `domains` or a subdomain of one (case-insensitive, no trailing dot). */
export function domainAllowed(host: string, domains: readonly string[]): boolean {
  const h = host.toLowerCase().replace(/\.$/, '');
  return domains.some((d) => {
    const domain = d
      .toLowerCase()
      .replace(/^\*?\./, '')
      .replace(/\.$/, '');
    return domain !== '' && (h === domain || h.endsWith(`.${domain}`));
  });
}

function describeUrl(url: URL): string {
  if (!url.username && !url.password)
    return url.href.length > 200 ? `${url.href.slice(0, 197)}...` : url.href;
  const copy = new URL(url.href);
  copy.username = '';
  copy.password = '';
  return describeUrl(copy);
}

/** Checks one hop of a remote fetch: scheme, allow-list, and a literal IP host. */
function checkRemoteUrl(url: URL, policy: MediaPolicy, param: string): void {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw mediaError(
      `${param}: only http(s) URLs can be fetched, not ${url.protocol} (${describeUrl(url)})`,
      'invalid_url',
      param,
    );
  }
  const host = url.hostname.replace(/^\[|\]$/g, '');
  if (policy.allowedDomains && !domainAllowed(host, policy.allowedDomains)) {
    throw mediaError(
      `${param}: the host ${host} is not in the server's allowed media domains (${policy.allowedDomains.join(', ')})`,
      'media_domain_not_allowed',
      param,
    );
  }
  if (!policy.allowPrivateAddresses && isNonPublicAddress(host)) {
    throw mediaError(
      `${param}: ${host} is not a public address; the server does not fetch from it`,
      'media_domain_not_allowed',
      param,
    );
  }
}

function guardedLookup(param: string): LookupFunction {
  return (hostname, options, callback) => {
    dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) {
        callback(err, '', 0);
        return;
      }
      const blocked = addresses.find((a) => isNonPublicAddress(a.address));
      if (blocked) {
        const e = mediaError(
          `${param}: ${hostname} resolves to ${blocked.address}, not a public address; the server does not fetch from it`,
          'media_domain_not_allowed',
          param,
        );
        callback(e as unknown as NodeJS.ErrnoException, '', 0);
        return;
      }
      if (options.all) callback(null, addresses);
      else callback(null, addresses[0].address, addresses[0].family);
    });
  };
}

function get(url: URL, policy: MediaPolicy, param: string, signal: AbortSignal): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const client = url.protocol === 'https:' ? https : http;
    const req = client.get(url, {
      signal,
      headers: { 'user-agent': 'internvl-ts', accept: '*/*' },
      ...(policy.allowPrivateAddresses ? {} : { lookup: guardedLookup(param) }),
    });
    req.on('response', resolve);
    req.on('error', reject);
  });
}

/** Streams a remote body to `sink`, following redirects under the policy; returns the final URL. */
async function fetchRemote(
  url: URL,
  policy: MediaPolicy,
  limits: { maxBytes: number; param: string; signal?: AbortSignal },
  sink: (chunk: Uint8Array) => Promise<void> | void,
): Promise<URL> {
  const { maxBytes, param } = limits;
  const timeout = AbortSignal.timeout(policy.fetchTimeoutMs);
  const signal = limits.signal ? AbortSignal.any([limits.signal, timeout]) : timeout;
  const label = describeUrl(url);
  let current = url;
  try {
    for (let hop = 0; ; hop++) {
      checkRemoteUrl(current, policy, param);
      const res = await get(current, policy, param, signal);
      const status = res.statusCode ?? 0;
      if (status >= 300 && status < 400 && res.headers.location) {
        res.destroy();
        if (hop >= policy.maxRedirects) {
          throw mediaError(
            `${param}: ${label} redirected more than ${policy.maxRedirects} times`,
            'media_fetch_failed',
            param,
          );
        }
        current = new URL(res.headers.location, current);
        continue;
      }
      if (status < 200 || status >= 300) {
        res.destroy();
        throw mediaError(
          `${param}: fetching ${describeUrl(current)} failed: HTTP ${status}`,
          'media_fetch_failed',
          param,
        );
      }
      const declared = Number(res.headers['content-length'] ?? Number.NaN);
      if (declared > maxBytes) {
        res.destroy();
        throw mediaError(
          `${param}: ${describeUrl(current)} is ${declared} bytes, above the limit of ${maxBytes} bytes`,
          'media_too_large',
          param,
        );
      }
      let total = 0;
      for await (const chunk of res as AsyncIterable<Buffer>) {
        total += chunk.length;
        if (total > maxBytes) {
          res.destroy();
          throw mediaError(
            `${param}: ${describeUrl(current)} is larger than the limit of ${maxBytes} bytes`,
            'media_too_large',
            param,
          );
        }
        await sink(chunk);
      }
      return current;
    }
  } catch (err) {
    if (err instanceof InternVLError) throw err;
    if (limits.signal?.aborted) throw new InternVLError('ABORTED', `fetching ${label} was aborted`);
    if (timeout.aborted) {
      throw mediaError(
        `${param}: fetching ${label} timed out after ${policy.fetchTimeoutMs} ms`,
        'media_fetch_timeout',
        param,
        err,
      );
    }
    const message = err instanceof Error ? err.message : String(err);
    throw mediaError(`${param}: cannot fetch ${label}: ${message}`, 'media_fetch_failed', param, err);
  }
}

function decodeBase64DataUrl(url: string, maxBytes: number, param: string): Uint8Array {
  const comma = url.indexOf(',');
  const header = comma < 0 ? '' : url.slice(5, comma);
  if (comma < 0 || !/;\s*base64\s*$/i.test(header)) {
    throw mediaError(`${param}: a data URL must be data:<mime type>;base64,<data>`, 'invalid_url', param);
  }
  const text = url.slice(comma + 1).replace(/[\t\n\f\r ]/g, '');
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(text) || text.length % 4 === 1) {
    throw mediaError(`${param}: the data URL holds invalid base64`, 'invalid_url', param);
  }
  const bytes = new Uint8Array(Buffer.from(text, 'base64'));
  if (bytes.length > maxBytes) {
    throw mediaError(
      `${param}: the data URL holds ${bytes.length} bytes, above the limit of ${maxBytes} bytes`,
      'media_too_large',
      param,
    );
  }
  return bytes;
}

type Located = { kind: 'data'; url: string } | { kind: 'remote'; url: URL } | { kind: 'file'; path: string };

function locate(source: string, policy: MediaPolicy, param: string): Located {
  if (/^data:/i.test(source)) return { kind: 'data', url: source };
  if (/^https?:\/\//i.test(source)) {
    try {
      return { kind: 'remote', url: new URL(source) };
    } catch (err) {
      throw mediaError(
        `${param}: invalid URL ${JSON.stringify(source.slice(0, 200))}`,
        'invalid_url',
        param,
        err,
      );
    }
  }
  const isFileUrl = /^file:/i.test(source);
  if (isFileUrl || path.isAbsolute(source)) {
    if (!policy.allowLocalFiles) {
      throw mediaError(
        `${param}: local files are not served (start the server with --allow-local-files to allow them)`,
        'local_files_not_allowed',
        param,
      );
    }
    try {
      return { kind: 'file', path: isFileUrl ? fileURLToPath(source) : source };
    } catch (err) {
      throw mediaError(
        `${param}: invalid file URL ${JSON.stringify(source.slice(0, 200))}`,
        'invalid_url',
        param,
        err,
      );
    }
  }
  throw mediaError(
    `${param} must be an http(s) URL or a base64 data URL${policy.allowLocalFiles ? ', a file: URL or an absolute path' : ''}, got ${JSON.stringify(source.slice(0, 80))}`,
    'invalid_url',
    param,
  );
}

async function checkedFileSize(file: string, maxBytes: number, param: string): Promise<void> {
  let size: number;
  try {
    const info = await stat(file);
    if (!info.isFile()) throw mediaError(`${param}: ${file} is not a file`, 'invalid_url', param);
    size = info.size;
  } catch (err) {
    if (err instanceof InternVLError) throw err;
    throw mediaError(
      `${param}: cannot read ${file}: ${(err as Error).message}`,
      'media_fetch_failed',
      param,
      err,
    );
  }
  if (size > maxBytes) {
    throw mediaError(
      `${param}: ${file} is ${size} bytes, above the limit of ${maxBytes} bytes`,
      'media_too_large',
      param,
    );
  }
}

/** The encoded bytes of an image named in a request, under the policy. */
export async function fetchImageBytes(
  source: string,
  policy: MediaPolicy,
  param: string,
  signal?: AbortSignal,
): Promise<{ bytes: Uint8Array; label: string }> {
  const where = locate(source, policy, param);
  const maxBytes = policy.maxImageBytes;
  switch (where.kind) {
    case 'data':
      return { bytes: decodeBase64DataUrl(where.url, maxBytes, param), label: `${param} (data URL)` };
    case 'file':
      await checkedFileSize(where.path, maxBytes, param);
      return { bytes: new Uint8Array(await readFile(where.path)), label: `${param} (${where.path})` };
    case 'remote': {
      const chunks: Uint8Array[] = [];
      await fetchRemote(where.url, policy, { maxBytes, param, signal }, (c) => void chunks.push(c));
      return { bytes: new Uint8Array(Buffer.concat(chunks)), label: `${param} (${describeUrl(where.url)})` };
    }
  }
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
  const where = locate(source, policy, param);
  if (where.kind === 'file') {
    await checkedFileSize(where.path, policy.maxVideoBytes, param);
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
      if (where.kind === 'data') await write(decodeBase64DataUrl(where.url, policy.maxVideoBytes, param));
      else await fetchRemote(where.url, policy, { maxBytes: policy.maxVideoBytes, param, signal }, write);
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
