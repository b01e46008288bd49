/**
 * Calls into an object that lives in a worker thread. `session.run` blocks its thread (a ViT tile
 * takes seconds), so the engine runs in a worker and the caller's event loop stays free.
 * Typed arrays in arguments and results are transferred, not copied, where the caller allows it.
 */
import { type Transferable, Worker } from 'node:worker_threads';
import { type ErrorCode, InternVLError } from '../errors.js';

interface Request {
  id: number;
  method: string;
  args: unknown[];
}

type Reply =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: { message: string; code?: ErrorCode; name?: string } }
  | { id: number; event: unknown };

function transferablesOf(value: unknown): Transferable[] {
  const out: Transferable[] = [];
  const visit = (v: unknown) => {
    if (ArrayBuffer.isView(v)) {
      const buf = v.buffer;
      if (buf instanceof ArrayBuffer && v.byteLength === buf.byteLength && !out.includes(buf)) out.push(buf);
    } else if (Array.isArray(v)) v.forEach(visit);
    else if (v && typeof v === 'object') Object.values(v).forEach(visit);
  };
  visit(value);
  return out;
}

export interface CallOptions {
  transfer?: Transferable[];
  /** Receives the events the method emits before it returns. */
  onEvent?: (event: unknown) => void;
}

/** The main-thread side: one worker, many concurrent calls matched by id. */
export class WorkerClient {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void; onEvent?: (e: unknown) => void }
  >();
  private failure: Error | undefined;
  #exited = false;

  /** `name` goes into errors (e.g. "engine worker exited (code 1)"). */
  constructor(
    url: URL,
    workerData: unknown,
    private readonly name = 'engine',
  ) {
    this.worker = url.pathname.endsWith('.ts')
      ? // Running from TypeScript sources (tests, development): load tsx's loader inside the worker first.
        new Worker(
          `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(url.href)}); });`,
          { eval: true, workerData },
        )
      : new Worker(url, { workerData });
    this.worker.on('message', (reply: Reply) => this.onReply(reply));
    this.worker.on('error', (err) => this.failAll(err));
    this.worker.on('exit', (code) => {
      this.#exited = true;
      this.failAll(
        this.failure ?? new InternVLError('INTERNAL', `${this.name} worker exited (code ${code})`),
      );
    });
  }

  /** True once the worker thread has ended (crashed, ran out of memory, or was terminated); calls then fail. */
  get exited(): boolean {
    return this.#exited;
  }

  private onReply(reply: Reply): void {
    const call = this.pending.get(reply.id);
    if (!call) return;
    if ('event' in reply) {
      call.onEvent?.(reply.event);
      return;
    }
    this.pending.delete(reply.id);
    if (reply.ok) call.resolve(reply.value);
    else {
      const { message, code } = reply.error;
      call.reject(code ? new InternVLError(code, message) : new Error(message));
    }
  }

  private failAll(err: Error): void {
    this.failure = err;
    for (const call of this.pending.values()) call.reject(err);
    this.pending.clear();
  }

  /** Calls `method` in the worker. Arguments' typed arrays are copied unless `transfer` lists them. */
  call<T>(method: string, args: unknown[], options: CallOptions = {}): Promise<T> {
    return this.start<T>(method, args, options).result;
  }

  /** Like `call`, also giving the call's id (which the worker sees as its last argument). */
  start<T>(method: string, args: unknown[], options: CallOptions = {}): { id: number; result: Promise<T> } {
    const id = this.nextId++;
    if (this.failure) return { id, result: Promise.reject(this.failure) };
    const result = new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, onEvent: options.onEvent });
      const request: Request = { id, method, args };
      this.worker.postMessage(request, options.transfer ?? []);
    });
    return { id, result };
  }

  async terminate(): Promise<void> {
    await this.worker.terminate();
  }
}

/**
 * The worker side: answers calls on `target`'s methods. Results' typed arrays are transferred.
 * `emit` lets a method stream events (e.g. tokens) back to its caller before it returns.
 */
export function serveCalls(
  port: {
    on(event: 'message', listener: (r: Request) => void): void;
    postMessage(m: unknown, t?: Transferable[]): void;
  },
  target: (emit: (callId: number, event: unknown) => void) => Record<string, (...args: unknown[]) => unknown>,
  options: { immediate?: string[] } = {},
): void {
  const emit = (id: number, event: unknown) => port.postMessage({ id, event } satisfies Reply);
  const methods = target(emit);
  const immediate = new Set(options.immediate ?? []);
  const answer = async (request: Request) => {
    const method = methods[request.method];
    try {
      if (!method) throw new InternVLError('INTERNAL', `engine worker has no method ${request.method}`);
      const value = await method(...request.args, request.id);
      port.postMessage({ id: request.id, ok: true, value } satisfies Reply, transferablesOf(value));
    } catch (err) {
      const e = err as Error & { code?: ErrorCode };
      const error = { message: e?.message ?? String(err), code: e?.code, name: e?.name };
      port.postMessage({ id: request.id, ok: false, error } satisfies Reply);
    }
  };
  // Calls run one at a time, in arrival order (the engine's sessions are not re-entrant), except
  // `immediate` ones such as abort, which must reach a call that is running.
  let queue: Promise<void> = Promise.resolve();
  port.on('message', (request) => {
    if (immediate.has(request.method)) void answer(request);
    else queue = queue.then(() => answer(request));
  });
}
