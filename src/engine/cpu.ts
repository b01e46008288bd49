/**
 * What this CPU's integer kernels compute exactly, read from the CPU's feature flags (Node entry; the
 * browser bundle swaps this module for cpu-web.ts).
 *
 * onnxruntime's MLAS multiplies uint8 activations by int8 weights (U8S8) with VPDPBUSD on AVX-512 VNNI
 * and AVX-VNNI, with AMX tiles on AMX, by widening to int16 on SSE/AVX-only CPUs, and with SDOT/UDOT
 * or widening NEON on ARM64: all exact. On AVX2 and AVX-512 without VNNI it uses VPMADDUBSW, whose
 * int16 pair sums saturate once two products exceed 32767 (255·127·2 = 64770), so there the exact
 * scheme is U8U8 (uint8 weights with zero point 128), which MLAS widens to int16 and multiplies with
 * VPMADDWD into int32.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { checkInt8Kernel, type Int8Kernel } from '../onnx/quantize.js';

export interface CpuInfo {
  /** os.arch(): 'x64', 'arm64', … */
  arch: string;
  /** The CPU's model name. */
  model: string;
  /** The flags that decide the int8 kernel (those of INT8_FLAGS this CPU has). */
  features: string[];
  /** The DynamicQuantizeMatMul scheme these flags make exact (int8-probe.ts checks it on the kernel). */
  int8KernelByFlags: Int8Kernel;
  /** Why: the flag seen, or its absence. */
  int8KernelReason: string;
}

/** x86 flags (Linux /proc/cpuinfo names) whose U8S8 kernel accumulates exactly. */
const EXACT_U8S8_X86_FLAGS = ['avx512_vnni', 'avx_vnni', 'amx_int8'];
/** The flags reported with the CPU (what MLAS dispatches on for integer GEMMs). */
export const INT8_FLAGS = ['avx2', 'avx512f', 'avx512bw', ...EXACT_U8S8_X86_FLAGS, 'asimddp', 'i8mm'];

export const INT8_KERNEL_ENV = 'INTERNVL_INT8_KERNEL';

function readCpuinfo(): string {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return '';
  }
}

/** Feature flags and model name from /proc/cpuinfo text ('flags' on x86, 'Features' on ARM). */
export function parseCpuinfo(text: string): { model?: string; flags: Set<string> } {
  let model: string | undefined;
  let flags = new Set<string>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const key = line.slice(0, colon).trim();
    const value = line.slice(colon + 1).trim();
    if (model === undefined && key === 'model name') model = value;
    if (flags.size === 0 && (key === 'flags' || key === 'Features')) flags = new Set(value.split(/\s+/));
  }
  return { model, flags };
}

/** The exact int8 scheme for a CPU with these flags (`cpuinfoKnown`: whether any flags were read). */
export function int8KernelFor(
  arch: string,
  flags: ReadonlySet<string>,
  cpuinfoKnown: boolean,
): { kernel: Int8Kernel; reason: string } {
  if (arch !== 'x64' && arch !== 'ia32') {
    return { kernel: 'u8s8', reason: `${arch}: integer dot products accumulate in int32` };
  }
  const exact = EXACT_U8S8_X86_FLAGS.find((flag) => flags.has(flag));
  if (exact) return { kernel: 'u8s8', reason: `${exact}: U8S8 accumulates in int32` };
  if (!cpuinfoKnown) {
    return { kernel: 'u8u8', reason: 'CPU flags unknown on this system: U8U8 is exact on every x86 CPU' };
  }
  if (!flags.has('avx2')) return { kernel: 'u8s8', reason: 'no AVX2: U8S8 widens to int16 (SSE kernel)' };
  return { kernel: 'u8u8', reason: 'AVX2 without VNNI or AMX: U8S8 would saturate int16 pair sums' };
}

let cached: CpuInfo | undefined;

/** This machine's CPU, read once per process. */
export function cpuInfo(): CpuInfo {
  if (cached) return cached;
  const { model, flags } = parseCpuinfo(readCpuinfo());
  const arch = os.arch();
  const byFlags = int8KernelFor(arch, flags, flags.size > 0);
  cached = {
    arch,
    model: model ?? os.cpus()[0]?.model ?? 'unknown',
    features: INT8_FLAGS.filter((flag) => flags.has(flag)),
    int8KernelByFlags: byFlags.kernel,
    int8KernelReason: byFlags.reason,
  };
  return cached;
}

/** The kernel INTERNVL_INT8_KERNEL asks for, validated; undefined when it is not set. */
export function int8KernelFromEnv(): Int8Kernel | undefined {
  const fromEnv = process.env[INT8_KERNEL_ENV];
  return fromEnv ? checkInt8Kernel(INT8_KERNEL_ENV, fromEnv) : undefined;
}

/**
 * The int8 scheme for callers that cannot wait for the probe: INTERNVL_INT8_KERNEL, else the flags'
 * choice. The engine's loaders use int8-probe.ts's chooseInt8Kernel instead.
 */
export function defaultInt8Kernel(): Int8Kernel {
  return int8KernelFromEnv() ?? cpuInfo().int8KernelByFlags;
}
