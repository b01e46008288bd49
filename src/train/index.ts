/** `internvl-ts/train`: fine-tuning (stages, LoRA), the training text format and the ViT transplant. */
export { lossWeights, tokenizeTrainingSample } from '../text/training.js';
export type { TrainBatch } from './batch.js';
export { Trainer, type TrainerOptions, type TrainingStage } from './trainer.js';
export { transplantVit } from './transplant.js';
