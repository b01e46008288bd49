/**
 * Downloads a model snapshot into the hub cache: the revision's file list, then config, generation
 * config, tokenizer files and safetensors weights (single or sharded), each a blob linked into
 * `snapshots/<commit>/`; a partial blob is resumed with a Range request.
 */
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { HubHttp, isRedirect, MAX_REDIRECTS, RetryableError, sleep } from './hub-http.js';
import {
  COMMIT_RE,
  describe,
  exists,
  type HubSettings,
  linkIntoSnapshot,
  repoCacheDir,
  resolveFromCache,
  shardsOfIndex,
  TOKENIZER_FILES,
  WEIGHTS_FILE,
  WEIGHTS_INDEX_FILE,
  writeAtomically,
} from './hub-snapshot.js';

function normalizeEtag(value: string | null): string | undefined {
  if (!value) return undefined;
  const etag = value
    .trim()
    .replace(/^W\//, '')
    .replace(/^"(.*)"$/, '$1');
  return /^[\w.-]+$/.test(etag) ? etag : undefined;
}

interface FileMeta {
  commit: string | undefined;
  etag: string | undefined;
  size: number | undefined;
  downloadUrl: string;
}

export class HubDownloader {
  readonly #s: HubSettings;
  readonly #repoDir: string;
  readonly #http: HubHttp;

  constructor(settings: HubSettings) {
    this.#s = settings;
    this.#repoDir = repoCacheDir(settings.cacheDir, settings.repoId);
    this.#http = new HubHttp(settings);
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
    const { response, done } = await this.#http.withRetries(url, () => this.#http.request(url, 'GET', {}));
    let body: unknown;
    try {
      if (response.status === 404 && !response.headers.get('x-error-code')) {
        await response.body?.cancel();
        return undefined;
      }
      if (!response.ok) throw await this.#http.httpError(response, url, undefined);
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
    const meta = await this.#http.withRetries(url, () => this.#head(url, file));
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
      const res = await this.#http.fetchOnce(current, 'HEAD', {});
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
          throw await this.#http.httpError(res, current, file);
        return undefined;
      }
      if (!res.ok) throw await this.#http.httpError(res, current, file);
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
          throw this.#http.finalError(err, meta.downloadUrl);
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
    const { response, controller, resetIdle, done } = await this.#http.request(
      meta.downloadUrl,
      'GET',
      headers,
    );
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
        throw await this.#http.httpError(response, meta.downloadUrl, file);
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
}
