/**
 * The llama.cpp side of scripts/bench-compare.ts, in a child process (forked with an IPC channel): loads
 * node-llama-cpp from the folder it was installed in (not a dependency of this package), loads GGUF
 * models, and answers prefill/decode measurements with the same token ids, warm-ups and medians as
 * the internvl side (src/cli/bench.ts measurePrefill/measureDecode). Each answer carries this
 * process's CPU time over the measurement, for the parent's contention guard.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { median } from '../src/cli/bench-limits.js';
import { evalTokenIds } from '../src/cli/eval-quant.js';

/** The part of node-llama-cpp's API used here (it is not installed at type-check time). */
interface Sequence {
  clearHistory(): Promise<void>;
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  evaluate(tokens: number[], options: { yieldEogToken: boolean }): AsyncGenerator<number, void, unknown>;
}
interface Context {
  getSequence(): Sequence;
  readonly contextSize: number;
  readonly batchSize: number;
  readonly flashAttention: boolean;
  readonly currentThreads: number;
}
interface Model {
  createContext(options: {
    contextSize: number;
    batchSize: number;
    threads: { ideal: number; min: number };
  }): Promise<Context>;
  readonly tokenizer: unknown;
}
interface Llama {
  loadModel(options: { modelPath: string; gpuLayers: number }): Promise<Model>;
  readonly llamaCppRelease: { repo: string; release: string };
  readonly systemInfo: string;
  readonly gpu: string | false;
}
interface NodeLlamaCpp {
  getLlama(options: { gpu: false; build: 'never'; maxThreads: number; logLevel: 'error' }): Promise<Llama>;
}

export type LlamaRequest =
  | { op: 'init'; packageDir: string; threads: number }
  | { op: 'load'; name: string; modelPath: string; contextSize: number; batchSize: number; vocab: number }
  | { op: 'prefill'; name: string; n: number; reps: number }
  | { op: 'decode'; name: string; past: number; steps: number; reps: number };

export interface LlamaReply {
  result?: unknown;
  error?: string;
  /** CPU seconds this process used while answering. */
  cpuS: number;
}

let llama: Llama | undefined;
let threads = 1;
const sequences = new Map<string, { context: Context; sequence: Sequence; vocab: number }>();

const seconds = (t0: number) => (performance.now() - t0) / 1000;

async function timeRuns(reps: number, run: () => Promise<unknown>, reset: () => Promise<void>) {
  await reset();
  await run();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    await reset();
    const t0 = performance.now();
    await run();
    times.push(seconds(t0));
  }
  return median(times);
}

async function handle(request: LlamaRequest): Promise<unknown> {
  if (request.op === 'init') {
    const pkg = path.join(request.packageDir, 'node_modules', 'node-llama-cpp');
    const manifest = JSON.parse(readFileSync(path.join(pkg, 'package.json'), 'utf8')) as {
      version: string;
      exports?: { '.'?: { import?: string } };
      main?: string;
    };
    const entry = manifest.exports?.['.']?.import ?? manifest.main ?? 'dist/index.js';
    const module = (await import(pathToFileURL(path.join(pkg, entry)).href)) as NodeLlamaCpp;
    threads = request.threads;
    llama = await module.getLlama({ gpu: false, build: 'never', maxThreads: threads, logLevel: 'error' });
    return {
      node_llama_cpp: manifest.version,
      llama_cpp_release: `${llama.llamaCppRelease.repo}@${llama.llamaCppRelease.release}`,
      ggml_system_info: llama.systemInfo.trim(),
      gpu: llama.gpu,
    };
  }
  if (!llama) throw new Error('init first');
  if (request.op === 'load') {
    const model = await llama.loadModel({ modelPath: request.modelPath, gpuLayers: 0 });
    const context = await model.createContext({
      contextSize: request.contextSize,
      batchSize: request.batchSize,
      threads: { ideal: threads, min: threads },
    });
    sequences.set(request.name, { context, sequence: context.getSequence(), vocab: request.vocab });
    return {
      context_size: context.contextSize,
      batch_size: context.batchSize,
      flash_attention: context.flashAttention,
      threads: context.currentThreads,
    };
  }
  const entry = sequences.get(request.name);
  if (!entry) throw new Error(`no model loaded as ${request.name}`);
  const { sequence, vocab } = entry;
  if (request.op === 'prefill') {
    const ids = evalTokenIds(request.n, vocab, request.n);
    const t = await timeRuns(
      request.reps,
      () => sequence.evaluateWithoutGeneratingNewTokens(ids),
      () => sequence.clearHistory(),
    );
    return request.n / t;
  }
  // Decode: greedy (temperature 0, node-llama-cpp's default), end-of-generation tokens do not stop it.
  const ids = evalTokenIds(request.past, vocab, request.past);
  const rates: number[] = [];
  for (let r = 0; r < request.reps; r++) {
    await sequence.clearHistory();
    const tokens = sequence.evaluate(ids, { yieldEogToken: true });
    await tokens.next(); // the prompt and the first token
    await tokens.next(); // one untimed step, as the internvl side
    const t0 = performance.now();
    for (let i = 0; i < request.steps; i++) await tokens.next();
    rates.push(request.steps / seconds(t0));
    await tokens.return();
  }
  return median(rates);
}

process.on('message', (message) => {
  const { id, request } = message as { id: number; request: LlamaRequest };
  const cpu0 = process.cpuUsage();
  const reply = (body: Omit<LlamaReply, 'cpuS'>) => {
    const cpu = process.cpuUsage(cpu0);
    process.send?.({ id, ...body, cpuS: (cpu.user + cpu.system) / 1e6 });
  };
  handle(request).then(
    (result) => reply({ result }),
    (err: unknown) => reply({ error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
  );
});
process.on('disconnect', () => process.exit(0));
