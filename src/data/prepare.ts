import { InternVLError } from '../errors.js';
import { loadImage } from '../io/image.js';
import { decodeVideoFrames, probeVideo } from '../io/video.js';
import type { RgbImage } from '../preprocess/image.js';
import { dynamicPreprocess } from '../preprocess/tiles.js';
import { planTiles } from '../preprocess/tiling.js';
import { videoToTiles } from '../preprocess/video.js';
import {
  addImagePlaceholder,
  addVideoFrames,
  type TrainingTurn,
  tokenizeTrainingSample,
} from '../text/training.js';
import type { Tokenizer } from '../text/types.js';
import { augmentTiles } from './augment.js';
import type { AnnotationSample, DatasetSpec } from './meta.js';
import {
  DEFAULT_MAX_NUM_FRAME,
  DEFAULT_MIN_NUM_FRAME,
  drawJpegQualities,
  drawNumFrames,
  maxTilesPerImage,
  type Rng,
  trainingFrameIndices,
} from './sampling.js';

/** The training settings a sample is prepared with (model config values and training script arguments). */
export interface PrepareOptions {
  tokenizer: Tokenizer;
  /** LLM tokens per tile (`numImageTokens(config)`, 256 for InternVL 2.5). */
  numImageToken: number;
  /** Global n_max, overridden per dataset by `max_dynamic_patch` in the meta file. */
  maxDynamicPatch: number;
  minDynamicPatch?: number;
  useThumbnail?: boolean;
  tileSize?: number;
  minNumFrame?: number;
  maxNumFrame?: number;
}

/** A sample's text tokenised and its visual budget decided; tiles are referenced, not decoded. */
export interface PreparedSample {
  sample: AnnotationSample;
  inputIds: Int32Array;
  labels: Int32Array;
  /** Tiles per image, or one per video frame; empty for text samples. */
  numPatches: number[];
  /** Tiles the sample feeds the vision model: Σ numPatches, or 1 for text (the blank dummy tile). */
  numTiles: number;
  /** Video: frames sampled for this sample. */
  numFrames: number | undefined;
  /** JPEG quality per tile when the dataset augments images; null for video, text and unaugmented datasets. */
  jpegQualities: number[] | null;
}

/** The size a line's check recorded, else a complete decode's (never a header's: truncation counts). */
async function imageSize(sample: AnnotationSample, i: number): Promise<{ width: number; height: number }> {
  const known = sample.imageSizes[i];
  if (known) return known;
  const { width, height } = await loadImage(sample.images[i]);
  return { width, height };
}

/** Image tile budget of a dataset: its own `max_dynamic_patch`, else the global one. */
export const datasetMaxTiles = (dataset: DatasetSpec, options: PrepareOptions): number =>
  dataset.maxDynamicPatch ?? options.maxDynamicPatch;

/**
 * Per-sample processing of `LazySupervisedDataset`: tile counts from the image sizes (n_max split across
 * the images of a multi-image sample), a random frame count for videos, random JPEG qualities per tile
 * for augmented image datasets (never video), then the `internvl2_5` tokens and loss mask.
 */
export async function prepareSample(
  sample: AnnotationSample,
  dataset: DatasetSpec,
  rng: Rng,
  options: PrepareOptions,
): Promise<PreparedSample> {
  const useThumbnail = options.useThumbnail ?? true;
  let conversations: TrainingTurn[] = sample.conversations;
  let numPatches: number[] = [];
  let numFrames: number | undefined;
  let jpegQualities: number[] | null = null;
  if (sample.kind === 'image' || sample.kind === 'multi_image') {
    const maxTiles = maxTilesPerImage(datasetMaxTiles(dataset, options), sample.images.length);
    for (const i of sample.images.keys()) {
      const { width, height } = await imageSize(sample, i);
      const plan = planTiles(width, height, {
        minTiles: Math.min(options.minDynamicPatch ?? 1, maxTiles),
        maxTiles,
        useThumbnail,
        tileSize: options.tileSize,
      });
      numPatches.push(plan.totalTiles);
    }
    if (sample.kind === 'image') conversations = addImagePlaceholder(conversations);
    const total = numPatches.reduce((a, b) => a + b, 0);
    if (dataset.dataAugment) jpegQualities = drawJpegQualities(rng, total);
  } else if (sample.kind === 'video') {
    numFrames = drawNumFrames(
      rng,
      options.minNumFrame ?? DEFAULT_MIN_NUM_FRAME,
      options.maxNumFrame ?? DEFAULT_MAX_NUM_FRAME,
    );
    numPatches = new Array<number>(numFrames).fill(1);
    conversations = addVideoFrames(conversations, numFrames);
  }
  const tokenized = tokenizeTrainingSample(options.tokenizer, conversations, {
    numPatchesPerImage: numPatches,
    numImageToken: options.numImageToken,
    textOnly: sample.kind === 'text',
  });
  const visualTiles = numPatches.reduce((a, b) => a + b, 0);
  return {
    sample,
    inputIds: tokenized.inputIds,
    labels: tokenized.labels,
    numPatches,
    numTiles: sample.kind === 'text' ? 1 : visualTiles,
    numFrames,
    jpegQualities,
  };
}

/** The decoded tiles of a prepared sample and whether each is real (image_flags). */
export interface SampleTiles {
  tiles: RgbImage[];
  imageFlags: number[];
}

function blankImage(size: number): RgbImage {
  return { width: size, height: size, data: new Uint8Array(size * size * 3).fill(255) };
}

/**
 * Decodes the tiles a prepared sample trains on: each image through dynamic_preprocess with its budget and its
 * JPEG qualities; video frames picked by the training sampler (`rand`), one tile each; text samples one blank
 * tile from a 224×224 white image with image flag 0, as the reference feeds them.
 */
export async function loadSampleTiles(
  prepared: PreparedSample,
  dataset: DatasetSpec,
  rng: Rng,
  options: PrepareOptions,
): Promise<SampleTiles> {
  const tileSize = options.tileSize ?? 448;
  const { sample } = prepared;
  if (sample.kind === 'text') {
    const { tiles } = dynamicPreprocess(blankImage(224), { maxTiles: 1, useThumbnail: true, tileSize });
    return { tiles, imageFlags: [0] };
  }
  if (sample.kind === 'video') {
    const video = sample.video as string;
    const info = await probeVideo(video);
    const indices = trainingFrameIndices(rng, prepared.numFrames ?? 1, info.numFrames);
    const frames = await decodeVideoFrames(video, indices, info);
    const tiles = videoToTiles(frames, tileSize);
    return { tiles, imageFlags: tiles.map(() => 1) };
  }
  const maxTiles = maxTilesPerImage(datasetMaxTiles(dataset, options), sample.images.length);
  const tiles: RgbImage[] = [];
  for (const [i, file] of sample.images.entries()) {
    const image = await loadImage(file);
    const result = dynamicPreprocess(image, {
      minTiles: Math.min(options.minDynamicPatch ?? 1, maxTiles),
      maxTiles,
      useThumbnail: options.useThumbnail ?? true,
      tileSize,
    });
    if (result.tiles.length !== prepared.numPatches[i]) {
      throw new InternVLError(
        'BAD_IMAGE',
        `${file} gave ${result.tiles.length} tiles, but its size announced ${prepared.numPatches[i]}`,
      );
    }
    tiles.push(...result.tiles);
  }
  const augmented = prepared.jpegQualities ? await augmentTiles(tiles, prepared.jpegQualities) : tiles;
  return { tiles: augmented, imageFlags: augmented.map(() => 1) };
}
