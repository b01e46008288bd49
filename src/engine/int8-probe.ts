/**
 * Which int8 kernels compute exactly on this machine, asked of onnxruntime itself: one
 * DynamicQuantizeMatMul per scheme on inputs whose uint8 × int8 pair sums overflow int16
 * (255 · 127 · 2 = 64770), compared with the integer product. This sees what the CPU flags cannot:
 * an emulator, or a hypervisor that reports one CPU and runs another.
 */
import { GraphBuilder } from '../onnx/graph.js';
import { checkInt8Kernel, type Int8Kernel, quantizedMatMul } from '../onnx/quantize.js';
import { modelToBytes } from '../onnx/serialize.js';
import { type CpuInfo, cpuInfo, int8KernelFromEnv } from './cpu.js';
import * as ort from './ort.js';

export interface Int8Probe {
  u8s8: boolean;
  u8u8: boolean;
}

const PROBE_K = 64;
const PROBE_N = 8;

async function probeKernel(kernel: Int8Kernel): Promise<boolean> {
  const g = new GraphBuilder('int8_probe', undefined, null);
  const x = g.input('x', 'float32', [1, PROBE_K]);
  // Every weight quantises to 127 and every activation but the first to 255 (scale 1/255, zero point 0).
  const weights = new Float32Array(PROBE_N * PROBE_K).fill(1);
  g.output(
    quantizedMatMul(g, x, 'w', weights, PROBE_N, PROBE_K, { dtype: 'int8', int8Kernel: kernel }),
    'y',
    'float32',
    [1, PROBE_N],
  );
  const session = await ort.InferenceSession.create(modelToBytes(g.graph), { intraOpNumThreads: 1 });
  try {
    const activations = new Float32Array(PROBE_K).fill(1);
    activations[0] = 0;
    const result = await session.run({ x: new ort.Tensor('float32', activations, [1, PROBE_K]) });
    const y = result.y.data as Float32Array;
    const integerProduct = 255 * 127 * (PROBE_K - 1);
    const scaleProduct = Math.fround(1 / 255) * Math.fround(1 / 127);
    return y.every((v) => Math.abs(v / scaleProduct - integerProduct) <= 1e-5 * integerProduct);
  } finally {
    await session.release();
  }
}

let probed: Promise<Int8Probe> | undefined;

/** Whether each int8 scheme equals the integer product here (run once per process). */
export function probeInt8Kernels(): Promise<Int8Probe> {
  probed ??= (async () => ({ u8s8: await probeKernel('u8s8'), u8u8: await probeKernel('u8u8') }))();
  return probed;
}

export interface Int8KernelChoice {
  kernel: Int8Kernel;
  /** 'probe': measured here; 'option' or 'env': asked for (INTERNVL_INT8_KERNEL). */
  source: 'probe' | 'option' | 'env';
}

/**
 * The int8 scheme to build graphs with: `requested` when given, else INTERNVL_INT8_KERNEL, else the
 * fastest scheme the probe found exact (U8S8 where it is, U8U8 otherwise).
 */
export async function chooseInt8Kernel(requested?: Int8Kernel | 'auto'): Promise<Int8KernelChoice> {
  if (requested !== undefined && requested !== 'auto') {
    return { kernel: checkInt8Kernel('int8Kernel', requested), source: 'option' };
  }
  const fromEnv = int8KernelFromEnv();
  if (fromEnv) return { kernel: fromEnv, source: 'env' };
  const probe = await probeInt8Kernels();
  return { kernel: probe.u8s8 ? 'u8s8' : 'u8u8', source: 'probe' };
}

export interface CpuReport extends CpuInfo {
  /** Whether each scheme equals the integer product on this machine. */
  int8Exact: Int8Probe;
}

/** The CPU, its int8-relevant flags and what the probe found: for bench and eval-quant reports. */
export async function cpuReport(): Promise<CpuReport> {
  return { ...cpuInfo(), int8Exact: await probeInt8Kernels() };
}
