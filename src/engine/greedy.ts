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

/**
 * The last-position logits [vocab] before each of `tokens`: the prompt's last position, then each token
 * but the last fed in turn through the KV cache (teacher forcing, for comparing runners step by step).
 */
export async function teacherForcedLogits(
  runner: DecoderRunner,
  embeds: Float32Array,
  numPromptTokens: number,
  tokens: readonly number[],
): Promise<Float32Array[]> {
  const seq = runner.newSequence();
  const steps: Float32Array[] = [];
  let logits = await runner.forward(seq, embeds, numPromptTokens);
  for (let step = 0; step < tokens.length; step++) {
    steps.push(logits);
    if (step + 1 < tokens.length) logits = await runner.forward(seq, runner.embed([tokens[step]]), 1);
  }
  return steps;
}
