/** Greedy decoding through the engine's one generation path (Generator). */
import { createHash } from 'node:crypto';
import { InternVLError } from '../errors.js';
import type { DecoderRunner } from './decoder.js';
import { Generator, type ImageRef } from './generate.js';
import { GREEDY_SAMPLING } from './sampler.js';

/** A content key for tiles (the feature cache's key). */
export function pixelKey(pixelValues: Float32Array): string {
  const bytes = new Uint8Array(pixelValues.buffer, pixelValues.byteOffset, pixelValues.byteLength);
  return `pixels:${createHash('sha256').update(bytes).digest('hex')}`;
}

let nextCallId = -1;

/**
 * The first `maxNewTokens` greedy tokens after `inputIds` (no end token stops it), from `generator`, or
 * from a text-only generator over `decoder`.
 */
export async function greedyTokens(
  source: Generator | DecoderRunner,
  inputIds: number[],
  maxNewTokens: number,
  images: ImageRef[] = [],
): Promise<number[]> {
  const generator =
    source instanceof Generator
      ? source
      : new Generator({
          decoder: source,
          imgContextId: -1,
          tokensPerTile: 0,
          tileValues: 0,
          encode: () =>
            Promise.reject(new InternVLError('INTERNAL', 'this generator takes text prompts only')),
        });
  const result = await generator.generate(
    { inputIds, images, sampling: GREEDY_SAMPLING, maxNewTokens, endTokenIds: [] },
    nextCallId--,
    () => {},
  );
  return result.tokens.map((t) => t.id);
}
