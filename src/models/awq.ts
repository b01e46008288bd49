/**
 * AWQ "gemm" packing (AutoAWQ WQLinear_GEMM, LMDeploy `lite auto_awq`), read by models/packed-weights.ts:
 *   X.qweight int32 [in, out/8]        eight 4-bit q of one input row: output columns 8c … 8c+7
 *   X.qzeros  int32 [in/group, out/8]  the zero points, packed the same way
 * Nibble j (bits 4j … 4j+3) of a packed word holds output column 8c + AWQ_PACK_ORDER[j].
 */
import type { PackedLayout } from './packed-weights.js';

/** Output column (within its group of 8) held by nibble j of a packed word. */
export const AWQ_PACK_ORDER: readonly number[] = [0, 2, 4, 6, 1, 3, 5, 7];
/** Bit shift of the nibble holding output column 8c + j. */
const SHIFT_OF_COLUMN = AWQ_PACK_ORDER.reduce<number[]>((shifts, column, nibble) => {
  shifts[column] = 4 * nibble;
  return shifts;
}, []);

/** The 4-bit values of packed int32 rows [rows, cols/8] as [rows, cols] (column order restored). */
export function unpackAwqRows(packed: Int32Array, rows: number, cols: number): Uint8Array {
  const words = cols / 8;
  const out = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let w = 0; w < words; w++) {
      const word = packed[r * words + w];
      for (let j = 0; j < 8; j++) out[r * cols + w * 8 + j] = (word >>> SHIFT_OF_COLUMN[j]) & 15;
    }
  }
  return out;
}

export const AWQ_LAYOUT: PackedLayout = {
  name: 'AWQ',
  features: ([inFeatures, words]) => ({ inFeatures, outFeatures: words * 8 }),
  unpackWeights: unpackAwqRows,
  unpackZeros: (qzeros, groups, outFeatures) => unpackAwqRows(qzeros, groups, outFeatures),
};
