import { InternVLError } from '../errors.js';

/** A tile grid: `cols` tiles across, `rows` tiles down. */
export interface Grid {
  cols: number;
  rows: number;
}

/** A crop box in the resized image: [left, top, right, bottom], right/bottom exclusive. */
export type TileBox = [number, number, number, number];

export interface TilingOptions {
  /** Smallest allowed cols·rows (default 1). */
  minTiles?: number;
  /** Largest allowed cols·rows (default 12, the model card's `max_num`). */
  maxTiles?: number;
  /** Append a whole-image thumbnail tile when the grid has more than one tile (default true). */
  useThumbnail?: boolean;
  /** Tile edge in pixels (default 448). */
  tileSize?: number;
}

export interface TilePlan extends Grid {
  /** Crop boxes in the resized (cols·tileSize × rows·tileSize) image, row-major. */
  boxes: TileBox[];
  /** Whether a thumbnail (the original resized to tileSize²) follows the grid tiles. */
  thumbnail: boolean;
  /** Grid tiles plus the thumbnail, if any. */
  totalTiles: number;
}

// CPython's 64-bit tuple hash (xxHash-based, Python ≥ 3.8) and set table, enough to reproduce the
// iteration order of `set((i, j) for n in … for i in … for j in …)` that `dynamic_preprocess` builds.
const MASK64 = (1n << 64n) - 1n;
const XXPRIME_1 = 11400714785074694791n;
const XXPRIME_2 = 14029467366897019727n;
const XXPRIME_5 = 2870177450012600261n;
const SET_MIN_SIZE = 8;
const LINEAR_PROBES = 9;
const PERTURB_SHIFT = 5n;

/** hash((a, b)) for small non-negative ints, as an unsigned 64-bit value (what setobject.c probes with). */
function tupleHash(a: number, b: number): bigint {
  let acc = XXPRIME_5;
  for (const lane of [BigInt(a), BigInt(b)]) {
    acc = (acc + lane * XXPRIME_2) & MASK64;
    acc = ((acc << 31n) | (acc >> 33n)) & MASK64;
    acc = (acc * XXPRIME_1) & MASK64;
  }
  acc = (acc + (2n ^ (XXPRIME_5 ^ 3527539n))) & MASK64;
  // hash −1 is reserved for errors; CPython substitutes this constant.
  return acc === MASK64 ? 1546275796n : acc;
}

interface SetEntry {
  key: Grid;
  hash: bigint;
}

function insertClean(table: (SetEntry | undefined)[], entry: SetEntry): void {
  const mask = BigInt(table.length - 1);
  let perturb = entry.hash;
  let i = entry.hash & mask;
  for (;;) {
    const probes = i + BigInt(LINEAR_PROBES) <= mask ? LINEAR_PROBES : 0;
    for (let j = 0; j <= probes; j++) {
      const slot = Number(i) + j;
      if (table[slot] === undefined) {
        table[slot] = entry;
        return;
      }
    }
    perturb >>= PERTURB_SHIFT;
    i = (i * 5n + 1n + perturb) & mask;
  }
}

/** Iteration order of a CPython 3.11 set after adding the distinct `keys` one by one. */
function cpythonSetOrder(keys: Grid[]): Grid[] {
  let table: (SetEntry | undefined)[] = new Array(SET_MIN_SIZE);
  let used = 0;
  for (const key of keys) {
    insertClean(table, { key, hash: tupleHash(key.cols, key.rows) });
    used += 1;
    const mask = table.length - 1;
    // No deletions happen, so fill == used.
    if (used * 5 >= mask * 3) {
      const minUsed = used > 50000 ? used * 2 : used * 4;
      let size = SET_MIN_SIZE;
      while (size <= minUsed) size *= 2;
      const old = table;
      table = new Array(size);
      for (const e of old) if (e !== undefined) insertClean(table, e);
    }
  }
  return table.filter((e): e is SetEntry => e !== undefined).map((e) => e.key);
}

const candidateCache = new Map<string, Grid[]>();

/**
 * The candidate grids of `dynamic_preprocess` in the order the reference scans them: the CPython set
 * order of all (cols, rows) with minTiles ≤ cols·rows ≤ maxTiles, stable-sorted by cols·rows.
 */
export function candidateGrids(minTiles: number, maxTiles: number): Grid[] {
  const cacheKey = `${minTiles}-${maxTiles}`;
  const cached = candidateCache.get(cacheKey);
  if (cached) return cached.map((g) => ({ ...g }));
  // The reference's generator yields (i, j) for n = minTiles..maxTiles, i = 1..n, j = 1..n. Only the
  // first occurrence of a pair affects the set, and that is at n = max(minTiles, i, j), so listing
  // each pair once in that order gives the same insertions in O(maxTiles²).
  const generated: Grid[] = [];
  const inRange = (i: number, j: number): boolean => i * j >= minTiles && i * j <= maxTiles;
  for (let n = minTiles; n <= maxTiles; n++) {
    for (let i = 1; i <= n; i++) {
      const jStart = n === minTiles || i === n ? 1 : n;
      for (let j = jStart; j <= n; j++) {
        if (inRange(i, j)) generated.push({ cols: i, rows: j });
      }
    }
  }
  // Array.prototype.sort is stable, like Python's sorted.
  const ordered = cpythonSetOrder(generated).sort((a, b) => a.cols * a.rows - b.cols * b.rows);
  candidateCache.set(cacheKey, ordered);
  return ordered.map((g) => ({ ...g }));
}

function checkPositiveInt(value: number, name: string): void {
  if (!Number.isInteger(value) || value < 1) {
    throw new InternVLError('BAD_INPUT', `${name} must be a positive integer, got ${value}`);
  }
}

/** Largest maxTiles accepted; the candidate set grows roughly as maxTiles·log(maxTiles). */
const MAX_TILES_LIMIT = 1024;

/** `find_closest_aspect_ratio` + the grid layout of `dynamic_preprocess`, without touching pixels. */
export function planTiles(width: number, height: number, options: TilingOptions = {}): TilePlan {
  const { minTiles = 1, maxTiles = 12, useThumbnail = true, tileSize = 448 } = options;
  checkPositiveInt(width, 'image width');
  checkPositiveInt(height, 'image height');
  checkPositiveInt(minTiles, 'minTiles');
  checkPositiveInt(maxTiles, 'maxTiles');
  checkPositiveInt(tileSize, 'tileSize');
  if (minTiles > maxTiles) {
    throw new InternVLError('BAD_INPUT', `minTiles (${minTiles}) must not exceed maxTiles (${maxTiles})`);
  }
  if (maxTiles > MAX_TILES_LIMIT) {
    throw new InternVLError('BAD_INPUT', `maxTiles ${maxTiles} exceeds the limit of ${MAX_TILES_LIMIT}`);
  }

  const aspect = width / height;
  const area = width * height;
  let best: Grid = { cols: 1, rows: 1 };
  let bestDiff = Number.POSITIVE_INFINITY;
  for (const grid of candidateGrids(minTiles, maxTiles)) {
    const diff = Math.abs(aspect - grid.cols / grid.rows);
    if (diff < bestDiff) {
      bestDiff = diff;
      best = grid;
    } else if (diff === bestDiff && area > 0.5 * tileSize * tileSize * grid.cols * grid.rows) {
      best = grid;
    }
  }

  const { cols, rows } = best;
  const boxes: TileBox[] = [];
  for (let k = 0; k < cols * rows; k++) {
    const c = k % cols;
    const r = Math.floor(k / cols);
    boxes.push([c * tileSize, r * tileSize, (c + 1) * tileSize, (r + 1) * tileSize]);
  }
  const thumbnail = useThumbnail && boxes.length !== 1;
  return { cols, rows, boxes, thumbnail, totalTiles: boxes.length + (thumbnail ? 1 : 0) };
}
