/** `internvl-ts/tools`: random-weight checkpoints at the published shapes, for tests and benchmarks. */
export { createRandomCheckpoint, RANDOM_SHAPES } from './random-checkpoint.js';
