import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

/** One revision of a fake repo: its commit hash and the folder whose files it serves. */
export interface FakeRevision {
  commit: string;
  dir: string;
}

export interface FakeHubOptions {
  /** repo id -> revision name -> content. A commit hash also works as a revision. */
  repos: Record<string, Record<string, FakeRevision>>;
  /** When set, /api and /resolve requests need `Authorization: Bearer <token>`. */
  requireToken?: string;
  /** Serve GET /api/models/{id}/revision/{rev} (default true); otherwise it is a plain 404. */
  revisionApi?: boolean;
  /** The first download of `file` (without Range) sends `afterBytes` bytes and drops the connection. */
  dropOnce?: { file: string; afterBytes: number };
  /** Answer Range requests with the whole file (200). */
  ignoreRange?: boolean;
  /** Called when a download asks for a range, before answering it. */
  onRangeRequest?: (file: string, start: number) => void | Promise<void>;
}

export interface LoggedRequest {
  method: string;
  url: string;
  range: string | undefined;
  authorization: string | undefined;
}

export interface FakeHub {
  url: string;
  requests: LoggedRequest[];
  close(): Promise<void>;
}

interface Blob {
  file: string;
  content: Buffer;
}

const isLfs = (file: string) => file.endsWith('.safetensors');

/**
 * A local HTTP server answering like huggingface.co: resolve URLs (302 to /cdn/<sha256> for LFS
 * files, with X-Repo-Commit / X-Linked-Etag / X-Linked-Size), ETag on small files, Range requests,
 * error codes in X-Error-Code, and the revision API.
 */
export async function startFakeHub(options: FakeHubOptions): Promise<FakeHub> {
  const cdn = new Map<string, Blob>();
  const files = new Map<string, Map<string, { content: Buffer; etag: string }>>();
  for (const revisions of Object.values(options.repos)) {
    for (const rev of Object.values(revisions)) {
      if (files.has(rev.dir)) continue;
      const contents = new Map<string, { content: Buffer; etag: string }>();
      for (const name of await readdir(rev.dir)) {
        const content = await readFile(path.join(rev.dir, name));
        const etag = isLfs(name)
          ? createHash('sha256').update(content).digest('hex')
          : createHash('sha1').update(`blob ${content.length}\0`).update(content).digest('hex');
        contents.set(name, { content, etag });
        if (isLfs(name)) cdn.set(etag, { file: name, content });
      }
      files.set(rev.dir, contents);
    }
  }
  const requests: LoggedRequest[] = [];
  let dropped = false;

  const findRevision = (repo: string, rev: string): FakeRevision | undefined => {
    const revisions = options.repos[repo];
    return revisions?.[rev] ?? Object.values(revisions ?? {}).find((r) => r.commit === rev);
  };

  const sendBytes = async (req: http.IncomingMessage, res: http.ServerResponse, blob: Blob, extra = {}) => {
    const size = blob.content.length;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (range && !options.ignoreRange) {
      const start = Number(range[1]);
      await options.onRangeRequest?.(blob.file, start);
      if (start >= size) {
        res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
        return;
      }
      res.writeHead(206, {
        ...extra,
        'content-length': size - start,
        'content-range': `bytes ${start}-${size - 1}/${size}`,
      });
      res.end(req.method === 'HEAD' ? undefined : blob.content.subarray(start));
      return;
    }
    res.writeHead(200, { ...extra, 'content-length': size, 'accept-ranges': 'bytes' });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    const drop = options.dropOnce;
    if (drop && !dropped && drop.file === blob.file) {
      dropped = true;
      res.write(blob.content.subarray(0, drop.afterBytes), () => {
        setTimeout(() => res.socket?.destroy(), 30);
      });
      return;
    }
    res.end(blob.content);
  };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    requests.push({
      method: req.method ?? 'GET',
      url: url.pathname,
      range: req.headers.range,
      authorization: req.headers.authorization,
    });
    const notFound = (code: string) => res.writeHead(404, { 'x-error-code': code }).end(`${code}`);
    const handle = async () => {
      if (url.pathname.startsWith('/cdn/')) {
        const blob = cdn.get(url.pathname.slice('/cdn/'.length));
        if (!blob) return notFound('EntryNotFound');
        return sendBytes(req, res, blob);
      }
      if (options.requireToken && req.headers.authorization !== `Bearer ${options.requireToken}`) {
        res.writeHead(401, { 'x-error-message': 'Invalid username or password.' }).end();
        return;
      }
      const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
      if (api) {
        if (options.revisionApi === false) return res.writeHead(404).end('Not Found');
        const [, repo, rev] = api;
        if (!options.repos[repo]) return notFound('RepoNotFound');
        const found = findRevision(repo, decodeURIComponent(rev));
        if (!found) return notFound('RevisionNotFound');
        const siblings = [...files.get(found.dir)!.keys()].map((rfilename) => ({ rfilename }));
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ id: repo, sha: found.commit, siblings }));
        return;
      }
      const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
      if (!resolve) return res.writeHead(404).end();
      const [, repo, rev, file] = resolve;
      if (!options.repos[repo]) return notFound('RepoNotFound');
      const found = findRevision(repo, decodeURIComponent(rev));
      if (!found) return notFound('RevisionNotFound');
      const entry = files.get(found.dir)!.get(decodeURIComponent(file));
      if (!entry) return notFound('EntryNotFound');
      if (isLfs(file)) {
        res.writeHead(302, {
          location: `/cdn/${entry.etag}`,
          'x-repo-commit': found.commit,
          'x-linked-etag': `"${entry.etag}"`,
          'x-linked-size': entry.content.length,
          etag: '"not-the-blob-etag"',
        });
        res.end();
        return;
      }
      return sendBytes(
        req,
        res,
        { file, content: entry.content },
        { 'x-repo-commit': found.commit, etag: `W/"${entry.etag}"` },
      );
    };
    handle().catch((err) => {
      res.writeHead(500).end(String(err));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((err) => (err ? reject(err) : resolve()));
      }),
  };
}
