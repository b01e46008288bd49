import { readFileSync } from 'node:fs';

const USAGE = `Usage: internvl <command> [options]

Commands:
  help        show this help
  version     print the version
  chat        chat with a model about images or a video (one prompt, or interactive)
  data        training data: stats, filter, pack
  train       train a checkpoint on packed shards (stage 1, 1.5 or 2)
  transplant-vit  join one checkpoint's ViT to another's LLM with a fresh mlp1
  create-random  a random-weight checkpoint at a real InternVL 2.5 shape
  convert     build int8/int4/fp32 engine graphs ahead of time
  eval-quant  logits and greedy-token agreement of a quantised model against fp32
  bench       engine speed against the machine's GEMM and bandwidth limits (JSON)
  serve       OpenAI-compatible HTTP server (chat/completions, completions, models, metrics)

Run \`internvl <command> --help\` for a command's options.
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
    default:
      process.stderr.write(`internvl: unknown command '${command}' (args: ${rest.join(' ')})\n${USAGE}`);
      return 2;
  }
}
