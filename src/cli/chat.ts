/**
 * `internvl chat`: answer one prompt (streamed, or one JSON line), or run an interactive multi-turn
 * chat that reads messages line by line from stdin (a terminal or a pipe).
 */
import { readFileSync, statSync } from 'node:fs';
import { access } from 'node:fs/promises';
import { createInterface, type Interface } from 'node:readline';
import { describeMemoryCheck } from '../engine/memory-check.js';
import { InternVLError } from '../errors.js';
import { createAnyTaskProgress } from '../io/progress.js';
import type { PromptInput } from '../pipeline/conversation.js';
import { type GenerationConfigInput, parseGenerationConfigInput } from '../pipeline/generation-config.js';
import {
  DEFAULT_MODEL,
  type FinishReason,
  type Pipeline,
  pipeline,
  Session,
  type StreamChunk,
} from '../pipeline/pipeline.js';
import {
  integerOption,
  numberOption,
  PRECISION_FLAGS,
  PRECISION_USAGE,
  parseCommandArgs,
  precisionOptions,
  UsageError,
  usageFailure,
} from './args.js';

const USAGE = `Usage: internvl chat [model] [options] [prompt]

Chat with an InternVL 2.5 model about images or a video.

  model   a local model folder or a hub id (default ${DEFAULT_MODEL}). A single argument is
          the model if it is a folder, a path (./x, /x, ~/x) or looks like Org/Name; else the prompt.
  prompt  answer it (streamed to stdout) and exit; without a prompt, an interactive chat starts.

Options:
  --image PATH          image file or http(s)/data URL; repeat for several
  --video PATH          video file (8 frames, one tile each)
  --max-tiles N         tile budget per image (default: the checkpoint's max_dynamic_patch)
  --system TEXT         replaces the template's system message
  --max-new-tokens N    longest answer in tokens (default: generation_config.json, else 512)
  --temperature T       0 = greedy (the default unless generation_config.json samples)
  --top-p P             nucleus sampling, in (0, 1]
  --top-k K             keep the K most likely tokens; 0 = off
  --seed S              makes sampling reproducible
  --json                print each answer as one JSON line (the Response object, with timings: time to
                        first token, ViT seconds, prefill and decode tokens/s) instead of text
  --json-schema FILE    answer with compact JSON valid for the JSON Schema in FILE (constrained
                        decoding; give --max-new-tokens room for the whole JSON)
${PRECISION_USAGE}
  -h, --help            show this help

Interactive chat: each input line is a message; earlier turns stay in the conversation.
--image, --video and --system apply to the first message of each conversation. Commands:
  /image PATH   attach an image to the next message (repeat for several)
  /reset        start a new conversation
  /help         list the commands
  /exit         quit (so do end of input and Ctrl-C at the prompt)
Ctrl-C during an answer stops that answer. Each answer is streamed as it is generated, followed
by a newline. The prompt marker '> ' is shown only when stdin is a terminal, so a pipe gets
nothing on stdout but the answers. Notes and errors go to stderr.

Examples:
  npx internvl chat OpenGVLab/InternVL2_5-1B --image photo.jpg "Describe this image in detail."
  npx internvl chat ./InternVL2_5-1B --image a.jpg --image b.jpg "What differs between the two images?"
  npx internvl chat ./InternVL2_5-1B --video clip.mp4 --json "What happens in this video?"
  npx internvl chat ./InternVL2_5-1B --json-schema person.json "Who is in the photo?" --image p.jpg
  npx internvl chat ./InternVL2_5-1B                 # interactive
  npx internvl chat ./random-1b --max-new-tokens 32 "Hi"   # a create-random checkpoint: made-up words

Exit status: 0 done; 1 an error (interactive: a message or /image failed); 2 bad usage;
130 Ctrl-C stopped a one-shot answer.
`;

const REPL_HELP = `/image PATH   attach an image to the next message
/reset        start a new conversation
/help         this list
/exit         quit
`;

interface ChatArgs {
  model: string;
  prompt: string | undefined;
  images: string[];
  video: string | undefined;
  system: string | undefined;
  maxTiles: number | undefined;
  gen: GenerationConfigInput;
  json: boolean;
  precision: ReturnType<typeof precisionOptions>;
}

function isDirectory(p: string): boolean {
  return statSync(p, { throwIfNoEntry: false })?.isDirectory() ?? false;
}

/** A lone positional is the model when it names a folder, a path or an `Org/Name[@rev]` hub id. */
function looksLikeModel(arg: string): boolean {
  return (
    isDirectory(arg) || /^(\.{1,2}[\\/]|[\\/]|~)/.test(arg) || /^[\w.-]+\/[\w.-]+(@[\w./-]+)?$/.test(arg)
  );
}

function parseChatArgs(argv: string[]): ChatArgs | 'help' {
  const { values, positionals } = parseCommandArgs(argv, {
    image: { type: 'string', multiple: true },
    video: { type: 'string' },
    'max-tiles': { type: 'string' },
    system: { type: 'string' },
    'max-new-tokens': { type: 'string' },
    temperature: { type: 'string' },
    'top-p': { type: 'string' },
    'top-k': { type: 'string' },
    seed: { type: 'string' },
    json: { type: 'boolean' },
    'json-schema': { type: 'string' },
    ...PRECISION_FLAGS,
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) return 'help';
  if (positionals.length > 2) {
    throw new UsageError(
      `expected at most a model and a prompt, got ${positionals.length} arguments (quote the prompt)`,
    );
  }
  let model = DEFAULT_MODEL;
  let prompt: string | undefined;
  if (positionals.length === 2) [model, prompt] = positionals;
  else if (positionals.length === 1 && looksLikeModel(positionals[0])) model = positionals[0];
  else prompt = positionals[0];
  if (prompt !== undefined && prompt.trim() === '') throw new UsageError('the prompt is empty');

  const gen: GenerationConfigInput = {};
  const maxNewTokens = integerOption(values['max-new-tokens'], 'max-new-tokens', 1);
  if (maxNewTokens !== undefined) gen.maxNewTokens = maxNewTokens;
  const temperature = numberOption(values.temperature, 'temperature');
  if (temperature !== undefined) {
    if (temperature < 0) throw new UsageError(`--temperature must be ≥ 0, got '${values.temperature}'`);
    gen.temperature = temperature;
  }
  const topP = numberOption(values['top-p'], 'top-p');
  if (topP !== undefined) {
    if (topP <= 0 || topP > 1) throw new UsageError(`--top-p must be in (0, 1], got '${values['top-p']}'`);
    gen.topP = topP;
  }
  const topK = integerOption(values['top-k'], 'top-k', 0);
  if (topK !== undefined) gen.topK = topK;
  const seed = integerOption(values.seed, 'seed', 0);
  if (seed !== undefined) gen.seed = seed;
  if (values['json-schema'] !== undefined) {
    gen.responseFormat = { type: 'json_schema', jsonSchema: readJsonSchema(values['json-schema']) };
  }
  try {
    parseGenerationConfigInput(gen);
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  return {
    model,
    prompt,
    images: values.image ?? [],
    video: values.video,
    system: values.system,
    maxTiles: integerOption(values['max-tiles'], 'max-tiles', 1),
    gen,
    json: values.json ?? false,
    precision: precisionOptions(values),
  };
}

/** The JSON Schema object in a file; a missing file or one that is not a JSON object is a usage error. */
function readJsonSchema(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`--json-schema: cannot read ${file}: ${errorMessage(err)}`);
  }
  let schema: unknown;
  try {
    schema = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`--json-schema: ${file} is not JSON: ${errorMessage(err)}`);
  }
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) {
    throw new UsageError(`--json-schema: ${file} must hold a JSON Schema object`);
  }
  return schema as Record<string, unknown>;
}

const isUrl = (source: string) => /^(https?|data|file):/i.test(source);

/** Fails fast, before a model is loaded, on a local image or video that is not there. */
async function checkMediaFile(source: string, what: 'image' | 'video'): Promise<void> {
  if (isUrl(source)) return;
  try {
    await access(source);
  } catch {
    throw new InternVLError(
      what === 'image' ? 'BAD_IMAGE' : 'BAD_VIDEO',
      `${what} file not found: ${source}`,
    );
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** stdout that turns into a no-op (and reports it) once the reader has gone (EPIPE). */
function stdoutWriter(onClosed: () => void): { write(text: string): void; dispose(): void } {
  let closed = false;
  const onError = (err: NodeJS.ErrnoException) => {
    closed = true;
    if (err.code !== 'EPIPE') process.stderr.write(`internvl chat: stdout: ${err.message}\n`);
    onClosed();
  };
  process.stdout.on('error', onError);
  return {
    write(text) {
      if (!closed && text) process.stdout.write(text);
    },
    dispose() {
      process.stdout.off('error', onError);
    },
  };
}

function promptInput(prompt: string, images: string[], video?: string, system?: string): PromptInput {
  const input: PromptInput = { prompt, images };
  if (video !== undefined) input.video = video;
  if (system !== undefined) input.system = system;
  return input;
}

async function answerOnce(pipe: Pipeline, args: ChatArgs, prompt: string): Promise<number> {
  const controller = new AbortController();
  const out = stdoutWriter(() => controller.abort());
  // A second Ctrl-C leaves at once, should the answer not stop.
  const onInterrupt = () => (controller.signal.aborted ? process.exit(130) : controller.abort());
  process.on('SIGINT', onInterrupt);
  const input = promptInput(prompt, args.images, args.video, args.system);
  let finishReason: FinishReason | undefined;
  try {
    if (args.json) {
      const response = await pipe.infer(input, args.gen, { signal: controller.signal });
      finishReason = response.finishReason;
      out.write(`${JSON.stringify(response)}\n`);
    } else {
      for await (const chunk of pipe.stream(input, args.gen, { signal: controller.signal })) {
        out.write(chunk.text);
        finishReason = chunk.finishReason ?? finishReason;
      }
      out.write('\n');
    }
  } finally {
    process.off('SIGINT', onInterrupt);
    out.dispose();
  }
  return finishReason === 'abort' ? 130 : 0;
}

/** Lines of `rl` as an async iterator; lines that arrive while the consumer is busy are kept. */
function lines(rl: Interface): AsyncIterableIterator<string> {
  const queued: string[] = [];
  let closed = false;
  let wake: (() => void) | undefined;
  const notify = () => {
    wake?.();
    wake = undefined;
  };
  rl.on('line', (line) => {
    queued.push(line);
    notify();
  });
  rl.on('close', () => {
    closed = true;
    notify();
  });
  const iterator: AsyncIterableIterator<string> = {
    async next() {
      while (queued.length === 0 && !closed) await new Promise<void>((resolve) => (wake = resolve));
      return queued.length > 0 ? { value: queued.shift()!, done: false } : { value: undefined, done: true };
    },
    [Symbol.asyncIterator]: () => iterator,
  };
  return iterator;
}

async function repl(pipe: Pipeline, args: ChatArgs): Promise<number> {
  const terminal = process.stdin.isTTY === true;
  const rl = createInterface({
    input: process.stdin,
    output: terminal ? process.stdout : undefined,
    terminal,
  });
  rl.setPrompt('> ');
  let answering: AbortController | undefined;
  const out = stdoutWriter(() => {
    answering?.abort();
    rl.close();
  });
  const note = (text: string) => process.stderr.write(`${text}\n`);
  const onInterrupt = () => {
    if (answering) answering.abort();
    else {
      if (terminal) out.write('\n');
      rl.close();
    }
  };
  rl.on('SIGINT', onInterrupt);
  process.on('SIGINT', onInterrupt);

  let session = new Session();
  let attached: string[] = [];
  let failed = false;
  try {
    if (terminal) rl.prompt();
    for await (const raw of lines(rl)) {
      const line = raw.trim();
      if (line === '/exit') break;
      if (line === '/help') out.write(REPL_HELP);
      else if (line === '/reset') {
        await pipe.endSession(session);
        session = new Session();
        attached = [];
        note('(new conversation)');
      } else if (line === '/image' || line.startsWith('/image ')) {
        const source = line.slice('/image'.length).trim();
        try {
          if (!source) throw new UsageError('usage: /image PATH');
          await checkMediaFile(source, 'image');
          attached.push(source);
          note(`(image attached to the next message: ${source})`);
        } catch (err) {
          failed = true;
          note(`internvl chat: ${errorMessage(err)}`);
        }
      } else if (/^\/\w+$/.test(line) || /^\/\w+ /.test(line)) {
        note(`internvl chat: unknown command ${line.split(' ')[0]}; /help lists the commands`);
      } else if (line) {
        const first = session.turns.length === 0;
        const input = first
          ? promptInput(line, [...args.images, ...attached], args.video, args.system)
          : promptInput(line, attached);
        attached = [];
        const controller = new AbortController();
        answering = controller;
        try {
          const onChunk = args.json ? undefined : (chunk: StreamChunk) => out.write(chunk.text);
          await pipe.chat(input, { session, gen: args.gen, signal: controller.signal, onChunk });
          out.write(args.json ? `${JSON.stringify(session.response)}\n` : '\n');
          if (session.response?.finishReason === 'abort') note('(answer stopped)');
        } catch (err) {
          if (err instanceof InternVLError && err.code === 'ABORTED') note('(answer stopped)');
          else {
            failed = true;
            note(`internvl chat: ${errorMessage(err)}`);
          }
        } finally {
          answering = undefined;
        }
      }
      if (terminal) rl.prompt();
    }
  } finally {
    rl.off('SIGINT', onInterrupt);
    process.off('SIGINT', onInterrupt);
    rl.close();
    out.dispose();
    await pipe.endSession(session);
  }
  return failed ? 1 : 0;
}

/** `internvl chat`; returns the process exit code. */
export async function chatCommand(argv: string[]): Promise<number> {
  let args: ChatArgs | 'help';
  try {
    args = parseChatArgs(argv);
  } catch (err) {
    return usageFailure('chat', err, USAGE);
  }
  if (args === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  let pipe: Pipeline | undefined;
  try {
    for (const image of args.images) await checkMediaFile(image, 'image');
    if (args.video !== undefined) await checkMediaFile(args.video, 'video');
    pipe = await pipeline(args.model, {
      maxTiles: args.maxTiles,
      ...args.precision,
      onProgress: createAnyTaskProgress(process.stderr),
      onMemoryCheck: (check) => process.stderr.write(`internvl chat: ${describeMemoryCheck(check)}\n`),
    });
    // A schema XGrammar cannot read fails here, before any prompt.
    if (args.gen.responseFormat) await pipe.compileResponseFormat(args.gen.responseFormat);
    return args.prompt !== undefined ? await answerOnce(pipe, args, args.prompt) : await repl(pipe, args);
  } catch (err) {
    process.stderr.write(`internvl chat: ${errorMessage(err)}\n`);
    return 1;
  } finally {
    await pipe?.close();
  }
}
