/**
 * Loads XGrammar (`@mlc-ai/web-xgrammar`, the C++ grammar engine compiled to WebAssembly) in Node.
 *
 * Its `lib/index.js` is a UMD bundle inside a `"type": "module"` package, so Node would read it as an
 * ES module, in which it finds no `exports` and leaves everything on a global. It is evaluated here as
 * the CommonJS script it is, with a `require` from `createRequire`. Its one dynamic import,
 * `import('module')` (for `createRequire`), is given the module directly: a dynamic import inside
 * `vm.compileFunction` needs an experimental flag on Node 20.
 *
 * XGrammar reports a bad grammar by printing `[FATAL] file.cc:line: message` and aborting the
 * WebAssembly instance. Each loaded instance gets its own console, so the message is caught and
 * turned into an error that names the problem; an instance that aborted is not used again.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import vm from 'node:vm';
import type * as XGrammar from '@mlc-ai/web-xgrammar';
import { InternVLError } from '../errors.js';

export type XGrammarModule = typeof XGrammar;

const require = createRequire(import.meta.url);
const DYNAMIC_IMPORT = "await import('module')";
let source: { path: string; code: string } | undefined;

function bundle(): { path: string; code: string } {
  if (source) return source;
  const path = require.resolve('@mlc-ai/web-xgrammar');
  const text = readFileSync(path, 'utf8');
  const parts = text.split(DYNAMIC_IMPORT);
  if (parts.length !== 2) {
    throw new InternVLError(
      'INTERNAL',
      `${path}: expected one ${DYNAMIC_IMPORT} in @mlc-ai/web-xgrammar, found ${parts.length - 1} (an unsupported version?)`,
    );
  }
  source = { path, code: parts.join('__nodeModule') };
  return source;
}

/** One XGrammar WebAssembly instance and what it printed last. */
export class XGrammarInstance {
  readonly xg: XGrammarModule;
  #messages: string[] = [];
  #aborted = false;

  constructor() {
    const { path, code } = bundle();
    const mod: { exports: Record<string, unknown> } = { exports: {} };
    const record = (...args: unknown[]) => {
      this.#messages.push(args.map(String).join(' '));
      if (this.#messages.length > 20) this.#messages.shift();
    };
    const console = { log: record, info: record, warn: record, error: record, debug: record };
    const params = ['exports', 'require', 'module', '__filename', '__dirname', 'console', '__nodeModule'];
    const run = vm.compileFunction(code, params, { filename: path });
    run(mod.exports, require, mod, path, dirname(path), console, { createRequire });
    this.xg = mod.exports as unknown as XGrammarModule;
  }

  /** True once a call aborted the instance; its state is then undefined. */
  get aborted(): boolean {
    return this.#aborted;
  }

  /**
   * Runs `fn` on this instance; a failure becomes InternVLError(code) with XGrammar's own message
   * (for an abort, the `[FATAL]` line it printed), prefixed by `what`.
   */
  async run<T>(
    what: string,
    code: 'BAD_INPUT' | 'INTERNAL',
    fn: (xg: XGrammarModule) => Promise<T>,
  ): Promise<T> {
    if (this.#aborted) throw new InternVLError('INTERNAL', 'this XGrammar instance has aborted');
    this.#messages = [];
    try {
      return await fn(this.xg);
    } catch (err) {
      if (err instanceof InternVLError) throw err;
      const fatal = this.#messages.find((m) => m.startsWith('[FATAL]'));
      if (fatal || String(err).includes('Aborted')) this.#aborted = true;
      const message = fatal ? fatalMessage(fatal) : err instanceof Error ? err.message : String(err);
      throw new InternVLError(code, `${what}: ${message}`, { cause: err });
    }
  }
}

/** `[FATAL] /build/xgrammar/cpp/x.cc:902: Unsupported type "nope"` → `Unsupported type "nope"`. */
export function fatalMessage(line: string): string {
  const m = /^\[FATAL\]\s+\S+?\.(?:cc|h|cpp):\d+:\s*(.*)$/s.exec(line.trim());
  let message = (m ? m[1] : line.replace(/^\[FATAL\]\s*/, '')).trim();
  message = message.replace(/^Check failed: \(.*?\) is false:\s*/, '');
  return message;
}
