/**
 * Downloads of model files in a browser: byte progress while a body streams in, and a copy in the
 * Cache API so that a second visit loads without the network. Isomorphic (fetch, Response and the
 * Cache API exist in browsers; Node has fetch and no `caches`, so there nothing is cached).
 */
import { InternVLError } from '../errors.js';

/** The part of the Cache API used here. */
export interface ResponseCache {
  match(url: string): Promise<Response | undefined>;
  put(url: string, response: Response): Promise<void>;
}

/** The page's Cache API store `name`, or undefined where there is none (Node, insecure origins). */
export async function openResponseCache(name: string): Promise<ResponseCache | undefined> {
  const storage = (globalThis as { caches?: { open(name: string): Promise<ResponseCache> } }).caches;
  if (!storage) return undefined;
  try {
    return await storage.open(name);
  } catch {
    return undefined;
  }
}

export interface FetchProgress {
  url: string;
  /** Bytes of this file received so far. */
  loaded: number;
  /** The file's size when known (Content-Length or the manifest), else 0. */
  total: number;
  fromCache: boolean;
}

export interface FetchBytesOptions {
  cache?: ResponseCache;
  /** Expected size; a cached copy of another size is fetched again. */
  expectedBytes?: number;
  onProgress?: (progress: FetchProgress) => void;
  signal?: AbortSignal;
}

async function readBody(
  response: Response,
  url: string,
  total: number,
  fromCache: boolean,
  onProgress?: (p: FetchProgress) => void,
): Promise<Uint8Array> {
  if (!response.body) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    onProgress?.({ url, loaded: bytes.byteLength, total: total || bytes.byteLength, fromCache });
    return bytes;
  }
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.byteLength;
    onProgress?.({ url, loaded, total, fromCache });
  }
  const out = new Uint8Array(loaded);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.byteLength;
  }
  onProgress?.({ url, loaded, total: total || loaded, fromCache });
  return out;
}

/** The bytes at `url`: from the cache when it holds them (at the expected size), else downloaded and cached. */
export async function fetchBytes(url: string, options: FetchBytesOptions = {}): Promise<Uint8Array> {
  const { cache, expectedBytes, onProgress, signal } = options;
  if (cache) {
    const hit = await cache.match(url);
    if (hit) {
      const bytes = await readBody(hit, url, expectedBytes ?? 0, true, onProgress);
      if (expectedBytes === undefined || bytes.byteLength === expectedBytes) return bytes;
    }
  }
  let response: Response;
  try {
    response = await fetch(url, { signal });
  } catch (err) {
    if (signal?.aborted) throw new InternVLError('ABORTED', `download of ${url} was aborted`, { cause: err });
    throw new InternVLError('DOWNLOAD', `cannot fetch ${url}: ${(err as Error).message}`, { cause: err });
  }
  if (!response.ok) {
    throw new InternVLError(
      response.status === 404 ? 'NOT_FOUND' : 'DOWNLOAD',
      `cannot fetch ${url}: HTTP ${response.status}`,
    );
  }
  const total = Number(response.headers.get('content-length')) || expectedBytes || 0;
  const bytes = await readBody(response, url, total, false, onProgress);
  if (expectedBytes !== undefined && bytes.byteLength !== expectedBytes) {
    throw new InternVLError(
      'DOWNLOAD',
      `${url}: received ${bytes.byteLength} bytes, the manifest says ${expectedBytes}`,
    );
  }
  if (cache) {
    try {
      await cache.put(url, new Response(bytes.slice().buffer));
    } catch {
      // A full or unavailable cache only costs the next visit a download.
    }
  }
  return bytes;
}

/**
 * JSON at `url`, preferring the network (so a re-converted model is seen) and falling back to the
 * cached copy when offline; the fresh copy is cached.
 */
export async function fetchJsonNetworkFirst(url: string, cache?: ResponseCache): Promise<unknown> {
  let bytes: Uint8Array;
  try {
    const response = await fetch(url, { headers: { 'cache-control': 'no-cache' } });
    if (!response.ok) throw new InternVLError('DOWNLOAD', `cannot fetch ${url}: HTTP ${response.status}`);
    bytes = new Uint8Array(await response.arrayBuffer());
    if (cache) await cache.put(url, new Response(bytes.slice().buffer)).catch(() => undefined);
  } catch (err) {
    const hit = await cache?.match(url);
    if (!hit) {
      if (err instanceof InternVLError) throw err;
      throw new InternVLError('DOWNLOAD', `cannot fetch ${url}: ${(err as Error).message}`, { cause: err });
    }
    bytes = new Uint8Array(await hit.arrayBuffer());
  }
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (err) {
    throw new InternVLError('BAD_CONFIG', `${url} is not valid JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
}
