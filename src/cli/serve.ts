/** `internvl serve`: the OpenAI-compatible server on a model, until SIGINT/SIGTERM. */
import { describeMemoryCheck } from '../engine/memory-check.js';
import { createAnyTaskProgress } from '../io/progress.js';
import { DEFAULT_MODEL, pipeline } from '../pipeline/pipeline.js';
import {
  DEFAULT_BODY_LIMIT_BYTES,
  defaultModelName,
  InternVLServer,
  pipelineBackend,
  type ServerOptions,
} from '../server/server.js';
import { integerOption, PRECISION_FLAGS, PRECISION_USAGE, precisionOptions, UsageError } from './args.js';
import { defineCommand, type ParsedArgs } from './command.js';

const USAGE = `Usage: internvl serve [model] [options]

Serve a model with the OpenAI API: GET /v1/models, POST /v1/chat/completions, POST /v1/completions,
GET /health (alive), GET /ready (200 once the model has loaded), GET /metrics (Prometheus); and a
chat page at / (open http://HOST:PORT/ in a browser: image upload or paste, multi-turn history,
streamed answers, a stop button and a tile budget).
The server listens while the model loads. SIGTERM or SIGINT drains: no new connections, requests in
flight finish (up to --drain-timeout), then exit 0; a second signal aborts them at once.

  model   a local model folder or a hub id (default ${DEFAULT_MODEL})

Options:
  --host HOST                   address to listen on (default 127.0.0.1)
  --port N                      port (default 23333; 0 picks a free one)
  --api-key KEY                 require "Authorization: Bearer KEY" on /v1/* (repeat for several;
                                default: the INTERNVL_API_KEY environment variable, if set)
  --model-name NAME             the model id clients use (default: the model argument)
  --max-batch-size N            sequences generating at once; more wait in a queue (default 8)
  --max-tiles N                 largest tile budget per image a request may use (default 24)
  --max-images N                images per request (default 16)
  --session-len N               longest prompt + answer in tokens (default 8192)
  --max-body-mb N               largest request body in MiB (default ${DEFAULT_BODY_LIMIT_BYTES / 1024 / 1024})
  --metrics-auth                /metrics requires the API key too
  --drain-timeout S             seconds in-flight requests may take after SIGTERM (default 30)
  --allowed-media-domains LIST  comma-separated hosts image/video URLs may come from (and their
                                subdomains); default any public host
  --allow-local-files           let requests name files on this machine (file: URLs, absolute paths)
  --allow-private-media         let media URLs reach loopback/private addresses (off: SSRF guard)
  --threads N                   engine threads
${PRECISION_USAGE}
  -h, --help                    show this help

Examples:
  npx internvl serve OpenGVLab/InternVL2_5-1B                # http://127.0.0.1:23333/ is the chat page
  npx internvl serve ./InternVL2_5-1B --port 8000 --api-key secret --llm-dtype int4 --prefill-dtype int8
  npx internvl serve ./InternVL2_5-1B --llm-dtype int8   # busy replica: int8 decode scales with the batch
                                                         # (docs/deployment.md: int4 for ~1 request at a time)
  curl http://127.0.0.1:23333/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "OpenGVLab/InternVL2_5-1B", "messages": [{"role": "user", "content": "Hi!"}]}'
`;

const SERVE_OPTIONS = {
  host: { type: 'string' },
  port: { type: 'string' },
  'api-key': { type: 'string', multiple: true },
  'model-name': { type: 'string' },
  'max-batch-size': { type: 'string' },
  'max-tiles': { type: 'string' },
  'max-images': { type: 'string' },
  'session-len': { type: 'string' },
  'max-body-mb': { type: 'string' },
  'metrics-auth': { type: 'boolean' },
  'drain-timeout': { type: 'string' },
  'allowed-media-domains': { type: 'string' },
  'allow-local-files': { type: 'boolean' },
  'allow-private-media': { type: 'boolean' },
  threads: { type: 'string' },
  ...PRECISION_FLAGS,
} as const;

/** The server and pipeline options the flags ask for; a bad flag is a UsageError. */
function serveArgs({ values, positionals }: ParsedArgs<typeof SERVE_OPTIONS>) {
  if (positionals.length > 1)
    throw new UsageError(`expected at most one model, got: ${positionals.join(' ')}`);
  const envKey = process.env.INTERNVL_API_KEY;
  const apiKeys = values['api-key'] ?? (envKey ? [envKey] : []);
  if (apiKeys.some((k) => k.length === 0)) throw new UsageError('--api-key must not be empty');
  const domains = values['allowed-media-domains']
    ?.split(',')
    .map((d) => d.trim())
    .filter((d) => d !== '');
  if (domains !== undefined && domains.length === 0) {
    throw new UsageError('--allowed-media-domains needs at least one host');
  }
  const model = positionals[0] ?? DEFAULT_MODEL;
  const sessionLen = integerOption(values['session-len'], 'session-len', 1);
  const threads = integerOption(values.threads, 'threads', 1);
  if (values['metrics-auth'] && apiKeys.length === 0) {
    throw new UsageError('--metrics-auth needs --api-key (or INTERNVL_API_KEY)');
  }
  const bodyMiB = integerOption(values['max-body-mb'], 'max-body-mb', 1);
  const options: ServerOptions = {
    modelName: values['model-name'],
    apiKey: apiKeys.length > 0 ? apiKeys : undefined,
    maxBatchSize: integerOption(values['max-batch-size'], 'max-batch-size', 1),
    maxTilesPerImage: integerOption(values['max-tiles'], 'max-tiles', 1),
    maxImages: integerOption(values['max-images'], 'max-images', 1),
    bodyLimitBytes: bodyMiB === undefined ? undefined : bodyMiB * 1024 * 1024,
    metricsAuth: values['metrics-auth'] === true,
    media: {
      allowedDomains: domains,
      allowLocalFiles: values['allow-local-files'] === true,
      allowPrivateAddresses: values['allow-private-media'] === true,
    },
    log: (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`),
  };
  return {
    model,
    host: values.host ?? '127.0.0.1',
    port: integerOption(values.port, 'port', 0) ?? 23333,
    drainTimeoutMs: (integerOption(values['drain-timeout'], 'drain-timeout', 0) ?? 30) * 1000,
    pipeline: { sessionLen, threads, ...precisionOptions(values) },
    options,
  };
}

/** `internvl serve`; resolves with the exit code once a signal has stopped the server. */
export const serveCommand = defineCommand({
  name: 'serve',
  usage: USAGE,
  options: SERVE_OPTIONS,
  run: (parsed) => serve(serveArgs(parsed)),
});

async function serve(args: ReturnType<typeof serveArgs>): Promise<number> {
  if (args.port > 65535) throw new UsageError(`--port must be at most 65535, got ${args.port}`);
  const loading = pipeline(args.model, {
    ...args.pipeline,
    onProgress: createAnyTaskProgress(process.stderr),
    onMemoryCheck: (check) => process.stderr.write(`internvl serve: ${describeMemoryCheck(check)}\n`),
  });
  let server: InternVLServer;
  try {
    const modelName = args.options.modelName ?? defaultModelName(args.model);
    server = new InternVLServer(
      loading.then(pipelineBackend),
      modelName,
      { ...args.options, modelName },
      true,
    );
  } catch (err) {
    void loading.then(
      (p) => p.close(),
      () => {},
    );
    throw err;
  }
  const stopped = new Promise<'signal'>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve('signal');
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  try {
    const address = await server.listen(args.port, args.host);
    process.stderr.write(`internvl serve: listening on ${address.url} while ${server.modelName} loads\n`);
    if ((await Promise.race([server.ready.then(() => 'ready' as const), stopped])) === 'ready') {
      process.stderr.write(
        `internvl serve: ${server.modelName} on ${address.url}/v1 (max batch ${server.limiter.slots}` +
          `${args.options.apiKey ? ', API key required' : ''}); chat page: ${address.url}/\n`,
      );
      await stopped;
    }
  } catch (err) {
    await server.close();
    throw err;
  }
  process.stderr.write(`internvl serve: draining (up to ${args.drainTimeoutMs / 1000} s)\n`);
  const abortNow = () => void server.close();
  process.once('SIGINT', abortNow);
  process.once('SIGTERM', abortNow);
  const { aborted } = await server.drain(args.drainTimeoutMs);
  process.off('SIGINT', abortNow);
  process.off('SIGTERM', abortNow);
  process.stderr.write(`internvl serve: stopped${aborted > 0 ? ` (${aborted} requests aborted)` : ''}\n`);
  return 0;
}
