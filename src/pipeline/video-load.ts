/**
 * The model card's `load_video` up to frame extraction: the official frame sampling (preprocess/video.ts) over a file
 * probed and decoded by io/video.ts.
 */
import { InternVLError } from '../errors.js';
import type { RgbImage } from '../io/rgb-image.js';
import { decodeVideoFrames, type ProbeVideoOptions, probeVideo } from '../io/video.js';
import { videoFrameIndices } from '../preprocess/video.js';

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
