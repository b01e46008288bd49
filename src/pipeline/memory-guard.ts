/** The memory check `pipeline()` runs before loading a model (engine/memory-check.ts). */

import type { EngineOptions } from '../engine/core.js';
import { checkMemory, graphsCached, type MemoryCheck, memoryPrecision } from '../engine/memory-check.js';
import { Checkpoint } from '../io/safetensors.js';
import { loadModelConfig } from '../models/model-config.js';

/**
 * The estimate for loading the model folder `dir` with these engine options; throws OUT_OF_MEMORY
 * when it exceeds the available memory and `ignoreMemoryCheck` is not set.
 */
export async function checkMemoryBeforeLoad(
  dir: string,
  options: EngineOptions & { ignoreMemoryCheck?: boolean },
): Promise<MemoryCheck> {
  const config = await loadModelConfig(dir);
  const precision = memoryPrecision(options);
  const checkpoint = await Checkpoint.open(dir);
  let converting: boolean;
  try {
    converting = options.cacheDir === false || !graphsCached(checkpoint.files(), precision, options.cacheDir);
  } finally {
    await checkpoint.close();
  }
  return checkMemory(config, precision, { converting, force: options.ignoreMemoryCheck });
}
