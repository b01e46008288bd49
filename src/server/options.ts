/** The server's options, checked once into the limits the request handlers use, and the API-key check. */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { InternVLError } from '../errors.js';
import type { PipelineOptions } from '../pipeline/pipeline.js';
import { DEFAULT_MEDIA_POLICY, type MediaPolicy } from './media.js';
import type { MediaLimits } from './openai-messages.js';

export interface ServerOptions {
  /** The id in /v1/models and the `model` requests must name; default the model path's last part. */
  modelName?: string;
  /** Requests to /v1/* must send `Authorization: Bearer <key>` with one of these. */
  apiKey?: string | string[];
  /** Sequences generating at once; more wait in a FIFO queue. Default 8. */
  maxBatchSize?: number;
  /** Sequences that may wait; beyond it requests get 503. Default 1024. */
  maxQueue?: number;
  /** Largest tile budget one image may ask for (max_dynamic_patch, detail). Default 24. */
  maxTilesPerImage?: number;
  /** Images per request. Default 16. */
  maxImages?: number;
  /** Frames sampled from one video. Default 32 (8 when a part names no num_segments). */
  maxVideoFrames?: number;
  /** Largest request body. Default 16 MiB (room for an image of up to about 12 MiB as a base64 data URL). */
  bodyLimitBytes?: number;
  /** The whole request body must arrive within this time. Default 30 s. */
  bodyTimeoutMs?: number;
  /** /metrics also requires the API key (with `apiKey` set). Default false: /metrics is open. */
  metricsAuth?: boolean;
  /** Remote and local media policy (domains, local files, size and time limits). */
  media?: Partial<MediaPolicy>;
  /** Pipeline options when `createServer` is given a model path. */
  pipeline?: PipelineOptions;
  /** One line per request and for internal errors; default silent. */
  log?: (line: string) => void;
}

/** The default largest request body: room for an image of up to about 12 MiB as a base64 data URL. */
export const DEFAULT_BODY_LIMIT_BYTES = 16 * 1024 * 1024;

/** ServerOptions checked, with their defaults. */
export interface ServerLimits {
  slots: number;
  maxQueue: number;
  /** SHA-256 of each API key (compared in constant time). */
  keys: Buffer[];
  metricsAuth: boolean;
  media: Omit<MediaLimits, 'defaultTiles'>;
  bodyLimit: number;
  bodyTimeout: number;
  log: (line: string) => void;
}

const digest = (key: string) => createHash('sha256').update(key).digest();

/** Checks the options; a bad one is a BAD_INPUT error naming it. */
export function resolveServerOptions(options: ServerOptions): ServerLimits {
  const positive = (value: number | undefined, name: string, fallback: number) => {
    const v = value ?? fallback;
    if (!Number.isInteger(v) || v < 1) {
      throw new InternVLError('BAD_INPUT', `server option ${name} must be a positive integer, got ${value}`);
    }
    return v;
  };
  const keys = options.apiKey === undefined ? [] : [options.apiKey].flat();
  if (keys.some((k) => typeof k !== 'string' || k.length === 0)) {
    throw new InternVLError('BAD_INPUT', 'server option apiKey must be a non-empty string');
  }
  const metricsAuth = options.metricsAuth === true;
  if (metricsAuth && keys.length === 0) {
    throw new InternVLError('BAD_INPUT', 'server option metricsAuth needs an apiKey to check');
  }
  const maxVideoFrames = positive(options.maxVideoFrames, 'maxVideoFrames', 32);
  return {
    slots: positive(options.maxBatchSize, 'maxBatchSize', 8),
    maxQueue: positive(options.maxQueue, 'maxQueue', 1024),
    keys: keys.map(digest),
    metricsAuth,
    media: {
      policy: { ...DEFAULT_MEDIA_POLICY, ...options.media },
      maxTilesPerImage: positive(options.maxTilesPerImage, 'maxTilesPerImage', 24),
      maxImages: positive(options.maxImages, 'maxImages', 16),
      maxVideoFrames,
      defaultVideoFrames: Math.min(8, maxVideoFrames),
    },
    bodyLimit: positive(options.bodyLimitBytes, 'bodyLimitBytes', DEFAULT_BODY_LIMIT_BYTES),
    bodyTimeout: positive(options.bodyTimeoutMs, 'bodyTimeoutMs', 30_000),
    log: options.log ?? (() => {}),
  };
}

/** Whether the request carries one of the keys as `Authorization: Bearer <key>` (any request when none). */
export function authorized(req: IncomingMessage, keys: readonly Buffer[]): boolean {
  if (keys.length === 0) return true;
  const match = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '');
  if (!match) return false;
  const given = digest(match[1].trim());
  return keys.some((k) => timingSafeEqual(k, given));
}
