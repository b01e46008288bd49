import { readFileSync } from 'node:fs';

const USAGE = `Usage: internvl <command> [options]

Commands:
  help        show this help
  version     print the version
  data        training data: stats, filter, pack

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
    case 'data':
      return (await import('./data.js')).dataCommand(rest);
    default:
      process.stderr.write(`internvl: unknown command '${command}' (args: ${rest.join(' ')})\n${USAGE}`);
      return 2;
  }
}
