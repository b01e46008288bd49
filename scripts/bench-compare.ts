/**
 * `npm run bench:compare`: this engine against llama.cpp (through node-llama-cpp) on the same LLM
 * weights at the same shape, in one run, with the same thread count. node-llama-cpp is installed on
 * demand into a cache folder (not a dependency of this package; only its prebuilt CPU binary, no
 * postinstall), and the random checkpoint's Qwen2 LLM is written as GGUF (Q4_0 and F16,
 * src/tools/qwen2-gguf.ts) once per checkpoint. llama.cpp runs in a child process; the two engines take
 * turns item by item, every item measured --rounds times (the engine that goes first alternates), and
 * each measurement carries a contention guard: the CPU that other processes used meanwhile (machine
 * busy time from /proc/stat minus the measuring process's own), after waiting up to --settle-s for a
 * second in which other processes used under half a core. Prints one JSON object.
 *
 *   npm run bench:compare -- [--shape InternVL2_5-1B | --model DIR] [--threads N] [--reps 3]
 *     [--rounds 2] [--steps 32] [--settle-s 30] [--dir ~/.cache/internvl-ts/bench-compare]
 *     [--node-llama-cpp 3.22.1] [--block-size 32] [--json FILE]
 * --block-size: the int4 graph's MatMulNBits block (32 by default, as the engine's; Q4_0's block is 32).
 */
import { execFile, fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { benchModel, measureDecode, measurePrefill } from '../src/cli/bench.js';
import { checkpointWeights } from '../src/engine/core.js';
import { cpuInfo } from '../src/engine/cpu.js';
import { decoderDimsFromConfig } from '../src/engine/decoder.js';
import { defaultGraphCacheDir } from '../src/engine/graph-cache.js';
import { resolvePrecision } from '../src/engine/graph-plan.js';
import type { WeightDtype } from '../src/engine/precision.js';
import { createDecoderRunner, engineGraphCache } from '../src/engine/runners.js';
import { defaultThreads } from '../src/engine/session.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { loadModelConfig } from '../src/models/model-config.js';
import { type GgufWeightType, writeQwen2Gguf } from '../src/tools/qwen2-gguf.js';
import type { LlamaReply, LlamaRequest } from './bench-compare-llama.js';

const { values } = parseArgs({
  options: {
    shape: { type: 'string', default: 'InternVL2_5-1B' },
    model: { type: 'string' },
    threads: { type: 'string' },
    reps: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '2' },
    steps: { type: 'string', default: '32' },
    dir: { type: 'string' },
    'node-llama-cpp': { type: 'string', default: '3.22.1' },
    'settle-s': { type: 'string', default: '30' },
    'block-size': { type: 'string' },
    json: { type: 'string' },
  },
});
const positiveInt = (text: string, name: string) => {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new Error(`--${name} must be a positive integer, got '${text}'`);
  return n;
};
const threads = values.threads ? positiveInt(values.threads, 'threads') : defaultThreads();
const reps = positiveInt(values.reps, 'reps');
const rounds = positiveInt(values.rounds, 'rounds');
const steps = positiveInt(values.steps, 'steps');
const version = values['node-llama-cpp'];
const settleS = Number(values['settle-s']);
if (!(settleS >= 0))
  throw new Error(`--settle-s must be a number of seconds ≥ 0, got '${values['settle-s']}'`);
const dir = path.resolve(values.dir ?? path.join(path.dirname(defaultGraphCacheDir()), 'bench-compare'));
const log = (line: string) => process.stderr.write(`${line}\n`);
const run = promisify(execFile);

/** node-llama-cpp's prebuilt CPU binary package for this platform. */
function binaryPackage(): string {
  const { platform, arch } = process;
  if (platform === 'linux') return `@node-llama-cpp/linux-${arch}`;
  if (platform === 'darwin')
    return arch === 'arm64' ? '@node-llama-cpp/mac-arm64-metal' : '@node-llama-cpp/mac-x64';
  if (platform === 'win32') return `@node-llama-cpp/win-${arch}`;
  throw new Error(`node-llama-cpp has no prebuilt binary for ${platform}-${arch}`);
}

const installedVersion = (name: string) => {
  try {
    const file = path.join(dir, 'node_modules', name, 'package.json');
    return (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version;
  } catch {
    return undefined;
  }
};

/** Installs node-llama-cpp and its CPU binary at `version` into `dir` unless they are there already. */
async function ensureNodeLlamaCpp(): Promise<void> {
  const binary = binaryPackage();
  if (installedVersion('node-llama-cpp') === version && installedVersion(binary) === version) return;
  log(`installing node-llama-cpp@${version} and ${binary} into ${dir}`);
  await mkdir(dir, { recursive: true });
  const manifest = path.join(dir, 'package.json');
  if (!existsSync(manifest))
    await writeFile(manifest, '{ "name": "internvl-bench-compare", "private": true }\n');
  // Optional packages would bring every GPU build (CUDA, Vulkan); scripts would try to build or download.
  const args = ['install', '--prefix', dir, '--omit=optional', '--ignore-scripts', '--no-audit', '--no-fund'];
  await run('npm', [...args, `node-llama-cpp@${version}`, `${binary}@${version}`], { cwd: dir });
}

/** The GGUF of the checkpoint's LLM at `type`, written once per checkpoint content (size and mtime). */
async function ensureGguf(modelDir: string, files: string[], type: GgufWeightType): Promise<string> {
  const stamp = files.map((f) => [path.resolve(f), statSync(f).size, statSync(f).mtimeMs]);
  const key = createHash('sha256').update(JSON.stringify(stamp)).digest('hex').slice(0, 12);
  const file = path.join(dir, 'gguf', `${path.basename(modelDir)}-${key}-${type}.gguf`);
  if (!existsSync(file)) {
    log(`writing ${file}`);
    await mkdir(path.dirname(file), { recursive: true });
    const t0 = performance.now();
    await writeQwen2Gguf(modelDir, file, type);
    log(`  ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  return file;
}

/** Machine-wide busy CPU seconds so far (/proc/stat; undefined where there is none). */
function busySeconds(): number | undefined {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const [user, nice, system, , , irq, softirq, steal] = fields;
    return (user + nice + system + irq + softirq + (steal ?? 0)) / 100;
  } catch {
    return undefined;
  }
}

/**
 * Waits (up to --settle-s) for a second in which other processes use less than half a core: both
 * engines here are idle then, so the machine's busy time is theirs. Returns the seconds waited.
 */
async function settle(): Promise<number> {
  const t0 = performance.now();
  while ((performance.now() - t0) / 1000 < settleS) {
    const busy0 = busySeconds();
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const busy1 = busySeconds();
    if (busy0 === undefined || busy1 === undefined || busy1 - busy0 < 0.5) break;
  }
  return Number(((performance.now() - t0) / 1000).toFixed(1));
}

/** Runs `measure` (tok/s and the CPU seconds its process used) and what else used the CPU meanwhile. */
async function guarded(measure: () => Promise<{ rate: number; cpuS: number }>) {
  const waitedS = await settle();
  const busy0 = busySeconds();
  const t0 = performance.now();
  const { rate, cpuS } = await measure();
  const wall = (performance.now() - t0) / 1000;
  const busy1 = busySeconds();
  const others = busy0 === undefined || busy1 === undefined ? null : Math.max(0, busy1 - busy0 - cpuS) / wall;
  return { rate, waitedS, othersCores: others === null ? null : Number(others.toFixed(2)) };
}

// llama.cpp in a child process, driven over IPC.
const child = fork(fileURLToPath(new URL('./bench-compare-llama.ts', import.meta.url)), [], {
  stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
});
let nextId = 0;
const pending = new Map<number, (reply: LlamaReply) => void>();
child.on('message', (message) => {
  const { id, ...reply } = message as LlamaReply & { id: number };
  pending.get(id)?.(reply);
  pending.delete(id);
});
child.on('exit', (code) => {
  if (pending.size > 0) {
    log(`llama.cpp child exited (${code}) with requests open`);
    process.exit(1);
  }
});
function llama(request: LlamaRequest): Promise<{ result: unknown; cpuS: number }> {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, (reply) =>
      reply.error
        ? reject(new Error(`llama.cpp child: ${reply.error}`))
        : resolve({ result: reply.result, cpuS: reply.cpuS }),
    );
    child.send({ id, request });
  });
}

async function lscpu(): Promise<{ model: string; flags: string[] }> {
  const simd = /^(sse4_2|avx|avx2|fma|f16c|avx512.*|avx_vnni|amx.*)$/;
  try {
    const { stdout } = await run('lscpu');
    const field = (name: string) => stdout.match(new RegExp(`^${name}:\\s*(.*)$`, 'm'))?.[1]?.trim() ?? '';
    return {
      model: field('Model name'),
      flags: field('Flags')
        .split(/\s+/)
        .filter((f) => simd.test(f)),
    };
  } catch {
    return { model: cpuInfo().model, flags: [] };
  }
}

const started = new Date().toISOString();
const loadStart = os.loadavg();
const modelDir = await benchModel(values.shape, values.model, log);
await ensureNodeLlamaCpp();
const config = await loadModelConfig(modelDir);
const checkpoint = await Checkpoint.open(modelDir);
const ggufQ4 = await ensureGguf(modelDir, checkpoint.files(), 'Q4_0');
const ggufF16 = await ensureGguf(modelDir, checkpoint.files(), 'F16');

log('loading llama.cpp models');
const versions = (await llama({ op: 'init', packageDir: dir, threads })).result as Record<string, unknown>;
const dims = decoderDimsFromConfig(config);
const vocab = Math.min(dims.vocabSize, 150000);
const contextSize = 2048;
const batchSize = 512;
const llamaContext = (
  await llama({ op: 'load', name: 'Q4_0', modelPath: ggufQ4, contextSize, batchSize, vocab })
).result;
await llama({ op: 'load', name: 'F16', modelPath: ggufF16, contextSize, batchSize, vocab });

log('loading internvl decoders (int4, int8, fp32)');
const weights = checkpointWeights(checkpoint, config);
const blockSize = values['block-size'] ? positiveInt(values['block-size'], 'block-size') : undefined;
const precision = await resolvePrecision({ llmDtype: 'int4', blockSize }, config);
const cache = engineGraphCache(checkpoint);
const decoder = (dtype: WeightDtype) =>
  createDecoderRunner(config, weights, cache, {
    precision: { ...precision, llmDtype: dtype, prefillDtype: dtype },
    threads,
  });
const int4 = await decoder('int4');
const int8 = await decoder('int8');
const fp32 = await decoder('fp32');

const items = [
  { key: 'decode_tok_s_past300', ours: 'int4', theirs: 'Q4_0', past: 300 },
  { key: 'prefill_tok_s_300', ours: 'int8', theirs: 'Q4_0', n: 300 },
  { key: 'prefill_tok_s_1800', ours: 'int8', theirs: 'Q4_0', n: 1800 },
  { key: 'prefill_tok_s_300_unquantized', ours: 'fp32', theirs: 'F16', n: 300 },
  { key: 'prefill_tok_s_1800_unquantized', ours: 'fp32', theirs: 'F16', n: 1800 },
] as const;
const runners = { int4, int8, fp32 };
type Sample = {
  round: number;
  engine: 'internvl' | 'llama.cpp';
  tok_s: number;
  /** CPU cores other processes used during the measurement (the contention guard). */
  others_cores: number | null;
  /** Seconds waited beforehand for the machine to quieten (--settle-s). */
  waited_s: number;
};
const samples = new Map<string, Sample[]>(items.map((i) => [i.key, []]));

for (let round = 1; round <= rounds; round++) {
  for (const item of items) {
    const ours = async () => {
      const cpu0 = process.cpuUsage();
      const runner = runners[item.ours];
      const rate =
        'past' in item
          ? await measureDecode(runner, item.past, steps, reps)
          : await measurePrefill(runner, item.n, reps);
      const cpu = process.cpuUsage(cpu0);
      return { rate, cpuS: (cpu.user + cpu.system) / 1e6 };
    };
    const theirs = async () => {
      const request: LlamaRequest =
        'past' in item
          ? { op: 'decode', name: item.theirs, past: item.past, steps, reps }
          : { op: 'prefill', name: item.theirs, n: item.n, reps };
      const { result, cpuS } = await llama(request);
      return { rate: result as number, cpuS };
    };
    const order =
      round % 2 === 1 ? (['internvl', 'llama.cpp'] as const) : (['llama.cpp', 'internvl'] as const);
    for (const engine of order) {
      log(`round ${round}: ${item.key} ${engine}`);
      const { rate, othersCores, waitedS } = await guarded(engine === 'internvl' ? ours : theirs);
      samples.get(item.key)?.push({
        round,
        engine,
        tok_s: Number(rate.toFixed(1)),
        others_cores: othersCores,
        waited_s: waitedS,
      });
    }
  }
}

const results: Record<string, unknown> = {};
const ratios: Record<string, number> = {};
for (const item of items) {
  const all = samples.get(item.key) ?? [];
  const of = (engine: Sample['engine']) => all.filter((s) => s.engine === engine);
  const best = (engine: Sample['engine']) => Math.max(...of(engine).map((s) => s.tok_s));
  const perRound = Array.from({ length: rounds }, (_, r) => {
    const pick = (engine: Sample['engine']) => of(engine).find((s) => s.round === r + 1)?.tok_s ?? Number.NaN;
    return Number((pick('internvl') / pick('llama.cpp')).toFixed(2));
  });
  ratios[item.key] = Number((best('internvl') / best('llama.cpp')).toFixed(2));
  // Each engine's sample with the least contention: a fair pair only where both others_cores are small.
  const quietest = (engine: Sample['engine']) =>
    of(engine).reduce((a, b) => ((b.others_cores ?? 0) < (a.others_cores ?? 0) ? b : a));
  results[item.key] = {
    internvl: `${item.ours}: ${of('internvl')
      .map((s) => s.tok_s)
      .join(', ')}`,
    llama_cpp: `${item.theirs}: ${of('llama.cpp')
      .map((s) => s.tok_s)
      .join(', ')}`,
    ratio_of_best: ratios[item.key],
    ratio_per_round: perRound,
    ratio_of_quietest: Number((quietest('internvl').tok_s / quietest('llama.cpp').tok_s).toFixed(2)),
    quietest_others_cores: [quietest('internvl').others_cores, quietest('llama.cpp').others_cores],
    samples: all,
  };
}

const cpu = await lscpu();
const report = {
  command: `npm run bench:compare -- ${process.argv.slice(2).join(' ')}`.trim(),
  started,
  model: path.basename(modelDir),
  threads,
  reps,
  rounds,
  decode_steps: steps,
  machine: {
    cpu_model: cpu.model,
    simd_flags: cpu.flags,
    cpus: os.availableParallelism(),
    loadavg_start: loadStart.map((x) => Number(x.toFixed(2))),
    loadavg_end: os.loadavg().map((x) => Number(x.toFixed(2))),
  },
  versions: { node: process.version, onnxruntime: ort.env.versions.node, ...versions },
  llama_cpp_context: llamaContext,
  internvl_precision: {
    block_size: precision.blockSize,
    accuracy_level: precision.accuracyLevel,
    int8_kernel: precision.int8Kernel,
  },
  ratios,
  targets: {
    decode_at_least_1_5x: ratios.decode_tok_s_past300 >= 1.5,
    int8_prefill_at_least_2x: ratios.prefill_tok_s_300 >= 2 && ratios.prefill_tok_s_1800 >= 2,
  },
  results,
};
const text = JSON.stringify(report, null, 2);
process.stdout.write(`${text}\n`);
if (values.json) await writeFile(values.json, `${text}\n`);

for (const r of [int4, int8, fp32]) await r.release();
await checkpoint.close();
child.disconnect();
