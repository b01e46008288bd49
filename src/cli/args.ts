/** Command-line argument helpers shared by `internvl` commands. */
import { type ParseArgsConfig, parseArgs } from 'node:util';

/** Bad command-line usage: the command prints the message and its usage text and exits 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

type ParseArgsOptions = NonNullable<ParseArgsConfig['options']>;

/** `util.parseArgs` (strict, positionals allowed) whose errors are UsageErrors. */
export function parseCommandArgs<const T extends ParseArgsOptions>(
  args: string[],
  options: T,
): ReturnType<typeof parseArgs<{ args: string[]; options: T; allowPositionals: true; strict: true }>> {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
}

/** An integer option ≥ `min`, or undefined when not given. */
export function integerOption(value: string | undefined, name: string, min: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isSafeInteger(n) || n < min) {
    throw new UsageError(`--${name} must be an integer ≥ ${min}, got '${value}'`);
  }
  return n;
}

/** A finite number option, or undefined when not given. */
export function numberOption(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) {
    throw new UsageError(`--${name} must be a number, got '${value}'`);
  }
  return n;
}

/** The weight-precision flags shared by the commands that load a model. */
export const PRECISION_FLAGS = {
  'llm-dtype': { type: 'string' },
  'prefill-dtype': { type: 'string' },
  'vit-dtype': { type: 'string' },
} as const;

export const PRECISION_USAGE = `  --llm-dtype D         LLM weights: fp32 (default), int8 or int4
  --prefill-dtype D     LLM weights for long prefill chunks (default: --llm-dtype); int8 with int4 is fastest on CPU
  --vit-dtype D         vision encoder weights: fp32 (default) or int8`;

function oneOf<T extends string>(
  value: string | undefined,
  name: string,
  allowed: readonly T[],
): T | undefined {
  if (value === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(value)) {
    throw new UsageError(`--${name} must be one of ${allowed.join(', ')}, got '${value}'`);
  }
  return value as T;
}

/** Pipeline precision options from the values of PRECISION_FLAGS. */
export function precisionOptions(values: {
  'llm-dtype'?: string;
  'prefill-dtype'?: string;
  'vit-dtype'?: string;
}): {
  llmDtype?: 'fp32' | 'int8' | 'int4';
  prefillDtype?: 'fp32' | 'int8' | 'int4';
  vitDtype?: 'fp32' | 'int8';
} {
  const weights = ['fp32', 'int8', 'int4'] as const;
  return {
    llmDtype: oneOf(values['llm-dtype'], 'llm-dtype', weights),
    prefillDtype: oneOf(values['prefill-dtype'], 'prefill-dtype', weights),
    vitDtype: oneOf(values['vit-dtype'], 'vit-dtype', ['fp32', 'int8'] as const),
  };
}
