/** Rows of a 2-D tensor [rowCount, rowLength], read from storage when asked for. */
export interface TensorRows {
  readonly rowCount: number;
  readonly rowLength: number;
  /** Reads row `row` as float32 into `out` (rowLength values). */
  readRow(row: number, out: Float32Array): void;
}
