/** A request's images and videos → the engine's image inputs, prepared off the caller's thread. */
import type { ModelConfig } from '../config/model-config.js';
import type { ImageRef } from '../engine/generate.js';
import { WorkerClient } from '../engine/worker-rpc.js';
import { InternVLError } from '../errors.js';
import { loadImage } from '../io/image.js';
import type { RgbImage } from '../preprocess/image.js';
import type { ImageLike, Media, MediaVideo } from './conversation.js';
import type { ImageTiling } from './media-prep.js';
import { loadVideo } from './video-load.js';

export interface PreparedMedia {
  /** Placeholders this media fills, each an image of `tiles` tiles. */
  refs: ImageRef[];
}

function rgbLike(x: ImageLike): x is RgbImage {
  return typeof x === 'object' && !(x instanceof URL) && !(x instanceof Uint8Array) && 'data' in x;
}

/** Buffers that belong wholly to these images, so they can move to a worker without copying. */
function ownedBuffers(images: RgbImage[]): ArrayBuffer[] {
  return images
    .map((i) => i.data)
    .filter(
      (d) => d.buffer instanceof ArrayBuffer && d.byteOffset === 0 && d.byteLength === d.buffer.byteLength,
    )
    .map((d) => d.buffer as ArrayBuffer);
}

// Under tsx (tests, development) this module is a .ts file and so is the worker beside it.
const mediaWorkerUrl = new URL(
  import.meta.url.endsWith('.ts') ? './media-worker.ts' : './media-worker.js',
  import.meta.url,
);

/**
 * Loads a request's images and videos and turns them into engine inputs (tiles, pixel values, content
 * keys) in a media worker, so the caller's thread does no decoding or pixel work.
 */
export class MediaPreparer {
  readonly #prepared = new WeakMap<Media, Promise<PreparedMedia>>();
  #media: WorkerClient | undefined;

  constructor(
    private readonly config: ModelConfig,
    private readonly options: { maxTiles?: number; splitTileBudget?: boolean },
  ) {}

  async close(): Promise<void> {
    await this.#media?.terminate();
    this.#media = undefined;
  }

  #maxTilesFor(media: Media, imagesInTurn: number): number {
    const base =
      (media.kind === 'image' ? media.maxTiles : undefined) ??
      this.options.maxTiles ??
      this.config.max_dynamic_patch;
    if (!Number.isInteger(base) || base < 1) {
      throw new InternVLError('BAD_INPUT', `the tile budget must be a positive integer, got ${base}`);
    }
    return this.options.splitTileBudget ? Math.max(1, Math.floor(base / imagesInTurn)) : base;
  }

  /** The media worker, started on first use. */
  #mediaWorker(): WorkerClient {
    // A media worker that died (a decoder crash on some file) is replaced for the next request.
    if (!this.#media || this.#media.exited) this.#media = new WorkerClient(mediaWorkerUrl, {}, 'media');
    return this.#media;
  }

  async #prepareImage(media: Media & { kind: 'image' }, maxTiles: number): Promise<PreparedMedia> {
    const given = rgbLike(media.source);
    const image = given
      ? (media.source as RgbImage)
      : await loadImage(media.source as string | URL | Uint8Array);
    const dynamic = this.config.dynamic_image_size;
    const tiling: ImageTiling = {
      minTiles: dynamic ? this.config.min_dynamic_patch : 1,
      maxTiles: dynamic ? maxTiles : 1,
      useThumbnail: this.config.use_thumbnail,
      tileSize: this.#tileSize(),
    };
    // A decoded image of our own moves to the worker; a caller's pixels are copied.
    const transfer = given ? [] : ownedBuffers([image]);
    const ref = await this.#mediaWorker().call<ImageRef>('prepareImage', [image, tiling], { transfer });
    return { refs: [ref] };
  }

  async #prepareVideo(media: MediaVideo): Promise<PreparedMedia> {
    const video = await loadVideo(media.video.path, {
      numSegments: media.video.numSegments ?? 8,
      bound: media.video.bound,
    });
    const transfer = ownedBuffers(video.frames);
    const refs = await this.#mediaWorker().call<ImageRef[]>(
      'prepareFrames',
      [video.frames, this.#tileSize()],
      {
        transfer,
      },
    );
    return { refs };
  }

  #tileSize(): number {
    return this.config.force_image_size ?? this.config.vision_config.image_size;
  }

  /** The engine inputs of `media` (prepared once per media object). */
  prepare(media: Media, imagesInTurn: number): Promise<PreparedMedia> {
    let prepared = this.#prepared.get(media);
    if (!prepared) {
      prepared =
        media.kind === 'image'
          ? this.#prepareImage(media, this.#maxTilesFor(media, imagesInTurn))
          : this.#prepareVideo(media);
      this.#prepared.set(media, prepared);
      prepared.catch(() => this.#prepared.delete(media));
    }
    return prepared;
  }
}
