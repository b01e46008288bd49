import { stat } from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { loadImage } from '../io/image.js';

/** Pixel size of a fully decoded image. */
export interface ImageSize {
  width: number;
  height: number;
}

/** Local paths are joined to the root; `s3://`-style roots are concatenated, as the official loader does. */
export const URL_PATTERN = /^[a-z][a-z0-9+.-]*:\/\//i;

export function resolveDataPath(root: string, file: string): string {
  if (URL_PATTERN.test(root)) return root + file;
  return path.resolve(root, file);
}

/**
 * Why a media path written in an annotation line leaves the dataset root (`../…`, an absolute path,
 * an absolute URL), or undefined when it stays inside. The check is on the path as written and
 * resolved, not on symlinks inside the root.
 */
export function outsideRootProblem(root: string, file: string, what: 'image' | 'video'): string | undefined {
  let outside: boolean;
  let resolved: string;
  if (URL_PATTERN.test(root)) {
    resolved = root + file;
    outside = file.startsWith('/') || URL_PATTERN.test(file) || file.split(/[\\/]/).includes('..');
  } else {
    resolved = path.resolve(root, file);
    const relative = path.relative(root, resolved);
    outside = URL_PATTERN.test(file) || relative.startsWith('..') || path.isAbsolute(relative);
  }
  if (!outside) return undefined;
  return `${what} ${file} is outside the dataset root ${root} (it resolves to ${resolved}); refused unless --allow-outside-root is given`;
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}

/**
 * Checks the media files annotation lines refer to. Every image is decoded completely, exactly as
 * training decodes it (`loadImage`: Pillow's limits, strict decoding), so an unreadable, truncated or
 * oversized image is a bad line here and not a crash later; each distinct file is decoded once per
 * checker (many lines often share an image). A complete decode costs about 16 ms for a 1024×768 JPEG
 * and 174 ms for 4000×3000 on the 2-core development machine (a header read, which misses truncation:
 * 1–8 ms). Videos must exist (a file or a folder of frames); they are decoded only when their frames
 * are sampled (`pack --tiles`, where one that fails is skipped and reported).
 */
export class MediaChecker {
  readonly #images = new Map<string, Promise<ImageSize | string>>();

  /** The image's size, or why it cannot be used. */
  image(file: string, written: string): Promise<ImageSize | string> {
    let result = this.#images.get(file);
    if (!result) {
      result = this.#decode(file, written);
      this.#images.set(file, result);
    }
    return result;
  }

  async #decode(file: string, written: string): Promise<ImageSize | string> {
    if (URL_PATTERN.test(file)) return `${file}: remote (object-store) paths are not supported here`;
    try {
      const info = await stat(file);
      if (!info.isFile()) return `image ${written} is not a file (${file})`;
    } catch {
      return `image ${written} not found (${file})`;
    }
    try {
      const { width, height } = await loadImage(file);
      return { width, height };
    } catch (err) {
      if (!(err instanceof InternVLError)) throw err;
      return `image ${written}: ${err.message}`;
    }
  }

  /** Undefined when the video exists, else why not. */
  async video(file: string, written: string): Promise<string | undefined> {
    if (URL_PATTERN.test(file)) return `${file}: remote (object-store) paths are not supported here`;
    return (await exists(file)) ? undefined : `video ${written} not found (${file})`;
  }
}
