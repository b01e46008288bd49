/** `internvl serve` as a child process on 127.0.0.1, for tests that need a separate event loop and RSS. */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from './helpers.js';

export interface ServeProcess {
  child: ChildProcessWithoutNullStreams;
  url: string;
  stderr(): string;
  /** Resident set size of the server process, in MiB. */
  rssMiB(): number;
  stop(): Promise<void>;
}

/**
 * Starts the server on a free port and resolves once /ready answers 200. Graphs are built in a
 * temporary cache removed on stop, unless `cacheDir` names one to keep.
 */
export async function startServe(
  model: string,
  flags: string[] = [],
  cacheDir?: string,
): Promise<ServeProcess> {
  const cache = cacheDir ?? mkdtempSync(path.join(os.tmpdir(), 'ivl-serve-child-'));
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      'src/cli/main-entry.ts',
      'serve',
      model,
      '--port',
      '0',
      '--host',
      '127.0.0.1',
      ...flags,
    ],
    { cwd: REPO_ROOT, env: { ...process.env, INTERNVL_CACHE: cache }, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    }
    if (!cacheDir) rmSync(cache, { recursive: true, force: true });
  };
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const onData = () => {
        const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
        if (m) {
          child.stderr.off('data', onData);
          resolve(m[1]);
        }
      };
      child.stderr.on('data', onData);
      child.once('exit', (code) => reject(new Error(`internvl serve exited ${code}: ${stderr}`)));
    });
    for (;;) {
      const status = await new Promise<number>((resolve) =>
        http
          .get(`${url}/ready`, (res) => resolve(res.resume().statusCode ?? 0))
          .on('error', () => resolve(0)),
      );
      if (status === 200) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    return {
      child,
      url,
      stderr: () => stderr,
      rssMiB: () => {
        const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
        return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1]) / 1024;
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
