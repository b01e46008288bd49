/**
 * Frames out of a video: chosen frame numbers decoded in one ffmpeg run. Probing lives in video-probe.ts and
 * the ffmpeg process in ffmpeg.ts; their public names are re-exported here. The model card's `load_video`
 * (which frames to take) is pipeline/video-load.ts.
 */
import { InternVLError } from '../errors.js';
import { DEFAULT_TIMEOUT_MS, runFfmpegPassthrough } from './ffmpeg.js';
import type { RgbImage } from './rgb-image.js';
import { checkVideoFile, type ProbeVideoOptions, type VideoInfo } from './video-probe.js';

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
