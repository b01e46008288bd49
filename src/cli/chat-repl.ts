/** The interactive `internvl chat`: one message a line from stdin, earlier turns kept, slash commands. */
import { access } from 'node:fs/promises';
import { createInterface, type Interface } from 'node:readline';
import { InternVLError } from '../errors.js';
import type { PromptInput } from '../pipeline/conversation.js';
import { type Pipeline, Session, type StreamChunk } from '../pipeline/pipeline.js';
import type { ToolCall } from '../text/tool-prompts.js';
import { UsageError } from './args.js';
import { type ChatArgs, errorMessage } from './chat-args.js';

const REPL_HELP = `/image PATH   attach an image to the next message
/reset        start a new conversation
/help         this list
/exit         quit
`;

const isUrl = (source: string) => /^(https?|data|file):/i.test(source);

/** Fails fast, before a model is loaded, on a local image or video that is not there. */
export async function checkMediaFile(source: string, what: 'image' | 'video'): Promise<void> {
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

/** stdout that turns into a no-op (and reports it) once the reader has gone (EPIPE). */
export function stdoutWriter(onClosed: () => void): { write(text: string): void; dispose(): void } {
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

export function promptInput(prompt: string, images: string[], video?: string, system?: string): PromptInput {
  const input: PromptInput = { prompt, images };
  if (video !== undefined) input.video = video;
  if (system !== undefined) input.system = system;
  return input;
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

export async function repl(pipe: Pipeline, args: ChatArgs): Promise<number> {
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
          out.write(
            args.json
              ? `${JSON.stringify(session.response)}\n`
              : `\n${toolCallLines(session.response?.toolCalls)}`,
          );
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

/** Tool calls as JSON lines `{"tool_call": {"name", "arguments"}}` (arguments parsed), '' for none. */
export function toolCallLines(calls: readonly ToolCall[] | undefined): string {
  return (calls ?? [])
    .map((c) => {
      let args: unknown = c.function.arguments;
      try {
        args = JSON.parse(c.function.arguments);
      } catch {}
      return `${JSON.stringify({ tool_call: { name: c.function.name, arguments: args } })}\n`;
    })
    .join('');
}
