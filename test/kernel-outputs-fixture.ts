/**
 * Prints, as one JSON line, the outputs of each quantised matmul kind on fixed inputs, run on
 * whatever CPU executes this file (test/cpu-kinds.test.ts runs it natively and under qemu-user).
 */
import { chooseInt8Kernel } from '../src/engine/int8-probe.js';
import type { LinearQuant } from '../src/onnx/quantize.js';
import { randomMatrix, runQuantized } from './quantized-matmul.js';

const [m, k, n] = [3, 512, 64];
const x = randomMatrix(m * k, 3, 2);
const w = randomMatrix(n * k, 11, 0.2);
const run = async (quant: LinearQuant) => Array.from(await runQuantized(x, w, m, k, n, quant));
const chosen = await chooseInt8Kernel();
const outputs = {
  int8Kernel: chosen.kernel,
  int8Chosen: await run({ dtype: 'int8', int8Kernel: chosen.kernel }),
  int8U8u8: await run({ dtype: 'int8', int8Kernel: 'u8u8' }),
  int4Accuracy0: await run({ dtype: 'int4', blockSize: 32, accuracyLevel: 0 }),
  int4Accuracy4: await run({ dtype: 'int4', blockSize: 32, accuracyLevel: 4 }),
};
process.stdout.write(`${JSON.stringify(outputs)}\n`);
