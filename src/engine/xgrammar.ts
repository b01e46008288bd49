/**
 * Loads XGrammar (`@mlc-ai/web-xgrammar`) in Node; xgrammar-web.ts is the browser entry.
 *
 * Its `lib/index.js` is a UMD bundle inside a `"type": "module"` package, so Node would read it as an
 * ES module, in which it finds no `exports` and leaves everything on a global. It is evaluated here as
 * the CommonJS script it is, with a `require` from `createRequire`. Its one dynamic import,
 * `import('module')` (for `createRequire`), is given the module directly: a dynamic import inside
 * `vm.compileFunction` needs an experimental flag on Node 20.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import vm from 'node:vm';
import { InternVLError } from '../errors.js';
import type { XGrammarFactory, XGrammarModule } from './xgrammar-instance.js';

const require = createRequire(import.meta.url);
const DYNAMIC_IMPORT = "await import('module')";

/**
 * The factory of XGrammar instances from the package's bundle: `source` is the path of its
 * `lib/index.js` (default: the installed `@mlc-ai/web-xgrammar`).
 */
export async function loadXGrammarFactory(source?: string): Promise<XGrammarFactory> {
  const path = source ?? require.resolve('@mlc-ai/web-xgrammar');
  const text = await readFile(path, 'utf8').catch((err: unknown) => {
    throw new InternVLError('BAD_INPUT', `cannot read XGrammar's bundle ${path}: ${(err as Error).message}`, {
      cause: err,
    });
  });
  const parts = text.split(DYNAMIC_IMPORT);
  if (parts.length !== 2) {
    throw new InternVLError(
      'INTERNAL',
      `${path}: expected one ${DYNAMIC_IMPORT} in @mlc-ai/web-xgrammar, found ${parts.length - 1} (an unsupported version?)`,
    );
  }
  const params = ['exports', 'require', 'module', '__filename', '__dirname', 'console', '__nodeModule'];
  const run = vm.compileFunction(parts.join('__nodeModule'), params, { filename: path });
  return (console) => {
    const mod: { exports: Record<string, unknown> } = { exports: {} };
    run(mod.exports, require, mod, path, dirname(path), console, { createRequire });
    return mod.exports as unknown as XGrammarModule;
  };
}
