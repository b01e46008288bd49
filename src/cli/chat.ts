/**
 * `internvl chat`: answer one prompt (streamed, or one JSON line), or run an interactive multi-turn
 * chat that reads messages line by line from stdin (a terminal or a pipe; chat-repl.ts).
 */
import { describeMemoryCheck } from '../engine/memory-check.js';
import { createAnyTaskProgress } from '../io/progress.js';
import { type FinishReason, type Pipeline, pipeline } from '../pipeline/pipeline.js';
import { ToolCallAccumulator } from '../pipeline/tool-call-reader.js';
import { CHAT_OPTIONS, type ChatArgs, chatArgs, USAGE } from './chat-args.js';
import { checkMediaFile, promptInput, repl, stdoutWriter, toolCallLines } from './chat-repl.js';
import { defineCommand } from './command.js';

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
      const calls = new ToolCallAccumulator();
      for await (const chunk of pipe.stream(input, args.gen, { signal: controller.signal })) {
        out.write(chunk.text);
        if (chunk.toolCalls) calls.add(chunk.toolCalls);
        finishReason = chunk.finishReason ?? finishReason;
      }
      out.write(`\n${toolCallLines(calls.calls)}`);
    }
  } finally {
    process.off('SIGINT', onInterrupt);
    out.dispose();
  }
  return finishReason === 'abort' ? 130 : 0;
}

/** `internvl chat`; returns the process exit code. */
export const chatCommand = defineCommand({
  name: 'chat',
  usage: USAGE,
  options: CHAT_OPTIONS,
  run: (parsed) => chat(chatArgs(parsed)),
});

async function chat(args: ChatArgs): Promise<number> {
  for (const image of args.images) await checkMediaFile(image, 'image');
  if (args.video !== undefined) await checkMediaFile(args.video, 'video');
  let pipe: Pipeline | undefined;
  try {
    pipe = await pipeline(args.model, {
      maxTiles: args.maxTiles,
      ...args.precision,
      onProgress: createAnyTaskProgress(process.stderr),
      onMemoryCheck: (check) => process.stderr.write(`internvl chat: ${describeMemoryCheck(check)}\n`),
    });
    // A schema XGrammar cannot read, or a bad tool, fails here, before any prompt.
    if (args.gen.responseFormat) await pipe.compileResponseFormat(args.gen.responseFormat);
    if (args.gen.tools) await pipe.compileTools(args.gen);
    return args.prompt !== undefined ? await answerOnce(pipe, args, args.prompt) : await repl(pipe, args);
  } finally {
    await pipe?.close();
  }
}
