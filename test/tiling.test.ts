import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { InternVLError } from '../src/errors.js';
import { candidateGrids, planTiles } from '../src/preprocess/tiling.js';
import { GOLDEN_DIR } from './helpers.js';

interface TilingCase {
  width: number;
  height: number;
  min_num: number;
  max_num: number;
  use_thumbnail: boolean;
  image_size: number;
  cols: number;
  rows: number;
  boxes: [number, number, number, number][];
  thumbnail_appended: boolean;
  total_tiles: number;
  equal_area_order_matters: boolean;
}

const golden = JSON.parse(readFileSync(path.join(GOLDEN_DIR, 'prep/tiling.json'), 'utf8')) as {
  candidate_orders: Record<string, [number, number][]>;
  cases: TilingCase[];
};

test('tiling.json: all 316 grid decisions', () => {
  assert.equal(golden.cases.length, 316);
  const failures: string[] = [];
  golden.cases.forEach((c, i) => {
    const plan = planTiles(c.width, c.height, {
      minTiles: c.min_num,
      maxTiles: c.max_num,
      useThumbnail: c.use_thumbnail,
      tileSize: c.image_size,
    });
    const got = [plan.cols, plan.rows, plan.boxes, plan.thumbnail, plan.totalTiles];
    const want = [c.cols, c.rows, c.boxes, c.thumbnail_appended, c.total_tiles];
    try {
      assert.deepEqual(got, want);
    } catch {
      failures.push(
        `#${i} ${c.width}x${c.height} min${c.min_num} max${c.max_num}: got ${plan.cols}x${plan.rows}`,
      );
    }
  });
  assert.deepEqual(failures, []);
  assert.equal(golden.cases.filter((c) => c.equal_area_order_matters).length, 18);
});

test('candidate grid order reproduces CPython set order for every recorded (min, max)', () => {
  const keys = Object.keys(golden.candidate_orders);
  assert.ok(keys.length >= 19);
  for (const key of keys) {
    const [lo, hi] = key.split('-').map(Number);
    const got = candidateGrids(lo, hi).map((g) => [g.cols, g.rows]);
    assert.deepEqual(got, golden.candidate_orders[key], `order for ${key}`);
  }
});

test('area tie-break examples from the reference README', () => {
  const grid = (w: number, h: number, maxTiles = 12) => {
    const p = planTiles(w, h, { maxTiles });
    return [p.cols, p.rows];
  };
  assert.deepEqual(grid(633, 633), [1, 1]);
  assert.deepEqual(grid(634, 634), [2, 2]);
  assert.deepEqual(grid(600, 400, 4), [2, 1]);
  assert.deepEqual(grid(1200, 800, 4), [2, 2]);
});

test('thumbnail only with more than one tile, boxes row-major', () => {
  const single = planTiles(448, 448, {});
  assert.equal(single.thumbnail, false);
  assert.equal(single.totalTiles, 1);
  const wide = planTiles(1000, 200, { maxTiles: 6 });
  assert.deepEqual([wide.cols, wide.rows, wide.thumbnail, wide.totalTiles], [5, 1, true, 6]);
  const noThumb = planTiles(1000, 200, { maxTiles: 6, useThumbnail: false });
  assert.equal(noThumb.totalTiles, 5);
  const grid = planTiles(500, 300, { maxTiles: 6, tileSize: 10 });
  assert.deepEqual(grid.boxes, [
    [0, 0, 10, 10],
    [10, 0, 20, 10],
    [20, 0, 30, 10],
    [0, 10, 10, 20],
    [10, 10, 20, 20],
    [20, 10, 30, 20],
  ]);
});

test('planTiles rejects invalid arguments with BAD_INPUT', () => {
  const bad: [number, number, Parameters<typeof planTiles>[2]][] = [
    [0, 10, {}],
    [10, Number.NaN, {}],
    [10.5, 10, {}],
    [10, 10, { minTiles: 0 }],
    [10, 10, { minTiles: 5, maxTiles: 4 }],
    [10, 10, { tileSize: -1 }],
    [10, 10, { maxTiles: 1e9 }],
  ];
  for (const [w, h, o] of bad) {
    assert.throws(
      () => planTiles(w, h, o),
      (e: unknown) => e instanceof InternVLError && e.code === 'BAD_INPUT',
      `${w}x${h} ${JSON.stringify(o)}`,
    );
  }
});
