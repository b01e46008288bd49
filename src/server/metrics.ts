/** The server's counters, gauges and histograms, rendered in the Prometheus text format (0.0.4). */
import { type IntervalHistogram, monitorEventLoopDelay } from 'node:perf_hooks';

const LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(readonly buckets: readonly number[] = LATENCY_BUCKETS) {
    this.counts = buckets.map(() => 0);
  }

  observe(value: number): void {
    this.sum += value;
    this.count++;
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]) this.counts[i]++;
  }
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

export class ServerMetrics {
  /** Finished requests by `endpoint` and HTTP `status`. */
  readonly requests = new Map<string, number>();
  promptTokens = 0;
  /** Prompt tokens whose KV cache was reused (chat sessions and the prefix cache). */
  cachedPromptTokens = 0;
  completionTokens = 0;
  /** Generations stopped because their client went away. */
  abortedRequests = 0;
  /** Sequences waiting for a slot (--max-batch-size). */
  queueDepth = 0;
  /** Sequences holding a slot: generating, or having their media prepared. */
  runningSequences = 0;
  readonly timeToFirstToken = new Histogram();
  readonly interTokenLatency = new Histogram();
  readonly requestDuration = new Histogram();
  /** How late the event loop runs timers: what a request's work on the main thread costs the others. */
  readonly eventLoopDelay: IntervalHistogram = monitorEventLoopDelay({ resolution: 10 });

  constructor() {
    this.eventLoopDelay.enable();
  }

  /** Stops sampling the event loop (the sampler's timer would otherwise keep running). */
  stop(): void {
    this.eventLoopDelay.disable();
  }

  countRequest(endpoint: string, status: number): void {
    const key = `endpoint="${escapeLabel(endpoint)}",status="${status}"`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }

  render(): string {
    const lines: string[] = [];
    const metric = (name: string, type: string, help: string, samples: string[]) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...samples);
    };
    const histogram = (name: string, help: string, h: Histogram) =>
      metric(name, 'histogram', help, [
        ...h.buckets.map((b, i) => `${name}_bucket{le="${b}"} ${h.counts[i]}`),
        `${name}_bucket{le="+Inf"} ${h.count}`,
        `${name}_sum ${h.sum}`,
        `${name}_count ${h.count}`,
      ]);
    metric(
      'internvl_requests_total',
      'counter',
      'HTTP requests by endpoint and status.',
      [...this.requests].map(([labels, n]) => `internvl_requests_total{${labels}} ${n}`),
    );
    metric('internvl_prompt_tokens_total', 'counter', 'Prompt tokens processed (image tokens included).', [
      `internvl_prompt_tokens_total ${this.promptTokens}`,
    ]);
    metric(
      'internvl_prompt_cached_tokens_total',
      'counter',
      'Prompt tokens whose KV cache was reused instead of prefilled (prefix cache, chat sessions).',
      [`internvl_prompt_cached_tokens_total ${this.cachedPromptTokens}`],
    );
    metric('internvl_completion_tokens_total', 'counter', 'Tokens generated.', [
      `internvl_completion_tokens_total ${this.completionTokens}`,
    ]);
    metric(
      'internvl_aborted_requests_total',
      'counter',
      'Generations aborted because the client disconnected.',
      [`internvl_aborted_requests_total ${this.abortedRequests}`],
    );
    metric('internvl_queue_depth', 'gauge', 'Sequences waiting for a batch slot.', [
      `internvl_queue_depth ${this.queueDepth}`,
    ]);
    metric('internvl_running_sequences', 'gauge', 'Sequences holding a batch slot.', [
      `internvl_running_sequences ${this.runningSequences}`,
    ]);
    histogram(
      'internvl_time_to_first_token_seconds',
      'Time from request to first generated token.',
      this.timeToFirstToken,
    );
    histogram(
      'internvl_inter_token_latency_seconds',
      'Time between consecutive generated tokens.',
      this.interTokenLatency,
    );
    const delay = this.eventLoopDelay;
    metric(
      'internvl_event_loop_delay_seconds',
      'summary',
      'Event-loop delay since the server started (10 ms sampling).',
      [0.5, 0.99, 1].map(
        (q) =>
          `internvl_event_loop_delay_seconds{quantile="${q}"} ${(q === 1 ? delay.max : delay.percentile(q * 100)) / 1e9}`,
      ),
    );
    histogram(
      'internvl_request_duration_seconds',
      'Time from request to its last byte.',
      this.requestDuration,
    );
    return `${lines.join('\n')}\n`;
  }
}

/**
 * A FIFO of waiters for a fixed number of slots. A waiter whose signal aborts leaves the queue;
 * `queued` and `running` feed the queue-depth and running-sequences gauges.
 */
export class SlotLimiter {
  #running = 0;
  readonly #waiting: { grant: () => void }[] = [];

  constructor(
    readonly slots: number,
    readonly maxQueue: number,
  ) {}

  get running(): number {
    return this.#running;
  }

  get queued(): number {
    return this.#waiting.length;
  }

  /** Resolves with a release function once a slot is free; rejects if `signal` aborts first. */
  acquire(signal: AbortSignal | undefined, onQueueFull: () => unknown): Promise<() => void> {
    const release = () => {
      let released = false;
      return () => {
        if (released) return;
        released = true;
        const next = this.#waiting.shift();
        if (next) next.grant();
        else this.#running--;
      };
    };
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#running < this.slots) {
      this.#running++;
      return Promise.resolve(release());
    }
    if (this.#waiting.length >= this.maxQueue) return Promise.reject(onQueueFull());
    return new Promise((resolve, reject) => {
      const waiter = {
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release());
        },
      };
      const onAbort = () => {
        const at = this.#waiting.indexOf(waiter);
        if (at >= 0) this.#waiting.splice(at, 1);
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiting.push(waiter);
    });
  }
}
