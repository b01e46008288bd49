/**
 * The int8 and int4 kernels on other kinds of x86 CPU than this one, emulated by qemu-user: Haswell
 * (AVX2 without VNNI, where U8S8 saturates) and Nehalem (SSE4.2 only). qemu cannot emulate AVX-512, so
 * the AVX-512 VNNI branch is the native run on such a host. `apt-get install qemu-user` provides the
 * emulator; CI installs it, and without it these tests are skipped (under CI=true they fail).
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { promisify } from 'node:util';
import { maxAbsDiff, REPO_ROOT } from './helpers.js';

const run = promisify(execFile);

function findQemu(): string | undefined {
  try {
    return execFileSync('sh', ['-c', 'command -v qemu-x86_64'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

const qemu = os.arch() === 'x64' ? findQemu() : undefined;
const skip = qemu
  ? false
  : os.arch() !== 'x64'
    ? 'emulating x86 CPUs needs an x86-64 host'
    : 'qemu-x86_64 not installed (apt-get install qemu-user): other CPU kinds not checked';
if (skip && process.env.CI && os.arch() === 'x64') throw new Error(`CI must check other CPU kinds: ${skip}`);

/** qemu CPU models and the flags of theirs that decide the int8 kernel (see engine/cpu.ts). */
const EMULATED = {
  Haswell: 'Haswell avx avx2 fma',
  Nehalem: 'Nehalem sse4_2',
} as const;

async function onCpu(cpu: keyof typeof EMULATED | 'native', args: string[]) {
  const node = [process.execPath, '--import', 'tsx', ...args];
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    INTERNVL_TEST_EMULATED_CPU: cpu === 'native' ? '' : EMULATED[cpu],
  };
  delete env.INTERNVL_INT8_KERNEL;
  delete env.NODE_TEST_CONTEXT;
  const [file, argv] = cpu === 'native' ? [node[0], node.slice(1)] : [qemu as string, ['-cpu', cpu, ...node]];
  return run(file, argv, { cwd: REPO_ROOT, env, maxBuffer: 64 << 20, timeout: 300_000 });
}

type KernelOutputs = {
  int8Kernel: string;
  int8Chosen: number[];
  int8U8u8: number[];
  int4Accuracy0: number[];
  int4Accuracy4: number[];
};

async function kernelOutputs(cpu: keyof typeof EMULATED | 'native'): Promise<KernelOutputs> {
  const { stdout } = await onCpu(cpu, ['test/kernel-outputs-fixture.ts']);
  return JSON.parse(stdout.trim().split('\n').at(-1) as string) as KernelOutputs;
}

describe('quantised kernels on other CPU kinds (qemu-user)', { skip }, () => {
  test('the quantisation tests pass on an AVX2 CPU without VNNI (Haswell)', async () => {
    const { stdout } = await onCpu('Haswell', [path.join('test', 'quantize.test.ts')]);
    assert.match(stdout, /flags choose u8u8/);
    assert.match(stdout, /^# fail 0$/m);
  });

  test('decode attention over the KV buffers is capacity-invariant on an AVX2 CPU (Haswell)', async () => {
    const { stdout } = await onCpu('Haswell', [path.join('test', 'cache-attention.test.ts')]);
    assert.match(stdout, /bit-identically alone and beside a longer one/);
    assert.match(stdout, /^# fail 0$/m);
  });

  test('the chosen int8 kernel gives bit-identical results on every CPU kind; int4 within its bound', async () => {
    const native = await kernelOutputs('native');
    const range = Math.max(...native.int4Accuracy0.map(Math.abs));
    for (const cpu of ['Haswell', 'Nehalem'] as const) {
      const other = await kernelOutputs(cpu);
      assert.equal(other.int8Kernel, cpu === 'Haswell' ? 'u8u8' : 'u8s8', `${cpu} int8 kernel`);
      assert.deepEqual(other.int8Chosen, native.int8Chosen, `${cpu}: int8 differs from this CPU`);
      assert.deepEqual(other.int8U8u8, native.int8U8u8, `${cpu}: U8U8 differs from this CPU`);
      // fp32 arithmetic in another order: float rounding only.
      assert.ok(maxAbsDiff(other.int4Accuracy0, native.int4Accuracy0) <= 1e-5 * range, `${cpu} int4 acc 0`);
      // Without AVX2 MLAS computes accuracy level 4 in fp32 instead of with int8 activations: the two
      // differ by the activations' int8 rounding (well under 1 % of the output range).
      const acc4 = maxAbsDiff(other.int4Accuracy4, native.int4Accuracy4);
      assert.ok(acc4 <= (cpu === 'Haswell' ? 1e-5 : 1e-2) * range, `${cpu} int4 acc 4: ${acc4}`);
    }
  });
});
