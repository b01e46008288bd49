import {
  copyFile,
  mkdir,
  open,
  readFile,
  rename,
  rm,
  stat,
  symlink,
  unlink,
  writeFile,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import type { ProgressCallback } from './progress.js';

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

const DEFAULT_ENDPOINT = 'https://huggingface.co';
const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'tokenizer.model',
  'added_tokens.json',
];
const WEIGHTS_FILE = 'model.safetensors';
const WEIGHTS_INDEX_FILE = 'model.safetensors.index.json';
const COMMIT_RE = /^[0-9a-f]{40}$/;
const REPO_ID_RE = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;
const MAX_REDIRECTS = 10;

interface HubSettings {
  repoId: string;
  revision: string;
  endpoint: string;
  token: string | undefined;
  cacheDir: string;
  offline: boolean;
  onProgress: ProgressCallback | undefined;
  extraFiles: string[];
  maxRetries: number;
  timeoutMs: number;
  signal: AbortSignal | undefined;
}

function envFlag(value: string | undefined): boolean {
  return value !== undefined && ['1', 'on', 'yes', 'true'].includes(value.trim().toLowerCase());
}

/** The Hugging Face hub cache folder, as huggingface_hub computes it. */
export function defaultHubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HF_HOME) return path.join(env.HF_HOME, 'hub');
  const cacheHome = env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(cacheHome, 'huggingface', 'hub');
}

/** `models--Org--Name` under the cache folder. */
export function repoCacheDir(cacheDir: string, repoId: string): string {
  return path.join(cacheDir, `models--${repoId.split('/').join('--')}`);
}

/** Splits `Org/Name@revision`; undefined when the text is not a hub id. */
export function parseHubId(id: string): { repoId: string; revision: string | undefined } | undefined {
  const at = id.indexOf('@');
  const repoId = at < 0 ? id : id.slice(0, at);
  const revision = at < 0 ? undefined : id.slice(at + 1);
  if (!REPO_ID_RE.test(repoId) || repoId.includes('..') || revision === '') return undefined;
  return { repoId, revision };
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

async function isDirectory(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

function checkRepoFileName(name: string, from: string): string {
  if (
    name === '' ||
    path.isAbsolute(name) ||
    name.split(/[\\/]/).some((part) => part === '..' || part === '')
  ) {
    throw new InternVLError('BAD_CHECKPOINT', `${from} names an unsafe file path ${JSON.stringify(name)}`);
  }
  return name;
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

function describe(s: HubSettings): string {
  return `model ${s.repoId} (revision ${s.revision})`;
}

async function readRef(s: HubSettings): Promise<string | undefined> {
  const repoDir = repoCacheDir(s.cacheDir, s.repoId);
  if (COMMIT_RE.test(s.revision) && (await isDirectory(path.join(repoDir, 'snapshots', s.revision)))) {
    return s.revision;
  }
  try {
    const commit = (await readFile(path.join(repoDir, 'refs', s.revision), 'utf8')).trim();
    return COMMIT_RE.test(commit) ? commit : undefined;
  } catch {
    return undefined;
  }
}

/** The files a snapshot folder lacks to be a usable model (empty when complete). */
async function missingSnapshotFiles(dir: string, extraFiles: string[]): Promise<string[]> {
  const missing: string[] = [];
  for (const f of ['config.json', ...extraFiles]) if (!(await exists(path.join(dir, f)))) missing.push(f);
  if (
    !(await exists(path.join(dir, 'tokenizer.json'))) &&
    !(await exists(path.join(dir, 'tokenizer.model')))
  ) {
    missing.push('tokenizer.json (or tokenizer.model)');
  }
  if (!(await exists(path.join(dir, WEIGHTS_FILE)))) {
    const indexPath = path.join(dir, WEIGHTS_INDEX_FILE);
    if (!(await exists(indexPath))) {
      missing.push(`${WEIGHTS_FILE} (or ${WEIGHTS_INDEX_FILE})`);
    } else {
      for (const shard of await shardsOfIndex(indexPath)) {
        if (!(await exists(path.join(dir, shard)))) missing.push(shard);
      }
    }
  }
  return missing;
}

async function shardsOfIndex(indexPath: string): Promise<string[]> {
  let index: unknown;
  try {
    index = JSON.parse(await readFile(indexPath, 'utf8'));
  } catch (err) {
    throw new InternVLError('BAD_CHECKPOINT', `${indexPath}: not valid JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new InternVLError('BAD_CHECKPOINT', `${indexPath}: missing "weight_map" object`);
  }
  const shards = new Set<string>();
  for (const [tensor, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string') {
      throw new InternVLError('BAD_CHECKPOINT', `${indexPath}: weight_map["${tensor}"] is not a file name`);
    }
    shards.add(checkRepoFileName(shard, indexPath));
  }
  return [...shards];
}

async function resolveFromCache(s: HubSettings): Promise<string> {
  const repoDir = repoCacheDir(s.cacheDir, s.repoId);
  const commit = await readRef(s);
  if (!commit) {
    throw new InternVLError(
      'OFFLINE',
      `offline mode: ${describe(s)} is not in the cache ${s.cacheDir} (no ${path.join(repoDir, 'refs', s.revision)}); ` +
        'download it once online or unset HF_HUB_OFFLINE',
    );
  }
  const snapshot = path.join(repoDir, 'snapshots', commit);
  const missing = await missingSnapshotFiles(snapshot, s.extraFiles);
  if (missing.length > 0) {
    throw new InternVLError(
      'OFFLINE',
      `offline mode: ${describe(s)} is only partly cached in ${snapshot}; missing ${missing.join(', ')}`,
    );
  }
  return snapshot;
}

function normalizeEtag(value: string | null): string | undefined {
  if (!value) return undefined;
  const etag = value
    .trim()
    .replace(/^W\//, '')
    .replace(/^"(.*)"$/, '$1');
  return /^[\w.-]+$/.test(etag) ? etag : undefined;
}

function isRedirect(status: number): boolean {
  return status === 301 || status === 302 || status === 303 || status === 307 || status === 308;
}

/** Failures worth another attempt: a dropped or refused connection, a timeout, a 5xx or 429 answer. */
class RetryableError extends Error {}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface FileMeta {
  commit: string | undefined;
  etag: string | undefined;
  size: number | undefined;
  downloadUrl: string;
}

class HubDownloader {
  readonly #s: HubSettings;
  readonly #repoDir: string;
  readonly #authOrigin: string;

  constructor(settings: HubSettings) {
    this.#s = settings;
    this.#repoDir = repoCacheDir(settings.cacheDir, settings.repoId);
    this.#authOrigin = new URL(settings.endpoint).origin;
  }

  async run(): Promise<string> {
    const s = this.#s;
    let listing: { commit: string; files: Set<string> } | undefined;
    try {
      listing = await this.#fetchListing();
    } catch (err) {
      if (err instanceof InternVLError && err.code === 'DOWNLOAD') {
        // Like huggingface_hub: when the hub cannot be reached, a complete cached snapshot still works.
        const cached = await resolveFromCache(s).catch(() => undefined);
        if (cached) return cached;
      }
      throw err;
    }
    let commit = listing?.commit;
    const fetchFile = async (file: string, required: boolean): Promise<boolean> => {
      if (listing && !listing.files.has(file)) {
        if (required) throw this.#notFound(file);
        return false;
      }
      const got = await this.#ensureFile(file, commit, required);
      if (got) commit = got;
      return got !== undefined;
    };

    await fetchFile('config.json', true);
    await fetchFile('generation_config.json', false);
    const tokenizerFiles: string[] = [];
    for (const f of TOKENIZER_FILES) if (await fetchFile(f, false)) tokenizerFiles.push(f);
    if (!tokenizerFiles.includes('tokenizer.json') && !tokenizerFiles.includes('tokenizer.model')) {
      throw new InternVLError('NOT_FOUND', `${describe(s)} has neither tokenizer.json nor tokenizer.model`);
    }
    if (!(await fetchFile(WEIGHTS_FILE, false))) {
      if (!(await fetchFile(WEIGHTS_INDEX_FILE, false))) {
        throw new InternVLError(
          'NOT_FOUND',
          `${describe(s)} has no ${WEIGHTS_FILE} or ${WEIGHTS_INDEX_FILE} (only safetensors weights are supported)`,
        );
      }
      const snapshotIndex = path.join(this.#repoDir, 'snapshots', commit!, WEIGHTS_INDEX_FILE);
      for (const shard of await shardsOfIndex(snapshotIndex)) await fetchFile(shard, true);
    }
    for (const f of s.extraFiles) await fetchFile(f, true);

    if (s.revision !== commit) {
      await writeAtomically(path.join(this.#repoDir, 'refs', s.revision), commit!);
    }
    return path.join(this.#repoDir, 'snapshots', commit!);
  }

  #notFound(file: string): InternVLError {
    return new InternVLError('NOT_FOUND', `${describe(this.#s)} has no file ${file}`);
  }

  /** `{sha, siblings}` from the revision API, or undefined where the server has no such API. */
  async #fetchListing(): Promise<{ commit: string; files: Set<string> } | undefined> {
    const s = this.#s;
    const url = `${s.endpoint}/api/models/${s.repoId}/revision/${encodeURIComponent(s.revision)}`;
    const { response, done } = await this.#withRetries(url, () => this.#request(url, 'GET', {}));
    let body: unknown;
    try {
      if (response.status === 404 && !response.headers.get('x-error-code')) {
        await response.body?.cancel();
        return undefined;
      }
      if (!response.ok) throw await this.#httpError(response, url, undefined);
      body = await response.json();
    } catch (err) {
      if (err instanceof InternVLError) throw err;
      throw new InternVLError('DOWNLOAD', `${url}: could not read the answer: ${(err as Error).message}`, {
        cause: err,
      });
    } finally {
      done();
    }
    const { sha, siblings } = (body ?? {}) as { sha?: unknown; siblings?: unknown };
    if (typeof sha !== 'string' || !COMMIT_RE.test(sha) || !Array.isArray(siblings)) {
      return undefined;
    }
    const files = new Set<string>();
    for (const entry of siblings) {
      const name = (entry as { rfilename?: unknown })?.rfilename;
      if (typeof name === 'string') files.add(name);
    }
    return { commit: sha, files };
  }

  /**
   * Makes `snapshots/<commit>/<file>` exist. Returns the commit it went into, or undefined when
   * the optional file does not exist on the hub.
   */
  async #ensureFile(
    file: string,
    knownCommit: string | undefined,
    required: boolean,
  ): Promise<string | undefined> {
    const s = this.#s;
    if (knownCommit && (await exists(path.join(this.#repoDir, 'snapshots', knownCommit, file))))
      return knownCommit;
    const rev = knownCommit ?? s.revision;
    const url = `${s.endpoint}/${s.repoId}/resolve/${encodeURIComponent(rev)}/${file.split('/').map(encodeURIComponent).join('/')}`;
    const meta = await this.#withRetries(url, () => this.#head(url, file));
    if (!meta) {
      if (required) throw this.#notFound(file);
      return undefined;
    }
    const commit = meta.commit ?? knownCommit;
    if (!commit || !COMMIT_RE.test(commit)) {
      throw new InternVLError(
        'DOWNLOAD',
        `${url}: the server sent no X-Repo-Commit header (is ${s.endpoint} a hub?)`,
      );
    }
    if (!meta.etag) throw new InternVLError('DOWNLOAD', `${url}: the server sent no ETag header`);
    const snapshotPath = path.join(this.#repoDir, 'snapshots', commit, file);
    if (await exists(snapshotPath)) return commit;
    const blobPath = path.join(this.#repoDir, 'blobs', meta.etag);
    if (!(await exists(blobPath))) await this.#download(meta, file, blobPath);
    await linkIntoSnapshot(blobPath, snapshotPath);
    return commit;
  }

  /** HEAD on a resolve URL: commit, etag, size and where the bytes are; undefined on 404. */
  async #head(url: string, file: string): Promise<FileMeta | undefined> {
    let current = url;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const res = await this.#fetchOnce(current, 'HEAD', {});
      const commit = res.headers.get('x-repo-commit') ?? undefined;
      const etag = normalizeEtag(res.headers.get('x-linked-etag') ?? res.headers.get('etag'));
      const sizeHeader = res.headers.get('x-linked-size') ?? res.headers.get('content-length');
      const size = sizeHeader !== null && /^\d+$/.test(sizeHeader) ? Number(sizeHeader) : undefined;
      if (isRedirect(res.status)) {
        const location = res.headers.get('location');
        if (!location) throw new InternVLError('DOWNLOAD', `${current}: redirect without a Location header`);
        const next = new URL(location, current).href;
        // The hub puts the file's metadata on the redirect to the CDN; a redirect without it (a renamed repo) is followed.
        if (commit || res.headers.get('x-linked-etag')) {
          return {
            commit,
            etag,
            size: res.headers.get('x-linked-size') ? size : undefined,
            downloadUrl: next,
          };
        }
        current = next;
        continue;
      }
      if (res.status === 404) {
        const code = res.headers.get('x-error-code');
        if (code === 'RepoNotFound' || code === 'RevisionNotFound')
          throw await this.#httpError(res, current, file);
        return undefined;
      }
      if (!res.ok) throw await this.#httpError(res, current, file);
      return { commit, etag, size, downloadUrl: current };
    }
    throw new InternVLError('DOWNLOAD', `${url}: more than ${MAX_REDIRECTS} redirects`);
  }

  async #download(meta: FileMeta, file: string, blobPath: string): Promise<void> {
    const s = this.#s;
    await mkdir(path.dirname(blobPath), { recursive: true });
    const partial = `${blobPath}.incomplete`;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.#downloadAttempt(meta, file, partial);
        break;
      } catch (err) {
        if (!(err instanceof RetryableError) || attempt >= s.maxRetries)
          throw this.#finalError(err, meta.downloadUrl);
        await sleep(Math.min(200 * 2 ** attempt, 4000));
      }
    }
    await rename(partial, blobPath);
  }

  async #downloadAttempt(meta: FileMeta, file: string, partial: string): Promise<void> {
    const s = this.#s;
    let have = 0;
    try {
      have = (await stat(partial)).size;
    } catch {
      have = 0;
    }
    if (meta.size !== undefined && have > meta.size) {
      await rm(partial, { force: true });
      have = 0;
    }
    if (meta.size !== undefined && have === meta.size && have > 0) return;
    const headers: Record<string, string> = have > 0 ? { range: `bytes=${have}-` } : {};
    const { response, controller, resetIdle, done } = await this.#request(meta.downloadUrl, 'GET', headers);
    try {
      let start: number;
      let total = meta.size;
      if (response.status === 206) {
        const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(response.headers.get('content-range') ?? '');
        if (!range || Number(range[1]) !== have) {
          throw new InternVLError(
            'DOWNLOAD',
            `${meta.downloadUrl}: the server answered a different range than asked`,
          );
        }
        if (range[3] !== '*') total ??= Number(range[3]);
        start = have;
      } else if (response.status === 200) {
        // The server ignored the Range header: start over.
        const length = response.headers.get('content-length');
        if (length !== null && /^\d+$/.test(length)) total ??= Number(length);
        start = 0;
      } else if (response.status === 416 && meta.size !== undefined && have === meta.size) {
        return;
      } else if (response.status === 416) {
        await response.body?.cancel();
        await rm(partial, { force: true });
        throw new RetryableError(`${meta.downloadUrl}: range ${have}- not satisfiable; restarting`);
      } else {
        throw await this.#httpError(response, meta.downloadUrl, file);
      }

      const handle = await open(partial, start === 0 ? 'w' : 'a');
      let downloaded = start;
      try {
        s.onProgress?.({ file, downloaded, total });
        if (response.body) {
          const reader = response.body.getReader();
          for (;;) {
            const chunk = await reader.read().catch((err: unknown) => {
              if (s.signal?.aborted) throw err;
              throw new RetryableError(`${meta.downloadUrl}: connection lost after ${downloaded} bytes`, {
                cause: err,
              });
            });
            if (chunk.done) break;
            resetIdle();
            await handle.write(chunk.value);
            downloaded += chunk.value.byteLength;
            s.onProgress?.({ file, downloaded, total });
          }
        }
      } finally {
        await handle.close();
      }
      if (total !== undefined && downloaded < total) {
        throw new RetryableError(`${meta.downloadUrl}: got ${downloaded} of ${total} bytes`);
      }
      if (total !== undefined && downloaded > total) {
        await rm(partial, { force: true });
        throw new InternVLError(
          'DOWNLOAD',
          `${meta.downloadUrl}: got ${downloaded} bytes, expected ${total}`,
        );
      }
    } finally {
      done();
      if (!controller.signal.aborted) controller.abort();
    }
  }

  #finalError(err: unknown, url: string): unknown {
    if (this.#s.signal?.aborted)
      return new InternVLError('ABORTED', `download of ${url} was aborted`, { cause: err });
    if (err instanceof RetryableError) {
      return new InternVLError(
        'DOWNLOAD',
        `download failed: ${err.message} (gave up after ${this.#s.maxRetries + 1} attempts)`,
        { cause: err },
      );
    }
    return err;
  }

  /** Runs `attempt` again after retryable failures; a 5xx/429 answer counts as one. */
  async #withRetries<T>(url: string, attempt: () => Promise<T>): Promise<T> {
    for (let i = 0; ; i++) {
      try {
        return await attempt();
      } catch (err) {
        if (!(err instanceof RetryableError) || i >= this.#s.maxRetries) throw this.#finalError(err, url);
        await sleep(Math.min(200 * 2 ** i, 4000));
      }
    }
  }

  /** One fetch with a timeout until the answer's headers; the Authorization header only goes to the hub. */
  async #fetchOnce(url: string, method: string, headers: Record<string, string>): Promise<Response> {
    const { response, done } = await this.#start(url, method, headers);
    done();
    if (response.status === 429 || response.status >= 500) {
      await response.body?.cancel();
      throw new RetryableError(`${url}: server answered ${response.status}`);
    }
    return response;
  }

  async #start(url: string, method: string, headers: Record<string, string>) {
    const s = this.#s;
    const controller = new AbortController();
    const onAbort = () => controller.abort(s.signal?.reason);
    s.signal?.addEventListener('abort', onAbort, { once: true });
    let timer: NodeJS.Timeout | undefined;
    const resetIdle = () => {
      clearTimeout(timer);
      timer = setTimeout(() => controller.abort(new Error(`no data for ${s.timeoutMs} ms`)), s.timeoutMs);
    };
    const done = () => {
      clearTimeout(timer);
      s.signal?.removeEventListener('abort', onAbort);
    };
    resetIdle();
    // identity encoding keeps Content-Length equal to the file size (as huggingface_hub asks).
    const sent: Record<string, string> = {
      ...headers,
      'user-agent': 'internvl-ts',
      'accept-encoding': 'identity',
    };
    if (s.token && new URL(url).origin === this.#authOrigin) sent.authorization = `Bearer ${s.token}`;
    try {
      if (s.signal?.aborted) throw s.signal.reason;
      const response = await fetch(url, {
        method,
        headers: sent,
        redirect: 'manual',
        signal: controller.signal,
      });
      return { response, controller, resetIdle, done };
    } catch (err) {
      done();
      if (s.signal?.aborted)
        throw new InternVLError('ABORTED', `request to ${url} was aborted`, { cause: err });
      const reason = (err as { cause?: { message?: string } }).cause?.message ?? (err as Error).message;
      throw new RetryableError(`${url}: ${reason}`, { cause: err });
    }
  }

  /** A request following redirects; the caller reads the body and must call `done`. */
  async #request(url: string, method: string, headers: Record<string, string>) {
    let current = url;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const started = await this.#start(current, method, headers);
      const { response } = started;
      if (isRedirect(response.status)) {
        started.done();
        await response.body?.cancel();
        const location = response.headers.get('location');
        if (!location) throw new InternVLError('DOWNLOAD', `${current}: redirect without a Location header`);
        current = new URL(location, current).href;
        continue;
      }
      if (response.status === 429 || response.status >= 500) {
        started.done();
        await response.body?.cancel();
        throw new RetryableError(`${current}: server answered ${response.status}`);
      }
      return started;
    }
    throw new InternVLError('DOWNLOAD', `${url}: more than ${MAX_REDIRECTS} redirects`);
  }

  async #httpError(res: Response, url: string, file: string | undefined): Promise<InternVLError> {
    const s = this.#s;
    const code = res.headers.get('x-error-code');
    const text = await res.text().catch(() => '');
    const detail = (res.headers.get('x-error-message') ?? text.slice(0, 200)).trim();
    const what = file ? `${file} of ${describe(s)}` : describe(s);
    const suffix = detail ? ` (${detail})` : '';
    if (code === 'GatedRepo' || (res.status === 401 && code !== 'RepoNotFound') || res.status === 403) {
      return new InternVLError(
        'UNAUTHORIZED',
        `${res.status} for ${what} at ${url}: access denied; set HF_TOKEN (or pass a token) with access to ${s.repoId}${suffix}`,
      );
    }
    if (code === 'RevisionNotFound') {
      return new InternVLError(
        'NOT_FOUND',
        `revision "${s.revision}" of model ${s.repoId} was not found${suffix}`,
      );
    }
    if (code === 'RepoNotFound' || (res.status === 404 && !file)) {
      return new InternVLError(
        'NOT_FOUND',
        `model ${s.repoId} was not found on ${s.endpoint}; check the id (if it is private or gated, set HF_TOKEN)${suffix}`,
      );
    }
    if (res.status === 404) return new InternVLError('NOT_FOUND', `${what} was not found at ${url}${suffix}`);
    return new InternVLError('DOWNLOAD', `${url}: server answered ${res.status}${suffix}`);
  }
}

/** Writes a small file via a temporary name and a rename, so readers never see it half written. */
async function writeAtomically(file: string, content: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  await writeFile(tmp, content);
  await rename(tmp, file);
}

/** snapshots/<commit>/<file> -> ../../blobs/<etag> (relative symlink, as huggingface_hub makes); a copy where symlinks fail. */
async function linkIntoSnapshot(blobPath: string, snapshotPath: string): Promise<void> {
  await mkdir(path.dirname(snapshotPath), { recursive: true });
  const tmp = `${snapshotPath}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    await symlink(path.relative(path.dirname(snapshotPath), blobPath), tmp);
  } catch {
    await unlink(tmp).catch(() => {});
    await copyFile(blobPath, tmp);
  }
  await rename(tmp, snapshotPath);
}
