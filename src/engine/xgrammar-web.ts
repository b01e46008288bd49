/**
 * The browser entry of xgrammar.ts (swapped in by the browser bundle): XGrammar's UMD bundle
 * (`@mlc-ai/web-xgrammar/lib/index.js`, its WebAssembly inlined) is fetched from the URL the page
 * serves it at and evaluated as the CommonJS script it is, once per instance (see xgrammar-instance.ts).
 * The page's Content-Security-Policy must allow 'unsafe-eval' (for the evaluation) and
 * 'wasm-unsafe-eval' (for the WebAssembly); pages without a CSP allow both.
 */
import { InternVLError } from '../errors.js';
import type { XGrammarFactory, XGrammarModule } from './xgrammar-instance.js';

/** The factory of XGrammar instances from the bundle at the URL `source`. */
export async function loadXGrammarFactory(source?: string): Promise<XGrammarFactory> {
  if (source === undefined) {
    throw new InternVLError(
      'UNSUPPORTED',
      "response formats in a browser need XGrammar: give WebLoadOptions.xgrammarUrl, the URL where the page serves @mlc-ai/web-xgrammar's lib/index.js",
    );
  }
  let text: string;
  try {
    const res = await fetch(source);
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    text = await res.text();
  } catch (err) {
    throw new InternVLError(
      'BAD_INPUT',
      `cannot fetch XGrammar's bundle ${source}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  let run: (...args: unknown[]) => void;
  try {
    run = new Function('exports', 'module', 'console', text) as typeof run;
  } catch (err) {
    throw new InternVLError(
      'UNSUPPORTED',
      `cannot evaluate XGrammar's bundle ${source} (does the page's Content-Security-Policy forbid 'unsafe-eval'?): ${(err as Error).message}`,
      { cause: err },
    );
  }
  return (console) => {
    const mod: { exports: Record<string, unknown> } = { exports: {} };
    run(mod.exports, mod, console);
    if (typeof mod.exports.GrammarCompiler !== 'function') {
      throw new InternVLError('BAD_INPUT', `${source} is not @mlc-ai/web-xgrammar's lib/index.js`);
    }
    return mod.exports as unknown as XGrammarModule;
  };
}
