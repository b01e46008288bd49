/** The usage, flags and argument checks of `internvl chat`. */
import { readFileSync, statSync } from 'node:fs';
import { type GenerationConfigInput, parseGenerationConfigInput } from '../pipeline/generation-config.js';
import { DEFAULT_MODEL } from '../pipeline/pipeline.js';
import { withoutToolOptions } from '../pipeline/tool-calls.js';
import {
  integerOption,
  numberOption,
  PRECISION_FLAGS,
  PRECISION_USAGE,
  precisionOptions,
  UsageError,
} from './args.js';
import type { ParsedArgs } from './command.js';

export const USAGE = `Usage: internvl chat [model] [options] [prompt]

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
  --tools FILE          tools the model may call: a JSON list of OpenAI function tools
                        ([{"type": "function", "function": {"name", "description", "parameters"}}]);
                        each call is printed after the answer's text as one JSON line
                        {"tool_call": {"name", "arguments"}}
  --tool-choice C       auto (default with --tools), required (always calls), none, or a tool's
                        name (always calls that tool); required and a name are valid by construction
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
  npx internvl chat ./InternVL2_5-1B --tools tools.json --tool-choice required "Weather in Paris?"
  npx internvl chat ./InternVL2_5-1B                 # interactive
  npx internvl chat ./random-1b --max-new-tokens 32 "Hi"   # a create-random checkpoint: made-up words

Exit status: 0 done; 1 an error (interactive: a message or /image failed); 2 bad usage;
130 Ctrl-C stopped a one-shot answer.
`;

export interface ChatArgs {
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

export const CHAT_OPTIONS = {
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
  tools: { type: 'string' },
  'tool-choice': { type: 'string' },
  ...PRECISION_FLAGS,
} as const;

/** What the flags and positionals ask for; a bad one is a UsageError. */
export function chatArgs({ values, positionals }: ParsedArgs<typeof CHAT_OPTIONS>): ChatArgs {
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
    gen.responseFormat = {
      type: 'json_schema',
      jsonSchema: readJsonObject(values['json-schema'], 'json-schema'),
    };
  }
  if (values.tools !== undefined)
    gen.tools = readJsonFile(values.tools, 'tools') as GenerationConfigInput['tools'];
  const choice = values['tool-choice'];
  if (choice !== undefined) {
    if (values.tools === undefined) throw new UsageError('--tool-choice needs --tools');
    gen.toolChoice =
      choice === 'auto' || choice === 'required' || choice === 'none'
        ? choice
        : { type: 'function', function: { name: choice } };
  }
  try {
    parseGenerationConfigInput(withoutToolOptions(gen));
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

/** The JSON in the file of option `--flag`; a file that cannot be read or is not JSON is a usage error. */
function readJsonFile(file: string, flag: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`--${flag}: cannot read ${file}: ${errorMessage(err)}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new UsageError(`--${flag}: ${file} is not JSON: ${errorMessage(err)}`);
  }
}

/** A JSON object (a JSON Schema) in a file. */
function readJsonObject(file: string, flag: string): Record<string, unknown> {
  const value = readJsonFile(file, flag);
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new UsageError(`--${flag}: ${file} must hold a JSON Schema object`);
  }
  return value as Record<string, unknown>;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
