/**
 * One XGrammar (`@mlc-ai/web-xgrammar`, the C++ grammar engine compiled to WebAssembly) instance, in
 * Node and in browsers; the platform loaders (xgrammar.ts in Node, xgrammar-web.ts in browsers) give
 * the factory that evaluates the package's bundle once more.
 *
 * XGrammar reports a bad grammar by printing `[FATAL] file.cc:line: message` and aborting the
 * WebAssembly instance, which then stays broken (the bundle keeps one instance for good). So each
 * instance is a fresh evaluation of the bundle with its own console: the message is caught and turned
 * into an error that names the problem, and an instance that aborted is not used again.
 */
import type * as XGrammar from '@mlc-ai/web-xgrammar';
import { InternVLError } from '../errors.js';

export type XGrammarModule = typeof XGrammar;

/** Where XGrammar's printed lines go. */
export type XGrammarConsole = Record<
  'log' | 'info' | 'warn' | 'error' | 'debug',
  (...args: unknown[]) => void
>;

/** Evaluates XGrammar's bundle once more, printing to `console`: a new WebAssembly instance. */
export type XGrammarFactory = (console: XGrammarConsole) => XGrammarModule;

/** One XGrammar WebAssembly instance and what it printed last. */
export class XGrammarInstance {
  readonly xg: XGrammarModule;
  #messages: string[] = [];
  #aborted = false;

  constructor(factory: XGrammarFactory) {
    const record = (...args: unknown[]) => {
      this.#messages.push(args.map(String).join(' '));
      if (this.#messages.length > 20) this.#messages.shift();
    };
    this.xg = factory({ log: record, info: record, warn: record, error: record, debug: record });
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
