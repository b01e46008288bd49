import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import {
  copyFile,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InternVLError } from '../src/errors.js';
import { defaultHubCacheDir, parseHubId, resolveModel } from '../src/io/hub.js';
import type { DownloadProgress } from '../src/io/progress.js';
import { createProgressBar, formatBytes, formatProgressLine } from '../src/io/progress.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { writeSafetensors } from '../src/io/safetensors-write.js';
import { type FakeHub, type FakeHubOptions, startFakeHub } from './fake-hub.js';
import { goldenModelDir } from './helpers.js';

const QWEN2 = goldenModelDir('tiny-internvl2_5-qwen2');
const INTERNLM2 = goldenModelDir('tiny-internvl2_5-internlm2');
const REPO = 'test-org/tiny-qwen2';
const COMMIT_MAIN = 'a'.repeat(40);
const COMMIT_V1 = 'b'.repeat(40);
const REPOS: FakeHubOptions['repos'] = {
  [REPO]: {
    main: { commit: COMMIT_MAIN, dir: QWEN2 },
    'v1.0': { commit: COMMIT_V1, dir: INTERNLM2 },
  },
};

let tmp: string;
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'internvl-hub-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

let counter = 0;
const freshCache = () => path.join(tmp, `cache-${counter++}`);

function isError(code: string, ...fragments: string[]) {
  return (err: unknown) => {
    assert.ok(err instanceof InternVLError, `expected InternVLError, got ${err}`);
    assert.equal(err.code, code, err.message);
    for (const f of fragments) assert.ok(err.message.includes(f), `"${err.message}" should mention "${f}"`);
    return true;
  };
}

async function withHub<T>(options: Partial<FakeHubOptions>, body: (hub: FakeHub) => Promise<T>): Promise<T> {
  const hub = await startFakeHub({ repos: REPOS, ...options });
  try {
    return await body(hub);
  } finally {
    await hub.close();
  }
}

/** Every file of `sourceDir` is in `snapshot`, byte for byte, as a relative symlink into ../../blobs. */
async function assertSnapshotMatches(snapshot: string, sourceDir: string) {
  const names = (await readdir(sourceDir)).sort();
  assert.deepEqual((await readdir(snapshot)).sort(), names);
  for (const name of names) {
    const link = path.join(snapshot, name);
    assert.ok((await lstat(link)).isSymbolicLink(), `${name} should be a symlink`);
    const target = await readlink(link);
    assert.match(target, /^\.\.\/\.\.\/blobs\/[0-9a-f]{40,64}$/);
    assert.deepEqual(await readFile(link), await readFile(path.join(sourceDir, name)), name);
  }
  const blobs = await readdir(path.join(snapshot, '../../blobs'));
  assert.ok(!blobs.some((b) => b.endsWith('.incomplete')), 'no partial file left');
}

describe('hub ids', () => {
  test('parseHubId', () => {
    assert.deepEqual(parseHubId('OpenGVLab/InternVL2_5-1B'), {
      repoId: 'OpenGVLab/InternVL2_5-1B',
      revision: undefined,
    });
    assert.deepEqual(parseHubId('Org/Name@v1.0'), { repoId: 'Org/Name', revision: 'v1.0' });
    assert.equal(parseHubId('justaname'), undefined);
    assert.equal(parseHubId('a/b/c'), undefined);
    assert.equal(parseHubId('Org/Name@'), undefined);
  });

  test('local folders', async () => {
    assert.equal(await resolveModel(QWEN2), QWEN2);
    const empty = await mkdtemp(path.join(tmp, 'not-a-model-'));
    await assert.rejects(resolveModel(empty), isError('NOT_FOUND', empty, 'config.json'));
    await assert.rejects(resolveModel('./no/such/folder'), isError('NOT_FOUND', './no/such/folder'));
    await assert.rejects(resolveModel('plainword'), isError('NOT_FOUND', 'plainword'));
  });
});

describe('download', () => {
  test('fresh download: files, symlink layout, refs, progress; a warm cache needs only the listing', async () => {
    await withHub({}, async (hub) => {
      const cacheDir = freshCache();
      const progress: DownloadProgress[] = [];
      const dir = await resolveModel(REPO, {
        cacheDir,
        endpoint: hub.url,
        offline: false,
        onProgress: (p) => progress.push({ ...p }),
      });
      const repoDir = path.join(cacheDir, 'models--test-org--tiny-qwen2');
      assert.equal(dir, path.join(repoDir, 'snapshots', COMMIT_MAIN));
      await assertSnapshotMatches(dir, QWEN2);
      assert.equal(await readFile(path.join(repoDir, 'refs', 'main'), 'utf8'), COMMIT_MAIN);
      const weights = progress.filter((p) => p.file === 'model.safetensors');
      assert.deepEqual(weights.at(-1), { file: 'model.safetensors', downloaded: 620952, total: 620952 });
      assert.ok(
        hub.requests.some((r) => r.url.startsWith('/cdn/')),
        'LFS file came through the redirect',
      );

      const before = hub.requests.length;
      assert.equal(await resolveModel(REPO, { cacheDir, endpoint: hub.url, offline: false }), dir);
      assert.deepEqual(
        hub.requests.slice(before).map((r) => r.url),
        [`/api/models/${REPO}/revision/main`],
      );
    });
  });

  test('a dropped connection is resumed with a Range request; no file under its final name meanwhile', async () => {
    const cacheDir = freshCache();
    const blobsDir = path.join(cacheDir, 'models--test-org--tiny-qwen2', 'blobs');
    const seen: { start: number; partialSize: number; finalExists: boolean }[] = [];
    await withHub(
      {
        dropOnce: { file: 'model.safetensors', afterBytes: 300_000 },
        onRangeRequest: async (file, start) => {
          const names = await readdir(blobsDir);
          const partial = names.find((n) => n.endsWith('.incomplete'));
          assert.ok(partial, `a .incomplete file exists while ${file} is resumed`);
          seen.push({
            start,
            partialSize: (await stat(path.join(blobsDir, partial))).size,
            finalExists: existsSync(path.join(blobsDir, partial.replace(/\.incomplete$/, ''))),
          });
        },
      },
      async (hub) => {
        const dir = await resolveModel(REPO, { cacheDir, endpoint: hub.url, offline: false });
        await assertSnapshotMatches(dir, QWEN2);
        assert.equal(seen.length, 1);
        assert.ok(seen[0].start > 0, 'resumed from the bytes already on disk');
        assert.equal(seen[0].partialSize, seen[0].start);
        assert.equal(seen[0].finalExists, false);
        const ranged = hub.requests.filter((r) => r.range !== undefined);
        assert.deepEqual(
          ranged.map((r) => r.range),
          [`bytes=${seen[0].start}-`],
        );
      },
    );
  });

  test('a server that ignores Range gets the whole file again', async () => {
    const cacheDir = freshCache();
    await withHub(
      { dropOnce: { file: 'model.safetensors', afterBytes: 100_000 }, ignoreRange: true },
      async (hub) => {
        const dir = await resolveModel(REPO, { cacheDir, endpoint: hub.url, offline: false });
        await assertSnapshotMatches(dir, QWEN2);
        assert.equal(
          hub.requests.filter((r) => r.url.startsWith('/cdn/') && r.range !== undefined).length,
          1,
        );
      },
    );
  });

  test('@revision id and the probing fallback without the revision API', async () => {
    await withHub({ revisionApi: false }, async (hub) => {
      const cacheDir = freshCache();
      const dir = await resolveModel(`${REPO}@v1.0`, { cacheDir, endpoint: hub.url, offline: false });
      const repoDir = path.join(cacheDir, 'models--test-org--tiny-qwen2');
      assert.equal(dir, path.join(repoDir, 'snapshots', COMMIT_V1));
      await assertSnapshotMatches(dir, INTERNLM2);
      assert.equal(await readFile(path.join(repoDir, 'refs', 'v1.0'), 'utf8'), COMMIT_V1);
      // After the commit is known, files are asked for by commit, so a moving branch cannot mix revisions.
      assert.ok(hub.requests.some((r) => r.url.includes(`/resolve/${COMMIT_V1}/`)));
      assert.equal(
        await resolveModel(REPO, { cacheDir, endpoint: hub.url, offline: false, revision: COMMIT_V1 }),
        dir,
      );
    });
  });

  test('sharded weights: the index and every shard it lists', async () => {
    const source = await mkdtemp(path.join(tmp, 'sharded-src-'));
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) {
      await copyFile(path.join(QWEN2, f), path.join(source, f));
    }
    await writeSafetensors(path.join(source, 'model-00001-of-00002.safetensors'), {
      a: { dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) },
    });
    await writeSafetensors(path.join(source, 'model-00002-of-00002.safetensors'), {
      b: { dtype: 'F32', shape: [1], data: new Float32Array([3]) },
    });
    const weightMap = { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' };
    await writeFile(
      path.join(source, 'model.safetensors.index.json'),
      JSON.stringify({ weight_map: weightMap }),
    );
    const repos = { 'test-org/sharded': { main: { commit: 'c'.repeat(40), dir: source } } };
    for (const revisionApi of [true, false]) {
      await withHub({ repos, revisionApi }, async (hub) => {
        const dir = await resolveModel('test-org/sharded', {
          cacheDir: freshCache(),
          endpoint: hub.url,
          offline: false,
        });
        await assertSnapshotMatches(dir, source);
        const ckpt = await Checkpoint.open(dir);
        assert.deepEqual([...(await ckpt.readFloat32('b'))], [3]);
        await ckpt.close();
      });
    }
  });

  test('unknown model or file is NOT_FOUND naming it', async () => {
    for (const revisionApi of [true, false]) {
      await withHub({ revisionApi }, async (hub) => {
        const options = { cacheDir: freshCache(), endpoint: hub.url, offline: false };
        await assert.rejects(
          resolveModel('test-org/missing', options),
          isError('NOT_FOUND', 'test-org/missing'),
        );
        await assert.rejects(
          resolveModel(`${REPO}@nope`, options),
          isError('NOT_FOUND', REPO, revisionApi ? 'revision "nope"' : 'nope'),
        );
        await assert.rejects(
          resolveModel(REPO, { ...options, files: ['preprocessor_config.json'] }),
          isError('NOT_FOUND', REPO, 'preprocessor_config.json'),
        );
      });
    }
  });

  test('a hub that wants a token: 401 without it, works with it', async () => {
    await withHub({ requireToken: 'secret-token' }, async (hub) => {
      const cacheDir = freshCache();
      await assert.rejects(
        resolveModel(REPO, { cacheDir, endpoint: hub.url, offline: false, token: undefined }),
        isError('UNAUTHORIZED', 'HF_TOKEN', REPO),
      );
      const dir = await resolveModel(REPO, {
        cacheDir,
        endpoint: hub.url,
        offline: false,
        token: 'secret-token',
      });
      await assertSnapshotMatches(dir, QWEN2);
      assert.ok(
        hub.requests.filter((r) => r.url.startsWith('/api/')).at(-1)?.authorization === 'Bearer secret-token',
      );
    });
  });

  test('offline: warm cache without the network, cold or partial cache is OFFLINE', async () => {
    const cacheDir = freshCache();
    const dir = await withHub({}, (hub) =>
      resolveModel(REPO, { cacheDir, endpoint: hub.url, offline: false }),
    );
    // The server is closed now: any network use would fail.
    assert.equal(await resolveModel(REPO, { cacheDir, endpoint: 'http://127.0.0.1:9', offline: true }), dir);
    await assert.rejects(
      resolveModel(REPO, { cacheDir: freshCache(), offline: true }),
      isError('OFFLINE', REPO, 'refs'),
    );
    await assert.rejects(
      resolveModel(`${REPO}@v1.0`, { cacheDir, offline: true }),
      isError('OFFLINE', 'v1.0'),
    );
    await rm(path.join(dir, 'model.safetensors'));
    await assert.rejects(
      resolveModel(REPO, { cacheDir, offline: true }),
      isError('OFFLINE', REPO, 'model.safetensors'),
    );
  });

  test('unreachable hub: DOWNLOAD naming the URL, or the complete cached snapshot', async () => {
    const cacheDir = freshCache();
    const hub = await startFakeHub({ repos: REPOS });
    const endpoint = hub.url;
    const dir = await resolveModel(REPO, { cacheDir, endpoint, offline: false });
    await hub.close();
    const options = { endpoint, offline: false, maxRetries: 1 };
    await assert.rejects(
      resolveModel(REPO, { ...options, cacheDir: freshCache() }),
      isError('DOWNLOAD', `${endpoint}/api/models/${REPO}`),
    );
    assert.equal(await resolveModel(REPO, { ...options, cacheDir }), dir);
  });
});

test('a server that never answers times out; an abort signal stops the wait', async () => {
  const sockets = new Set<import('node:net').Socket>();
  const server = http.createServer(() => {});
  server.on('connection', (socket) => sockets.add(socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const options = { cacheDir: freshCache(), endpoint, offline: false, maxRetries: 0 };
    await assert.rejects(
      resolveModel(REPO, { ...options, timeoutMs: 200 }),
      isError('DOWNLOAD', `${endpoint}/api/models/${REPO}`, 'no data for 200 ms'),
    );
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    await assert.rejects(resolveModel(REPO, { ...options, signal: controller.signal }), isError('ABORTED'));
  } finally {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
});

describe('environment variables', () => {
  const names = [
    'HF_HOME',
    'HF_HUB_CACHE',
    'HF_ENDPOINT',
    'HF_HUB_OFFLINE',
    'HF_TOKEN',
    'XDG_CACHE_HOME',
  ] as const;
  let saved: Record<string, string | undefined>;
  before(() => {
    saved = Object.fromEntries(names.map((n) => [n, process.env[n]]));
    for (const n of names) delete process.env[n];
  });
  after(() => {
    for (const n of names) {
      if (saved[n] === undefined) delete process.env[n];
      else process.env[n] = saved[n];
    }
  });

  test('cache folder precedence', () => {
    assert.equal(defaultHubCacheDir({ HOME: '/h' }), path.join(os.homedir(), '.cache', 'huggingface', 'hub'));
    assert.equal(defaultHubCacheDir({ XDG_CACHE_HOME: '/x' }), '/x/huggingface/hub');
    assert.equal(defaultHubCacheDir({ HF_HOME: '/hf' }), '/hf/hub');
    assert.equal(defaultHubCacheDir({ HF_HOME: '/hf', HF_HUB_CACHE: '/cache' }), '/cache');
  });

  test('HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE and HF_HUB_OFFLINE are honoured', async () => {
    const home = path.join(tmp, 'hf-home');
    await withHub({ requireToken: 'env-token' }, async (hub) => {
      process.env.HF_HOME = home;
      process.env.HF_ENDPOINT = `${hub.url}/`;
      process.env.HF_TOKEN = 'env-token';
      const dir = await resolveModel(REPO);
      assert.equal(dir, path.join(home, 'hub', 'models--test-org--tiny-qwen2', 'snapshots', COMMIT_MAIN));
      await assertSnapshotMatches(dir, QWEN2);
    });
    process.env.HF_ENDPOINT = 'http://127.0.0.1:9';
    process.env.HF_HUB_OFFLINE = '1';
    assert.equal(
      await resolveModel(REPO),
      path.join(home, 'hub', 'models--test-org--tiny-qwen2', 'snapshots', COMMIT_MAIN),
    );
    const other = path.join(tmp, 'hf-hub-cache');
    await mkdir(other);
    process.env.HF_HUB_CACHE = other;
    await assert.rejects(resolveModel(REPO), isError('OFFLINE', other));
    // Options win over the environment.
    assert.equal(
      await resolveModel(REPO, { cacheDir: path.join(home, 'hub') }),
      path.join(home, 'hub', 'models--test-org--tiny-qwen2', 'snapshots', COMMIT_MAIN),
    );
  });
});

describe('progress bar', () => {
  test('draws only on a TTY and ends the line when a file completes', () => {
    const written: string[] = [];
    const tty = { isTTY: true, columns: 100, write: (t: string) => written.push(t) };
    const bar = createProgressBar(tty, 0);
    bar({ file: 'model.safetensors', downloaded: 512, total: 1024 });
    bar({ file: 'model.safetensors', downloaded: 1024, total: 1024 });
    assert.ok(written[0].includes('model.safetensors  50%'));
    assert.ok(written.join('').includes('100%'));
    assert.equal(written.at(-1), '\n');
    const quiet: string[] = [];
    createProgressBar({ isTTY: false, write: (t: string) => quiet.push(t) })({
      file: 'x',
      downloaded: 1,
      total: 2,
    });
    assert.deepEqual(quiet, []);
    assert.equal(formatBytes(1536), '1.5 KiB');
    assert.equal(formatProgressLine({ file: 'f', downloaded: 10, total: undefined }), 'f 10 B');
  });
});
