import { readFileSync } from 'node:fs';
import { didYouMean } from './args.js';

const COMMANDS = {
  help: 'show this help',
  version: 'print the version',
  chat: 'chat with a model about images or a video (one prompt, or interactive)',
  info: 'architecture, parameter counts and estimated peak memory per precision of a model',
  pull: 'download a hub model into the Hugging Face cache (resumable, with progress)',
  ls: 'list the cached hub models and the graph-cache entries built from them, with sizes',
  rm: 'remove a cached hub model and its graph-cache entries',
  serve:
    'OpenAI-compatible HTTP server and a chat page at / (chat/completions, completions, models, metrics)',
  data: 'training data: stats, filter, pack',
  train: 'train a checkpoint on packed shards (stage 1, 1.5 or 2)',
  'transplant-vit': "join one checkpoint's ViT to another's LLM with a fresh mlp1",
  'create-random': 'a random-weight checkpoint at a published InternVL 2.5 shape (1B … 78B)',
  convert: 'build int8/int4/fp32 engine graphs ahead of time',
  'eval-quant': 'logits and greedy-token agreement of a quantised model against fp32',
  bench: "engine speed against the machine's GEMM and bandwidth limits (JSON)",
} as const;

const USAGE = `Usage: internvl <command> [options]
(in this repository, or a project that installed internvl-ts, run it as npx internvl …)

Commands:
${Object.entries(COMMANDS)
  .map(([name, text]) => `  ${name.padEnd(15)} ${text}`)
  .join('\n')}

Examples:
  npx internvl pull OpenGVLab/InternVL2_5-1B                   # download once, then ls / rm
  npx internvl chat OpenGVLab/InternVL2_5-1B --image photo.jpg "Describe this image."
  npx internvl serve OpenGVLab/InternVL2_5-1B --port 23333     # then open http://127.0.0.1:23333/
  npx internvl create-random --shape InternVL2_5-1B --out ./random-1b
  npx internvl data pack examples/data/meta.json --model ./InternVL2_5-1B --out shards/ --max-len 4096

Run \`npx internvl <command> --help\` for a command's options.
`;

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/** Entry point of the `internvl` command; returns the process exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return 0;
    case 'version':
    case '--version':
      process.stdout.write(`${packageVersion()}\n`);
      return 0;
    case 'chat':
      return (await import('./chat.js')).chatCommand(rest);
    case 'data':
      return (await import('./data.js')).dataCommand(rest);
    case 'train':
      return (await import('./train.js')).trainCommand(rest);
    case 'transplant-vit':
      return (await import('./transplant-vit.js')).transplantVitCommand(rest);
    case 'create-random':
      return (await import('./create-random.js')).createRandomCommand(rest);
    case 'convert':
      return (await import('./convert.js')).convertCommand(rest);
    case 'eval-quant':
      return (await import('./eval-quant.js')).evalQuantCommand(rest);
    case 'bench':
      return (await import('./bench.js')).benchCommand(rest);
    case 'serve':
      return (await import('./serve.js')).serveCommand(rest);
    case 'info':
      return (await import('./info.js')).infoCommand(rest);
    case 'pull':
      return (await import('./cache.js')).pullCommand(rest);
    case 'ls':
      return (await import('./cache.js')).lsCommand(rest);
    case 'rm':
      return (await import('./cache.js')).rmCommand(rest);
    default:
      return unknownCommand(command);
  }
}

function unknownCommand(command: string): number {
  const guess = didYouMean(command, Object.keys(COMMANDS));
  process.stderr.write(
    `internvl: unknown command '${command}'${guess ? `; did you mean '${guess}'?` : ''}\n` +
      'Run `npx internvl help` for the list of commands.\n',
  );
  return 2;
}
