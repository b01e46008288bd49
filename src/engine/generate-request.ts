/** The checks of a generate request against the model it runs on, before it is queued. */
import { InternVLError } from '../errors.js';
import type { GenerateRequest, GeneratorDeps } from './generate-types.js';

/** Throws BAD_INPUT naming the problem: no tokens, ids out of vocabulary, image tokens or pixels that don't match. */
export function checkGenerateRequest(request: GenerateRequest, deps: GeneratorDeps): void {
  const { inputIds, maxNewTokens } = request;
  if (inputIds.length === 0) throw new InternVLError('BAD_INPUT', 'the prompt has no tokens');
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) {
    throw new InternVLError('BAD_INPUT', `maxNewTokens must be a positive integer, got ${maxNewTokens}`);
  }
  const vocab = deps.decoder.dims.vocabSize;
  for (const id of inputIds) {
    if (!Number.isInteger(id) || id < 0 || id >= vocab) {
      throw new InternVLError('BAD_INPUT', `token id ${id} is outside the vocabulary (0..${vocab - 1})`);
    }
  }
  let contextTokens = 0;
  for (const id of inputIds) if (id === deps.imgContextId) contextTokens++;
  const expected = request.images.reduce((n, img) => n + img.numTiles * deps.tokensPerTile, 0);
  if (contextTokens !== expected) {
    throw new InternVLError(
      'BAD_INPUT',
      `the prompt has ${contextTokens} image-context tokens but the images need ${expected} ` +
        `(${request.images.length} image(s), ${deps.tokensPerTile} tokens per tile)`,
    );
  }
  for (const [i, img] of request.images.entries()) {
    if (img.pixelValues && img.pixelValues.length !== img.numTiles * deps.tileValues) {
      throw new InternVLError(
        'BAD_INPUT',
        `image ${i} has ${img.pixelValues.length} pixel values, expected ${img.numTiles} tiles × ${deps.tileValues}`,
      );
    }
  }
}
