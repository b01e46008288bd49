import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import type { RgbImage } from '../preprocess/image.js';
import { videoFrameIndices } from '../preprocess/video.js';

const FFMPEG_PACKAGE = '@ffmpeg-installer/linux-x64';
const DEFAULT_TIMEOUT_MS = 300_000;
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

interface FfmpegRun {
  stdout: Buffer;
  /** The first STDERR_KEEP_CHARS characters of stderr: the banner with the stream lines. */
  stderrHead: string;
  /** The last STDERR_KEEP_CHARS characters of stderr: where ffmpeg reports why it stopped. */
  stderrTail: string;
}

interface FfmpegRunOptions {
  videoPath: string;
  timeoutMs: number;
  /** stdout beyond this many bytes means something is wrong: the process is killed. */
  maxStdoutBytes: number;
  signal?: AbortSignal;
}

function lastLine(text: string): string {
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
async function runFfmpegPassthrough(
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

/** What loadVideo needs to know about a video's first (non-cover-art) video stream. */
export interface VideoInfo {
  /** Number of decoded frames, which is what the official loader's `len(vr)` counts. */
  numFrames: number;
  /** The stream's average frame rate (falls back to its real base rate, `tbr`, when absent). */
  fps: number;
  width: number;
  height: number;
}

/**
 * ffmpeg prints rates with 2 decimals ("29.97 fps"). Rates that are NTSC-style k·1000/1001 are restored to
 * that exact rational; others are returned as printed (exact for integer and 2-decimal rates).
 */
export function parseFfmpegRate(printed: string): number {
  const value = printed.endsWith('k') ? Number(printed.slice(0, -1)) * 1000 : Number(printed);
  if (!Number.isFinite(value) || value <= 0) return Number.NaN;
  if (/\.\d{2}$/.test(printed)) {
    const k = Math.round((value * 1001) / 1000);
    const ntsc = (k * 1000) / 1001;
    if (k > 0 && Math.abs(ntsc - value) < 0.005 && !Number.isInteger(value)) {
      return ntsc;
    }
  }
  return value;
}

/** Parses the first input video stream line (skipping cover art) of ffmpeg's stderr banner. */
export function parseVideoStreamLine(stderr: string): { width: number; height: number; fps: number } | null {
  const inputPart = stderr.split(/\n\s*(?:Stream mapping:|Output #0)/)[0] ?? '';
  const line = inputPart
    .split('\n')
    .find((l) => /^\s*Stream #0:\d+.*?: Video: /.test(l) && !l.includes('(attached pic)'));
  if (line === undefined) return null;
  const description = line.slice(line.indexOf(': Video: ') + 9);
  const size = /(?:^|[\s,])(\d+)x(\d+)(?=[\s,[]|$)/.exec(description);
  if (size === null) return null;
  const fpsMatch = /([\d.]+k?) fps\b/.exec(description);
  const tbrMatch = /([\d.]+k?) tbr\b/.exec(description);
  const fps = parseFfmpegRate(fpsMatch?.[1] ?? tbrMatch?.[1] ?? '');
  return { width: Number(size[1]), height: Number(size[2]), fps };
}

function checkVideoFile(videoPath: string): string {
  const absolute = path.resolve(videoPath);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(absolute);
  } catch {
    throw new InternVLError('BAD_VIDEO', `video file not found: ${videoPath}`);
  }
  if (!stat.isFile()) throw new InternVLError('BAD_VIDEO', `video path is not a file: ${videoPath}`);
  return absolute;
}

export interface ProbeVideoOptions {
  /** Per ffmpeg run; default 300 000 ms. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Frame count, average fps and size of the first video stream, from one full decode pass
 * (`-f null`, passthrough timing): the count is the number of frames actually decoded.
 */
export async function probeVideo(videoPath: string, options: ProbeVideoOptions = {}): Promise<VideoInfo> {
  const file = checkVideoFile(videoPath);
  const { stdout, stderrHead, stderrTail } = await runFfmpegPassthrough(
    (passthrough) => [
      '-hide_banner',
      '-nostdin',
      '-nostats',
      '-noautorotate',
      '-i',
      file,
      '-map',
      '0:V:0',
      ...passthrough,
      '-f',
      'null',
      '-progress',
      'pipe:1',
      '-',
    ],
    {
      videoPath,
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      maxStdoutBytes: 16 * 1024 * 1024,
      signal: options.signal,
    },
  );
  const stream = parseVideoStreamLine(stderrHead);
  if (stream === null) {
    throw new InternVLError('BAD_VIDEO', `no video stream found in ${videoPath}: ${lastLine(stderrTail)}`);
  }
  const frameCounts = [...stdout.toString('utf8').matchAll(/^frame=(\d+)$/gm)];
  const numFrames = Number(frameCounts.at(-1)?.[1] ?? Number.NaN);
  if (!Number.isInteger(numFrames) || numFrames < 1) {
    throw new InternVLError('BAD_VIDEO', `no decodable video frames in ${videoPath}`);
  }
  if (!Number.isFinite(stream.fps)) {
    throw new InternVLError('BAD_VIDEO', `video stream of ${videoPath} has no frame rate`);
  }
  return { numFrames, fps: stream.fps, width: stream.width, height: stream.height };
}

/**
 * Decodes the given frame numbers (0-based, in decode order) as RGB24 at the source resolution, in one ffmpeg
 * run. Numbers may repeat and come in any order; each must lie in [0, info.numFrames − 1].
 */
export async function decodeVideoFrames(
  videoPath: string,
  frameNumbers: readonly number[],
  info: VideoInfo,
  options: ProbeVideoOptions = {},
): Promise<RgbImage[]> {
  const file = checkVideoFile(videoPath);
  for (const n of frameNumbers) {
    if (!Number.isInteger(n) || n < 0 || n >= info.numFrames) {
      throw new InternVLError(
        'BAD_VIDEO',
        `frame number ${n} is outside 0..${info.numFrames - 1} for ${videoPath}`,
      );
    }
  }
  if (frameNumbers.length === 0) return [];
  const unique = [...new Set(frameNumbers)].sort((a, b) => a - b);
  const frameBytes = info.width * info.height * 3;
  const expectedBytes = unique.length * frameBytes;
  const select = `select='${unique.map((n) => `eq(n,${n})`).join('+')}'`;
  const { stdout } = await runFfmpegPassthrough(
    (passthrough) => [
      '-hide_banner',
      '-nostdin',
      '-nostats',
      '-loglevel',
      'error',
      '-noautorotate',
      '-i',
      file,
      '-map',
      '0:V:0',
      '-vf',
      select,
      ...passthrough,
      '-f',
      'rawvideo',
      '-pix_fmt',
      'rgb24',
      'pipe:1',
    ],
    {
      videoPath,
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      maxStdoutBytes: expectedBytes,
      signal: options.signal,
    },
  );
  if (stdout.length !== expectedBytes) {
    throw new InternVLError(
      'BAD_VIDEO',
      `ffmpeg returned ${stdout.length} bytes for ${unique.length} frames of ${info.width}x${info.height} ` +
        `from ${videoPath} (expected ${expectedBytes})`,
    );
  }
  const byNumber = new Map<number, Uint8Array>();
  unique.forEach((n, i) => {
    byNumber.set(n, new Uint8Array(stdout.buffer, stdout.byteOffset + i * frameBytes, frameBytes));
  });
  return frameNumbers.map((n) => ({
    width: info.width,
    height: info.height,
    // Repeated indices get their own copy so callers may mutate frames independently.
    data: Uint8Array.from(byNumber.get(n)!),
  }));
}

export interface LoadVideoOptions extends ProbeVideoOptions {
  /** Frames to sample; default 8, as in the model card. */
  numSegments?: number;
  /** Clip `[startSec, endSec]`; default the whole video. */
  bound?: readonly [number, number] | null;
  /** Refuse (BAD_VIDEO) a numSegments above this, a guard on memory for untrusted requests. */
  maxFrames?: number;
}

export interface LoadedVideo {
  /** RGB frames at the source resolution, one per index, in index order. */
  frames: RgbImage[];
  /** The official get_index result, unclamped (may repeat, may fall outside the video). */
  indices: number[];
  fps: number;
  numFrames: number;
}

/**
 * The model card's `load_video` up to frame extraction: samples numSegments frame indices with the official
 * get_index and decodes those frames. Indices outside [0, numFrames − 1] (possible with a bound past the end
 * of the video) are clamped into that range for decoding, since the file has no such frame; `indices` keeps
 * the unclamped values. Rotation metadata is ignored, as decord does.
 */
export async function loadVideo(videoPath: string, options: LoadVideoOptions = {}): Promise<LoadedVideo> {
  const { numSegments = 8, bound = null, maxFrames } = options;
  if (maxFrames !== undefined && numSegments > maxFrames) {
    throw new InternVLError(
      'BAD_VIDEO',
      `numSegments ${numSegments} exceeds maxFrames ${maxFrames} for ${videoPath}`,
    );
  }
  // Validate the sampling options before spending a decode pass on the file.
  videoFrameIndices({ numFrames: 1, fps: 1, numSegments, bound });
  const info = await probeVideo(videoPath, options);
  const indices = videoFrameIndices({ numFrames: info.numFrames, fps: info.fps, numSegments, bound });
  const clamped = indices.map((i) => Math.min(Math.max(i, 0), info.numFrames - 1));
  const frames = await decodeVideoFrames(videoPath, clamped, info, options);
  return { frames, indices, fps: info.fps, numFrames: info.numFrames };
}
