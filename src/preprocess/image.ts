import type { RgbImage } from '../io/rgb-image.js';

export type { RgbImage };
