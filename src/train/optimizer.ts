/**
 * AdamW over Float32Array parameters, as torch.optim.AdamW computes it (decoupled weight decay,
 * bias correction, float32 state), the HF learning-rate schedules, and global-norm clipping.
 */
import { InternVLError } from '../errors.js';

export interface OptimizerOptions {
  lr: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  schedule?: 'constant' | 'cosine';
  warmupSteps?: number;
  /** Steps of the whole run (the cosine schedule's length); required for 'cosine'. */
  totalSteps?: number;
  /** Clip gradients to this global L2 norm (no clipping when absent). */
  maxGradNorm?: number;
  /**
   * Decay every parameter, as plain torch.optim.AdamW does (default true). False: no decay for biases
   * and normalisation weights, as the HF Trainer's parameter groups (the official scripts' optimizer).
   */
  decayNormsAndBiases?: boolean;
}

export interface ResolvedOptimizer {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  schedule: 'constant' | 'cosine';
  warmupSteps: number;
  totalSteps?: number;
  maxGradNorm?: number;
  decayNormsAndBiases: boolean;
}

export function resolveOptimizer(o: OptimizerOptions): ResolvedOptimizer {
  const r: ResolvedOptimizer = {
    lr: o.lr,
    betas: o.betas ?? [0.9, 0.999],
    eps: o.eps ?? 1e-8,
    weightDecay: o.weightDecay ?? 0,
    schedule: o.schedule ?? 'constant',
    warmupSteps: o.warmupSteps ?? 0,
    totalSteps: o.totalSteps,
    maxGradNorm: o.maxGradNorm,
    decayNormsAndBiases: o.decayNormsAndBiases ?? true,
  };
  const bad = (field: string, what: string) => new InternVLError('BAD_INPUT', `optimizer.${field}: ${what}`);
  if (!(r.lr >= 0) || !Number.isFinite(r.lr)) throw bad('lr', `expected a non-negative number, got ${o.lr}`);
  if (r.betas.some((b) => !(b >= 0 && b < 1)))
    throw bad('betas', `expected two numbers in [0, 1), got [${r.betas}]`);
  if (!(r.eps > 0)) throw bad('eps', `expected a positive number, got ${r.eps}`);
  if (!(r.weightDecay >= 0)) throw bad('weightDecay', `expected a non-negative number, got ${r.weightDecay}`);
  if (r.schedule !== 'constant' && r.schedule !== 'cosine')
    throw bad('schedule', `expected 'constant' or 'cosine', got ${JSON.stringify(r.schedule)}`);
  if (!Number.isInteger(r.warmupSteps) || r.warmupSteps < 0)
    throw bad('warmupSteps', `expected a non-negative integer, got ${r.warmupSteps}`);
  if (r.schedule === 'cosine' && !(Number.isInteger(r.totalSteps) && (r.totalSteps as number) > 0)) {
    throw bad(
      'totalSteps',
      `the cosine schedule needs a positive integer number of steps, got ${r.totalSteps}`,
    );
  }
  if (r.maxGradNorm !== undefined && !(r.maxGradNorm > 0))
    throw bad('maxGradNorm', `expected a positive number, got ${r.maxGradNorm}`);
  return r;
}

/**
 * Learning rate of optimizer step `step` (0-based), like transformers' get_cosine_schedule_with_warmup /
 * get_constant_schedule_with_warmup: linear warm-up from 0, then cosine decay to 0 (or constant).
 */
export function learningRate(o: ResolvedOptimizer, step: number): number {
  if (step < o.warmupSteps) return (o.lr * step) / Math.max(1, o.warmupSteps);
  if (o.schedule === 'constant') return o.lr;
  const total = o.totalSteps ?? step + 1;
  const progress = (step - o.warmupSteps) / Math.max(1, total - o.warmupSteps);
  return o.lr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * Math.min(1, progress))));
}

/** Global L2 norm of all gradients (accumulated in float64). */
export function globalNorm(grads: Iterable<Float32Array>): number {
  let sum = 0;
  for (const gr of grads) for (let i = 0; i < gr.length; i++) sum += gr[i] * gr[i];
  return Math.sqrt(sum);
}

/** torch.nn.utils.clip_grad_norm_: scales every gradient by max/(norm + 1e-6) when that is below 1; returns the norm. */
export function clipGradNorm(grads: Iterable<Float32Array>, maxNorm: number): number {
  const list = [...grads];
  const norm = globalNorm(list);
  const coef = maxNorm / (norm + 1e-6);
  if (coef < 1) for (const gr of list) for (let i = 0; i < gr.length; i++) gr[i] *= coef;
  return norm;
}

export interface AdamState {
  expAvg: Float32Array;
  expAvgSq: Float32Array;
}

const f = Math.fround;

/**
 * One AdamW update of `param` in place (torch's single-tensor AdamW, float32 rounding at each step);
 * `step` is the 1-based step count after this update.
 */
export function adamwUpdate(
  param: Float32Array,
  grad: Float32Array,
  state: AdamState,
  o: { lr: number; betas: [number, number]; eps: number; weightDecay: number },
  step: number,
): void {
  const [b1, b2] = o.betas;
  const decay = f(1 - o.lr * o.weightDecay);
  const bc1 = 1 - b1 ** step;
  const bc2Sqrt = Math.sqrt(1 - b2 ** step);
  const stepSize = o.lr / bc1;
  const { expAvg: m, expAvgSq: v } = state;
  for (let i = 0; i < param.length; i++) {
    const g = grad[i];
    const p = f(param[i] * decay);
    m[i] = f(f(m[i] * b1) + f(g * (1 - b1)));
    v[i] = f(f(v[i] * b2) + f(f(g * g) * (1 - b2)));
    const denom = f(f(f(Math.sqrt(v[i])) / bc2Sqrt) + o.eps);
    param[i] = f(p - f(stepSize * f(m[i] / denom)));
  }
}
