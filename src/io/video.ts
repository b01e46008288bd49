/**
 * Frames out of a video: chosen frame numbers decoded in one ffmpeg run, and the model card's `load_video`
 * sampling on top. Probing lives in video-probe.ts and the ffmpeg process in ffmpeg.ts; their public names
 * are re-exported here.
 */
import { InternVLError } from '../errors.js';
import type { RgbImage } from '../preprocess/image.js';
import { videoFrameIndices } from '../preprocess/video.js';
import { DEFAULT_TIMEOUT_MS, runFfmpegPassthrough } from './ffmpeg.js';
import { checkVideoFile, type ProbeVideoOptions, probeVideo, type VideoInfo } from './video-probe.js';

export { findFfmpeg } from './ffmpeg.js';
export {
  type ProbeVideoOptions,
  parseFfmpegRate,
  parseVideoStreamLine,
  probeVideo,
  type VideoInfo,
} from './video-probe.js';

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
