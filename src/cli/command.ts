/**
 * One `internvl` command, declared once: its name, usage text, options and what it runs. The helper
 * adds `--help`/`-h` (the usage on stdout, exit 0), parses strictly (cli/args.ts), prints a UsageError
 * as `internvl NAME: message` followed by the usage (exit 2), and any other error (an InternVLError
 * naming the problem) as `internvl NAME: message` (exit 1).
 */
import type { ParseArgsConfig } from 'node:util';
import { noPositionals, parseCommandArgs, UsageError } from './args.js';

/** Where a command writes; tests pass their own. */
export interface CommandIo {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown; isTTY?: boolean };
}

type Options = NonNullable<ParseArgsConfig['options']>;

export type ParsedArgs<O extends Options> = ReturnType<typeof parseCommandArgs<O>>;

export interface CommandSpec<O extends Options> {
  /** As typed after `internvl` ('convert', 'data pack'). */
  name: string;
  /** Printed for --help, and after a usage error. */
  usage: string;
  options: O;
  /** 'none': any positional argument is a usage error. Default: the command checks them. */
  positionals?: 'none';
  run(args: ParsedArgs<O>, io: CommandIo): Promise<number> | number;
}

const HELP = { help: { type: 'boolean', short: 'h' } } as const;

/** Prints `err` the way every command does and returns the exit code. */
export function commandFailure(name: string, usage: string, err: unknown, io: CommandIo): number {
  if (err instanceof UsageError) {
    io.stderr.write(`internvl ${name}: ${err.message}\n\n${usage}`);
    return 2;
  }
  io.stderr.write(`internvl ${name}: ${err instanceof Error ? err.message : String(err)}\n`);
  return 1;
}

/** The entry point of a command: `(argv, io?) => exit code`. */
export function defineCommand<const O extends Options>(
  spec: CommandSpec<O>,
): (argv: string[], io?: CommandIo) => Promise<number> {
  return async (argv, io = process) => {
    try {
      const parsed = parseCommandArgs(argv, { ...spec.options, ...HELP });
      if ((parsed.values as { help?: boolean }).help) {
        io.stdout.write(spec.usage);
        return 0;
      }
      if (spec.positionals === 'none') noPositionals(parsed.positionals);
      return await spec.run(parsed as unknown as ParsedArgs<O>, io);
    } catch (err) {
      return commandFailure(spec.name, spec.usage, err, io);
    }
  };
}
