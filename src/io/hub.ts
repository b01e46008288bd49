/**
 * `resolveModel`: a local model folder, or a hub id looked up in the Hugging Face cache and
 * downloaded when missing (hub-download.ts; the cache layout is hub-snapshot.ts).
 */
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { HubDownloader } from './hub-download.js';
import {
  checkRepoFileName,
  DEFAULT_ENDPOINT,
  defaultHubCacheDir,
  exists,
  type HubSettings,
  isDirectory,
  parseHubId,
  resolveFromCache,
} from './hub-snapshot.js';
import type { ProgressCallback } from './progress.js';

export { defaultHubCacheDir, parseHubId, repoCacheDir } from './hub-snapshot.js';

export interface ResolveModelOptions {
  /** Branch, tag or commit; an `@revision` suffix on the id also sets it. Default `main`. */
  revision?: string;
  /** Use only the local cache (default: env HF_HUB_OFFLINE). */
  offline?: boolean;
  /** Hub base URL (default: env HF_ENDPOINT, else https://huggingface.co). */
  endpoint?: string;
  /** Access token (default: env HF_TOKEN). */
  token?: string;
  /** Cache folder (default: HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub). */
  cacheDir?: string;
  onProgress?: ProgressCallback;
  /** Extra files to fetch besides config, tokenizer and weights; each must exist. */
  files?: string[];
  /** Attempts per request after a dropped connection or a 5xx/429 answer. Default 5. */
  maxRetries?: number;
  /** A request with no answer, or a download with no data, for this long fails. Default 60000. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

function envFlag(value: string | undefined): boolean {
  return value !== undefined && ['1', 'on', 'yes', 'true'].includes(value.trim().toLowerCase());
}

/**
 * A local model folder for `idOrPath`: an existing folder is returned as is; a hub id
 * (`Org/Name` or `Org/Name@revision`) is looked up in the Hugging Face cache and the missing
 * files are downloaded (config, generation config, tokenizer, safetensors weights).
 */
export async function resolveModel(idOrPath: string, options: ResolveModelOptions = {}): Promise<string> {
  if (await isDirectory(idOrPath)) {
    const dir = path.resolve(idOrPath);
    if (!(await exists(path.join(dir, 'config.json')))) {
      throw new InternVLError(
        'NOT_FOUND',
        `${dir} is a folder but has no config.json, so it is not a model folder`,
      );
    }
    return dir;
  }
  const looksLikePath = /^(\.{1,2}[\\/]|[\\/]|~)/.test(idOrPath) || idOrPath.split(/[\\/]/).length > 2;
  const parsed = looksLikePath ? undefined : parseHubId(idOrPath);
  if (!parsed) {
    throw new InternVLError(
      'NOT_FOUND',
      `${JSON.stringify(idOrPath)} is neither an existing local folder nor a hub id like "Org/Name" or "Org/Name@revision"`,
    );
  }
  if (
    parsed.revision !== undefined &&
    options.revision !== undefined &&
    parsed.revision !== options.revision
  ) {
    throw new InternVLError(
      'BAD_INPUT',
      `${idOrPath}: revision "${parsed.revision}" in the id conflicts with the revision option "${options.revision}"`,
    );
  }
  const env = process.env;
  const settings: HubSettings = {
    repoId: parsed.repoId,
    revision: parsed.revision ?? options.revision ?? 'main',
    endpoint: (options.endpoint ?? (env.HF_ENDPOINT || DEFAULT_ENDPOINT)).replace(/\/+$/, ''),
    token: options.token ?? (env.HF_TOKEN || undefined),
    cacheDir: options.cacheDir ?? defaultHubCacheDir(env),
    offline: options.offline ?? envFlag(env.HF_HUB_OFFLINE),
    onProgress: options.onProgress,
    extraFiles: (options.files ?? []).map((f) => checkRepoFileName(f, 'the files option')),
    maxRetries: options.maxRetries ?? 5,
    timeoutMs: options.timeoutMs ?? 60_000,
    signal: options.signal,
  };
  if (settings.offline) return resolveFromCache(settings);
  return new HubDownloader(settings).run();
}
