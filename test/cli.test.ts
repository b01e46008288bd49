import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';

const CLI = ['--import', 'tsx', 'src/cli/main-entry.ts'];

test('internvl --version prints the package version', () => {
  const r = spawnSync(process.execPath, [...CLI, '--version'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout.trim(), /^\d+\.\d+\.\d+$/);
});

test('internvl with an unknown command exits 2 and names it', () => {
  const r = spawnSync(process.execPath, [...CLI, 'frobnicate'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /unknown command 'frobnicate'/);
});
