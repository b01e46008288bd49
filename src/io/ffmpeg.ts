/**
 * Locating the ffmpeg binary and running it on a video: bounded by a timeout, an abort signal and a cap on
 * stdout, with passthrough frame timing in the spelling the binary understands.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { InternVLError } from '../errors.js';

const FFMPEG_PACKAGE = '@ffmpeg-installer/linux-x64';
/** Default limit on one ffmpeg run. */
export const DEFAULT_TIMEOUT_MS = 300_000;
const STDERR_KEEP_CHARS = 64 * 1024;

let cachedFfmpeg: string | undefined;
/** ffmpeg ≥ 5.1 spells passthrough timing `-fps_mode passthrough`; older builds only know `-vsync 0`. */
let passthroughArgs: readonly string[] = ['-fps_mode', 'passthrough'];
const LEGACY_PASSTHROUGH_ARGS: readonly string[] = ['-vsync', '0'];

function isExecutableFile(file: string): boolean {
  try {
    if (!fs.statSync(file).isFile()) return false;
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Path of the ffmpeg binary: `ffmpeg` on PATH (e.g. Debian's package) when present, else the static build
 * shipped in the optional npm package @ffmpeg-installer/linux-x64.
 */
export function findFfmpeg(): string {
  if (cachedFfmpeg !== undefined) return cachedFfmpeg;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const candidate = path.join(dir, 'ffmpeg');
    if (isExecutableFile(candidate)) {
      cachedFfmpeg = candidate;
      return candidate;
    }
  }
  let packaged: string | undefined;
  try {
    const manifest = createRequire(import.meta.url).resolve(`${FFMPEG_PACKAGE}/package.json`);
    packaged = path.join(path.dirname(manifest), 'ffmpeg');
  } catch {
    packaged = undefined;
  }
  if (packaged !== undefined && isExecutableFile(packaged)) {
    cachedFfmpeg = packaged;
    return packaged;
  }
  throw new InternVLError(
    'BAD_VIDEO',
    'ffmpeg not found: install it on PATH (e.g. `apt-get install ffmpeg`) or install the npm package ' +
      `${FFMPEG_PACKAGE} (an optional dependency of this library)`,
  );
}

export interface FfmpegRun {
  stdout: Buffer;
  /** The first STDERR_KEEP_CHARS characters of stderr: the banner with the stream lines. */
  stderrHead: string;
  /** The last STDERR_KEEP_CHARS characters of stderr: where ffmpeg reports why it stopped. */
  stderrTail: string;
}

export interface FfmpegRunOptions {
  videoPath: string;
  timeoutMs: number;
  /** stdout beyond this many bytes means something is wrong: the process is killed. */
  maxStdoutBytes: number;
  signal?: AbortSignal;
}

export function lastLine(text: string): string {
  const lines = text
    .split(/[\r\n]+/)
    .map((line) => line.trim())
    .filter((line) => line !== '');
  return lines.at(-1) ?? '(no output)';
}

/** An ffmpeg run that exited with a non-zero status; carries the start of its stderr. */
class FfmpegExitError extends InternVLError {
  readonly stderrHead: string;
  constructor(message: string, stderrHead: string) {
    super('BAD_VIDEO', message);
    this.stderrHead = stderrHead;
  }
}

/** Runs ffmpeg to completion; never outlives the timeout, an abort, or a stdout overflow. */
function spawnFfmpeg(args: readonly string[], options: FfmpegRunOptions): Promise<FfmpegRun> {
  const { videoPath, timeoutMs, maxStdoutBytes, signal } = options;
  const ffmpeg = findFfmpeg();
  if (signal?.aborted) {
    return Promise.reject(new InternVLError('ABORTED', `decoding ${videoPath} was aborted`));
  }
  return new Promise((resolve, reject) => {
    const child = spawn(ffmpeg, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    let stdoutBytes = 0;
    let stderrHead = '';
    let stderrTail = '';
    let failure: InternVLError | undefined;

    const fail = (error: InternVLError): void => {
      if (failure !== undefined) return;
      failure = error;
      child.kill('SIGKILL');
    };
    const onAbort = (): void => fail(new InternVLError('ABORTED', `decoding ${videoPath} was aborted`));
    const timer = setTimeout(
      () => fail(new InternVLError('BAD_VIDEO', `ffmpeg timed out after ${timeoutMs} ms on ${videoPath}`)),
      timeoutMs,
    );
    signal?.addEventListener('abort', onAbort, { once: true });
    const cleanup = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };

    child.stdout.on('data', (chunk: Buffer) => {
      stdoutBytes += chunk.length;
      if (stdoutBytes > maxStdoutBytes) {
        fail(
          new InternVLError(
            'BAD_VIDEO',
            `ffmpeg produced more output than expected (${maxStdoutBytes} bytes) for ${videoPath}`,
          ),
        );
        return;
      }
      chunks.push(chunk);
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text: string) => {
      if (stderrHead.length < STDERR_KEEP_CHARS) {
        stderrHead += text.slice(0, STDERR_KEEP_CHARS - stderrHead.length);
      }
      stderrTail = (stderrTail + text).slice(-STDERR_KEEP_CHARS);
    });
    child.on('error', (error) => {
      cleanup();
      reject(
        new InternVLError(
          'BAD_VIDEO',
          `could not run ffmpeg (${ffmpeg}) for ${videoPath}: ${error.message}`,
          {
            cause: error,
          },
        ),
      );
    });
    child.on('close', (code, killSignal) => {
      cleanup();
      if (failure !== undefined) {
        reject(failure);
      } else if (code !== 0) {
        const status = code === null ? `signal ${killSignal}` : `exit code ${code}`;
        reject(
          new FfmpegExitError(
            `ffmpeg failed on ${videoPath} (${status}): ${lastLine(stderrTail)}`,
            stderrHead,
          ),
        );
      } else {
        resolve({ stdout: Buffer.concat(chunks), stderrHead, stderrTail });
      }
    });
  });
}

/**
 * Runs ffmpeg with passthrough frame timing (no frames duplicated or dropped) spliced in where
 * `buildArgs` puts it, falling back once to the pre-5.1 spelling when the binary does not know `-fps_mode`.
 */
export async function runFfmpegPassthrough(
  buildArgs: (passthrough: readonly string[]) => string[],
  options: FfmpegRunOptions,
): Promise<FfmpegRun> {
  const used = passthroughArgs;
  try {
    return await spawnFfmpeg(buildArgs(used), options);
  } catch (error) {
    const unknownOption =
      error instanceof FfmpegExitError && error.stderrHead.includes("Unrecognized option 'fps_mode'");
    if (!unknownOption || used[0] !== '-fps_mode') throw error;
    passthroughArgs = LEGACY_PASSTHROUGH_ARGS;
    return spawnFfmpeg(buildArgs(LEGACY_PASSTHROUGH_ARGS), options);
  }
}
