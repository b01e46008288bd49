/**
 * GPTQ packing (AutoGPTQ QuantLinear, optimum/transformers), read by models/packed-weights.ts:
 *   X.qweight int32 [in/8, out]        eight 4-bit q of one output column: input rows 8r … 8r+7
 *   X.qzeros  int32 [in/group, out/8]  zero points of output columns 8c … 8c+7
 *   X.g_idx   int32 [in]               the group of each input row (only i / group is read: no act-order)
 * Nibble j (bits 4j … 4j+3) holds row 8r + j (qweight) or column 8c + j (qzeros), in order. The original
 * format stores each zero point minus 1 (checkpoint_format "gptq"); "gptq_v2" stores it as it is.
 */
import { InternVLError } from '../errors.js';
import type { PackedLayout } from './packed-weights.js';

/** q as [in, out] from qweight [in/8, out]. */
export function unpackGptqWeights(qweight: Int32Array, inFeatures: number, outFeatures: number): Uint8Array {
  const out = new Uint8Array(inFeatures * outFeatures);
  for (let r = 0; r < inFeatures / 8; r++) {
    for (let col = 0; col < outFeatures; col++) {
      const word = qweight[r * outFeatures + col];
      for (let j = 0; j < 8; j++) out[(8 * r + j) * outFeatures + col] = (word >>> (4 * j)) & 15;
    }
  }
  return out;
}

/** The GPTQ layout whose stored zero points are the real ones minus `zeroPointOffset`. */
export function gptqLayout(zeroPointOffset: 0 | 1): PackedLayout {
  return {
    name: 'GPTQ',
    features: ([rows, outFeatures]) => ({ inFeatures: rows * 8, outFeatures }),
    unpackWeights: unpackGptqWeights,
    unpackZeros: (qzeros, groups, outFeatures, where) => {
      const zeros = new Uint8Array(groups * outFeatures);
      for (let i = 0; i < zeros.length; i++) {
        const stored = (qzeros[i >> 3] >>> (4 * (i & 7))) & 15;
        const zero = stored + zeroPointOffset;
        if (zero > 15) {
          throw new InternVLError(
            'BAD_CHECKPOINT',
            `${where}: stored zero point 15 + ${zeroPointOffset} does not fit 4 bits (group ${Math.floor(i / outFeatures)}, column ${i % outFeatures})`,
          );
        }
        zeros[i] = zero;
      }
      return zeros;
    },
    checkExtra: async (base, prefix, inFeatures, groupSize) => {
      const name = `${prefix}g_idx`;
      if (!base.has(name)) return;
      const gIdx = await base.int32(name);
      const moved = gIdx.findIndex((g, i) => g !== Math.floor(i / groupSize));
      if (gIdx.length !== inFeatures || moved >= 0) {
        throw new InternVLError(
          'UNSUPPORTED',
          `${name}: input row ${moved} is in group ${gIdx[moved]}, not ${Math.floor(moved / groupSize)}: act-order (desc_act) GPTQ is not supported`,
        );
      }
    },
  };
}
