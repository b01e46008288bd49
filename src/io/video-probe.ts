/**
 * What a video file holds, before any frame is decoded: the path check, ffmpeg's banner parsed, and the probe
 * pass that counts frames.
 */
import fs from 'node:fs';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { DEFAULT_TIMEOUT_MS, lastLine, runFfmpegPassthrough } from './ffmpeg.js';

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

export function checkVideoFile(videoPath: string): string {
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
