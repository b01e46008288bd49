/** Where model builders get checkpoint tensors from (a safetensors checkpoint, or arrays in tests). */
export interface WeightSource {
  has(name: string): boolean;
  /** Shape of a tensor as stored in the checkpoint. */
  shape(name: string): number[];
  /** The tensor as float32 (bf16 / f16 checkpoints are widened exactly). */
  float32(name: string): Promise<Float32Array>;
}

/** A WeightSource over in-memory arrays (tests, random models, trained parameters). */
export function memoryWeights(tensors: Map<string, { shape: number[]; data: Float32Array }>): WeightSource {
  const get = (name: string) => {
    const t = tensors.get(name);
    if (!t) throw new Error(`weight ${name} is missing`);
    return t;
  };
  return {
    has: (name) => tensors.has(name),
    shape: (name) => get(name).shape,
    float32: async (name) => get(name).data,
  };
}
