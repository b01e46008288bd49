/** Least-recently-used image features, bounded by their total size in bytes. */
export class FeatureCache {
  readonly #entries = new Map<string, Float32Array>();
  #bytes = 0;
  constructor(readonly maxBytes: number) {}

  get(key: string): Float32Array | undefined {
    const hit = this.#entries.get(key);
    if (hit) {
      this.#entries.delete(key);
      this.#entries.set(key, hit);
    }
    return hit;
  }

  set(key: string, features: Float32Array): void {
    if (features.byteLength > this.maxBytes) return;
    const old = this.#entries.get(key);
    if (old) {
      this.#bytes -= old.byteLength;
      this.#entries.delete(key);
    }
    this.#entries.set(key, features);
    this.#bytes += features.byteLength;
    for (const [k, v] of this.#entries) {
      if (this.#bytes <= this.maxBytes) break;
      this.#entries.delete(k);
      this.#bytes -= v.byteLength;
    }
  }
}
