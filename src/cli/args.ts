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

/** Edit distance with adjacent transpositions (optimal string alignment): 'mdoel' → 'model' is 1. */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/**
 * The candidate closest to a mistyped `word`: within 1 edit (2 for words of 5 letters or more), or the
 * only candidate that starts with it; undefined when none is close.
 */
export function didYouMean(word: string, candidates: Iterable<string>): string | undefined {
  const list = [...candidates];
  let best: string | undefined;
  let bestDistance = word.length >= 5 ? 2 : 1;
  for (const c of list) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance || (d === bestDistance && best === undefined)) {
      best = c;
      bestDistance = d;
    }
  }
  if (best !== undefined) return best;
  const prefixed = list.filter((c) => word.length >= 2 && c.startsWith(word));
  return prefixed.length === 1 ? prefixed[0] : undefined;
}

/** What is wrong with `args` for `options`, in our words; undefined when nothing is found. */
function explainArgs(args: string[], options: ParseArgsOptions): string | undefined {
  const { tokens } = parseArgs({ args, options, allowPositionals: true, strict: false, tokens: true });
  for (const token of tokens) {
    if (token.kind !== 'option') continue;
    const spec = Object.hasOwn(options, token.name) ? options[token.name] : undefined;
    if (spec === undefined) {
      const guess = didYouMean(token.name, Object.keys(options));
      return `unknown option '${token.rawName}'${guess ? `; did you mean --${guess}?` : ''}`;
    }
    const long = `--${token.name}`;
    if (spec.type === 'string' && token.value === undefined) return `${long} needs a value`;
    if (spec.type === 'string' && !token.inlineValue && token.value?.startsWith('-')) {
      return `${long} needs a value, got the option '${token.value}' (write ${long}=${token.value} for a value that starts with '-')`;
    }
    if (spec.type === 'boolean' && token.inlineValue)
      return `${long} takes no value, got '${token.rawName}=${token.value}'`;
  }
  return undefined;
}

/** `util.parseArgs` (strict, positionals allowed) whose errors are UsageErrors in our own words. */
export function parseCommandArgs<const T extends ParseArgsOptions>(
  args: string[],
  options: T,
): ReturnType<typeof parseArgs<{ args: string[]; options: T; allowPositionals: true; strict: true }>> {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new UsageError(explainArgs(args, options) ?? message);
  }
}

/** A command's positionals must be empty: a UsageError naming the first one otherwise. */
export function noPositionals(positionals: string[]): void {
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
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
  'ignore-memory-check': { type: 'boolean' },
} as const;

export const PRECISION_USAGE = `  --llm-dtype D         LLM weights: fp32 (default), int8 or int4
  --prefill-dtype D     LLM weights for long prefill chunks (default: --llm-dtype); int8 with int4 is fastest on CPU
  --vit-dtype D         vision encoder weights: fp32 (default) or int8
  --ignore-memory-check load even when the estimated peak memory exceeds the memory available
                        (the first line on stderr names the precision and the estimate; see internvl info)`;

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
  'ignore-memory-check'?: boolean;
}): {
  llmDtype?: 'fp32' | 'int8' | 'int4';
  prefillDtype?: 'fp32' | 'int8' | 'int4';
  vitDtype?: 'fp32' | 'int8';
  ignoreMemoryCheck: boolean;
} {
  const weights = ['fp32', 'int8', 'int4'] as const;
  return {
    llmDtype: oneOf(values['llm-dtype'], 'llm-dtype', weights),
    prefillDtype: oneOf(values['prefill-dtype'], 'prefill-dtype', weights),
    vitDtype: oneOf(values['vit-dtype'], 'vit-dtype', ['fp32', 'int8'] as const),
    ignoreMemoryCheck: values['ignore-memory-check'] ?? false,
  };
}
