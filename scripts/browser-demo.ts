/**
 * The in-browser demo (examples/browser): bundles its script with esbuild (swapping the engine's
 * Node adapters for their browser entries) and serves the page, onnxruntime-web's WASM files, XGrammar and a
 * model folder written by `internvl convert --target web`, cross-origin isolated so WASM can use threads.
 *
 *   node --import tsx scripts/browser-demo.ts WEB_MODEL_DIR [--port 8080]
 */
import { readFileSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ORT_WEB_DIST = path.join(REPO_ROOT, 'node_modules/onnxruntime-web/dist');
/** XGrammar's bundle (lib/index.js, its WebAssembly inlined), served at /xgrammar/ for response formats. */
export const XGRAMMAR_DIST = path.join(REPO_ROOT, 'node_modules/@mlc-ai/web-xgrammar/lib');
export const DEMO_DIR = path.join(REPO_ROOT, 'examples/browser');

const toSource = (built: string) => built.replace(/^\.\/dist\//, 'src/').replace(/\.js$/, '.ts');

/**
 * Node-only modules of the engine and the browser modules that replace them in a bundle: package.json's
 * `browser` map (which bundlers read for `internvl-ts/web`), here for the sources.
 */
export const BROWSER_ADAPTERS: Readonly<Record<string, string>> = Object.fromEntries(
  Object.entries(
    (
      JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as {
        browser: Record<string, string>;
      }
    ).browser,
  ).map(([node, web]) => [toSource(node), toSource(web)]),
);

const adapterPlugin: esbuild.Plugin = {
  name: 'internvl-browser-adapters',
  setup(build) {
    const map = new Map(
      Object.entries(BROWSER_ADAPTERS).map(([node, web]) => [
        path.join(REPO_ROOT, node),
        path.join(REPO_ROOT, web),
      ]),
    );
    // A Node built-in loaded with import() inside a Node-only function (the config file readers)
    // stays a runtime import that the browser never reaches; a static import of one fails the build.
    build.onResolve({ filter: /^node:/ }, (args) =>
      args.kind === 'dynamic-import' ? { path: args.path, external: true } : undefined,
    );
    build.onResolve({ filter: /^\.\.?\/.*\.js$/ }, (args) => {
      const target = path.resolve(args.resolveDir, args.path.replace(/\.js$/, '.ts'));
      const web = map.get(target);
      return web ? { path: web } : undefined;
    });
  },
};

/**
 * Bundles `entry` for browsers into `outfile` (ES module). onnxruntime-web stays an import the page
 * maps (import map) to its own served copy, which loads its WASM files from beside itself.
 * Fails when anything reachable imports a Node built-in.
 */
export async function bundleForBrowser(entry: string, outfile: string): Promise<void> {
  await esbuild.build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    external: ['onnxruntime-web'],
    plugins: [adapterPlugin],
    logLevel: 'silent',
    sourcemap: false,
  });
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
};

export interface DemoServerOptions {
  /** The folder from `internvl convert --target web`, served at /model/. */
  modelDir: string;
  /** The bundled demo script (demo.js), served at /demo.js. */
  bundle: string;
  /** Extra folders served at /<prefix>/ (tests serve golden files this way). */
  extra?: Record<string, string>;
  port?: number;
}

export interface DemoServer {
  url: string;
  /** While true, /model/ answers 503, as if the network were gone (the Cache API must serve it). */
  setModelOffline(offline: boolean): void;
  close(): Promise<void>;
}

/** Serves the demo on 127.0.0.1 with COOP/COEP headers (cross-origin isolation). */
export async function startDemoServer(options: DemoServerOptions): Promise<DemoServer> {
  const roots: [string, string][] = [
    ['/model/', options.modelDir],
    ['/ort/', ORT_WEB_DIST],
    ['/xgrammar/', XGRAMMAR_DIST],
    ...Object.entries(options.extra ?? {}).map(([p, dir]): [string, string] => [`/${p}/`, dir]),
  ];
  let modelOffline = false;
  const server = http.createServer(async (req, res) => {
    res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
    res.setHeader('Cross-Origin-Embedder-Policy', 'require-corp');
    res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
    const pathname = decodeURIComponent(new URL(req.url ?? '/', 'http://127.0.0.1').pathname);
    let file: string | undefined;
    if (pathname === '/' || pathname === '/index.html') file = path.join(DEMO_DIR, 'index.html');
    else if (pathname === '/demo.js') file = options.bundle;
    else {
      for (const [prefix, dir] of roots) {
        if (!pathname.startsWith(prefix)) continue;
        if (prefix === '/model/' && modelOffline) {
          res.writeHead(503).end();
          return;
        }
        const candidate = path.resolve(dir, `.${pathname.slice(prefix.length - 1)}`);
        if (candidate.startsWith(path.resolve(dir) + path.sep)) file = candidate;
      }
    }
    try {
      if (!file || !(await stat(file)).isFile()) throw new Error('not found');
      const body = await readFile(file);
      res.writeHead(200, {
        'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
        'content-length': body.byteLength,
      });
      res.end(body);
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: ${pathname}`);
    }
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    setModelOffline: (offline) => {
      modelOffline = offline;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function main(argv: string[]): Promise<number> {
  const portIndex = argv.indexOf('--port');
  const port = portIndex === -1 ? 8080 : Number(argv[portIndex + 1]);
  const positionals = argv.filter((_, i) => i !== portIndex && i !== portIndex + 1);
  if (positionals.length !== 1 || !Number.isInteger(port)) {
    process.stderr.write('usage: node --import tsx scripts/browser-demo.ts WEB_MODEL_DIR [--port 8080]\n');
    return 2;
  }
  const bundle = path.join(REPO_ROOT, '.cache/browser-demo/demo.js');
  await bundleForBrowser(path.join(DEMO_DIR, 'main.ts'), bundle);
  const server = await startDemoServer({ modelDir: path.resolve(positionals[0]), bundle, port });
  process.stdout.write(`demo: ${server.url}\n`);
  return 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const code = await main(process.argv.slice(2));
  if (code !== 0) process.exitCode = code;
}
