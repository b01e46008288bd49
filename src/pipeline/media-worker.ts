/** The media worker thread: tiles and normalises images and video frames for the pipeline. */
import { parentPort } from 'node:worker_threads';
import { serveCalls } from '../engine/worker-rpc.js';
import type { RgbImage } from '../preprocess/image.js';
import { type ImageTiling, prepareFrames, prepareImage } from './media-prep.js';

if (!parentPort) throw new Error('media worker started outside a worker thread');
serveCalls(parentPort, () => ({
  prepareImage: (image, tiling) => prepareImage(image as RgbImage, tiling as ImageTiling),
  prepareFrames: (frames, tileSize) => prepareFrames(frames as RgbImage[], tileSize as number),
}));
