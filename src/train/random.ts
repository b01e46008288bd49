/**
 * Seeded randomness for training: every random draw (LoRA dropout masks, ViT drop-path, fresh
 * weights) comes from a generator keyed by the run seed and what it is for (step, micro-batch,
 * tensor name), so a resumed run draws exactly what the uninterrupted run drew.
 */

/** FNV-1a over the key's text, as a 32-bit seed. */
function hashKey(parts: readonly (string | number)[]): number {
  let h = 0x811c9dc5;
  const text = parts.join('\u0000');
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** mulberry32: uniform numbers in [0, 1) from a 32-bit seed. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A generator for one purpose, e.g. `keyedRandom(seed, 'dropout', step, micro, name)`. */
export function keyedRandom(...key: (string | number)[]): () => number {
  return mulberry32(hashKey(key));
}

/**
 * Inverted-dropout scales: each entry is 1/(1−p) with probability 1−p, else 0 (torch's nn.Dropout
 * and timm's DropPath with scale_by_keep). p = 0 gives all ones.
 */
export function keepMask(length: number, dropProbability: number, random: () => number): Float32Array {
  const out = new Float32Array(length);
  if (dropProbability <= 0) return out.fill(1);
  const keep = 1 - dropProbability;
  const scale = 1 / keep;
  for (let i = 0; i < length; i++) out[i] = random() < keep ? scale : 0;
  return out;
}

/** U(−bound, bound) values, as torch.nn.init.uniform_ draws them (not bit-identical to torch's generator). */
export function uniform(length: number, bound: number, random: () => number): Float32Array {
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) out[i] = (2 * random() - 1) * bound;
  return out;
}

/**
 * Per-layer drop-path rates of InternVisionEncoder: torch.linspace(0, rate, layers), in float32 as
 * torch computes them.
 */
export function dropPathRates(rate: number, layers: number): number[] {
  if (layers <= 1) return Array.from({ length: layers }, () => 0);
  return Array.from({ length: layers }, (_, i) => Math.fround((rate * i) / (layers - 1)));
}
