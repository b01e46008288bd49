/**
 * `internvl pull`, `internvl ls` and `internvl rm`: the models in the Hugging Face cache (hub.ts,
 * hub-cache.ts) and the graph-cache entries built from them (graph-source.ts).
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline/promises';
import { defaultGraphCacheDir } from '../engine/graph-cache.js';
import { entriesUnder, type GraphCacheEntry, listGraphCacheEntries } from '../engine/graph-source.js';
import { defaultHubCacheDir, resolveModel } from '../io/hub.js';
import {
  type CachedModel,
  findCachedModel,
  listCachedModels,
  removeCachedModel,
  repoIdArgument,
} from '../io/hub-cache.js';
import { createDownloadProgress, formatBytes } from '../io/progress.js';
import { UsageError } from './args.js';
import { defineCommand } from './command.js';

const PULL_USAGE = `Usage: internvl pull MODEL [--revision REV]

Downloads the hub model MODEL (Org/Name or Org/Name@revision) into the Hugging Face cache
($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), as chat and serve would on first
use, and prints the snapshot folder. Files already there are skipped; an interrupted download resumes
where it stopped. Progress goes to stderr: a bar on a terminal, plain lines otherwise.
HF_ENDPOINT (another hub or a mirror), HF_TOKEN (private or gated models) and HF_HUB_OFFLINE apply.

Examples:
  npx internvl pull OpenGVLab/InternVL2_5-1B
  HF_ENDPOINT=https://hf-mirror.example npx internvl pull OpenGVLab/InternVL2_5-1B@main
`;

const LS_USAGE = `Usage: internvl ls [--json]

Lists the models in the Hugging Face cache with their revisions and sizes, and under each one the
graph-cache entries ($INTERNVL_CACHE/graphs, else ~/.cache/internvl-ts/graphs) built from it; then
the entries built from local folders, and those whose source is not recorded (older versions).

Examples:
  npx internvl ls
  npx internvl ls --json
`;

const RM_USAGE = `Usage: internvl rm MODEL [--yes]

Removes the hub model MODEL (Org/Name: every revision) from the Hugging Face cache, with the
graph-cache entries built from it, after listing what it removes. On a terminal it asks first;
--yes skips the question. Without a terminal on stdin it does not ask.

Examples:
  npx internvl rm OpenGVLab/InternVL2_5-1B
  npx internvl rm OpenGVLab/InternVL2_5-1B --yes
`;

/** `internvl pull`; returns the exit code. */
export const pullCommand = defineCommand({
  name: 'pull',
  usage: PULL_USAGE,
  options: { revision: { type: 'string' } },
  async run({ values, positionals }, io) {
    if (positionals.length !== 1) throw new UsageError('expected one MODEL (a hub id like Org/Name)');
    const [id] = positionals;
    repoIdArgument(id.split('@')[0], 'pull');
    const dir = await resolveModel(id, {
      revision: values.revision,
      onProgress: createDownloadProgress(process.stderr),
    });
    io.stdout.write(`${dir}\n`);
    return 0;
  },
});

interface Listing {
  hubCache: string;
  graphCache: string;
  models: (CachedModel & { graphs: GraphCacheEntry[] })[];
  /** Entries built from local folders, by folder. */
  local: { folder: string; graphs: GraphCacheEntry[] }[];
  unknown: GraphCacheEntry[];
}

function listing(): Listing {
  const hubCache = defaultHubCacheDir();
  const graphCache = defaultGraphCacheDir();
  const entries = listGraphCacheEntries(graphCache);
  const claimed = new Set<string>();
  const models = listCachedModels(hubCache).map((m) => {
    const graphs = entriesUnder(entries, m.dir);
    for (const g of graphs) claimed.add(g.dir);
    return { ...m, graphs };
  });
  const local = new Map<string, GraphCacheEntry[]>();
  const unknown: GraphCacheEntry[] = [];
  for (const e of entries) {
    if (claimed.has(e.dir)) continue;
    if (!e.source) {
      unknown.push(e);
      continue;
    }
    const folder = path.dirname(e.source.files[0]);
    local.set(folder, [...(local.get(folder) ?? []), e]);
  }
  return {
    hubCache,
    graphCache,
    models,
    local: [...local].map(([folder, graphs]) => ({ folder, graphs })),
    unknown,
  };
}

const sum = (graphs: GraphCacheEntry[]) => graphs.reduce((n, g) => n + g.bytes, 0);

function graphLines(graphs: GraphCacheEntry[]): string {
  return graphs
    .map((g) => {
      const what = g.source ? `${g.source.component} ${g.source.dtype}` : 'source not recorded';
      return `    graph ${path.basename(g.dir)}  ${what.padEnd(14)} ${formatBytes(g.bytes)}\n`;
    })
    .join('');
}

/** `internvl ls`; returns the exit code. */
export const lsCommand = defineCommand({
  name: 'ls',
  usage: LS_USAGE,
  options: { json: { type: 'boolean' } },
  positionals: 'none',
  run({ values }, io) {
    const l = listing();
    if (values.json) {
      io.stdout.write(`${JSON.stringify(l)}\n`);
      return 0;
    }
    let out = `Hugging Face cache: ${l.hubCache}\n`;
    if (l.models.length === 0) out += '  (no models)\n';
    for (const m of l.models) {
      const refs = Object.entries(m.refs).map(([name, commit]) => `${name}=${commit.slice(0, 8)}`);
      const partial = m.incompleteBytes > 0 ? `, ${formatBytes(m.incompleteBytes)} partly downloaded` : '';
      out += `  ${m.repoId}  ${formatBytes(m.bytes)}${partial}  revisions: ${refs.join(' ') || m.snapshots.map((c) => c.slice(0, 8)).join(' ') || 'none'}\n`;
      if (m.graphs.length > 0) out += `    graphs: ${m.graphs.length}, ${formatBytes(sum(m.graphs))}\n`;
      out += graphLines(m.graphs);
    }
    out += `Graph cache: ${l.graphCache}\n`;
    for (const { folder, graphs } of l.local) {
      out += `  built from ${folder}: ${graphs.length}, ${formatBytes(sum(graphs))}\n${graphLines(graphs)}`;
    }
    if (l.unknown.length > 0) {
      out += `  source not recorded (built by an older version): ${l.unknown.length}, ${formatBytes(sum(l.unknown))}\n${graphLines(l.unknown)}`;
    }
    if (l.local.length === 0 && l.unknown.length === 0) out += '  (no other entries)\n';
    io.stdout.write(out);
    return 0;
  },
});

async function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(question)).trim());
  } finally {
    rl.close();
  }
}

/** `internvl rm`; returns the exit code. */
export const rmCommand = defineCommand({
  name: 'rm',
  usage: RM_USAGE,
  options: { yes: { type: 'boolean', short: 'y' } },
  async run({ values, positionals }, io) {
    if (positionals.length !== 1) throw new UsageError('expected one MODEL (a hub id like Org/Name)');
    const [id] = positionals;
    const repoId = repoIdArgument(id, 'rm');
    const hubCache = defaultHubCacheDir();
    const model = findCachedModel(hubCache, repoId);
    if (!model) {
      io.stderr.write(
        `internvl rm: ${repoId} is not in the Hugging Face cache ${hubCache}; \`npx internvl ls\` lists what is\n`,
      );
      return 1;
    }
    const graphs = entriesUnder(listGraphCacheEntries(defaultGraphCacheDir()), model.dir);
    let plan = `This removes ${repoId}: ${model.dir} (${formatBytes(model.bytes + model.incompleteBytes)})\n`;
    for (const g of graphs) plan += `  and the graph-cache entry ${g.dir} (${formatBytes(g.bytes)})\n`;
    io.stderr.write(plan);
    if (process.stdin.isTTY && !values.yes && !(await confirm('Remove? [y/N] '))) {
      io.stderr.write('Nothing removed.\n');
      return 1;
    }
    for (const g of graphs) await rm(g.dir, { recursive: true, force: true });
    await removeCachedModel(model);
    io.stderr.write(`Removed ${repoId} and ${graphs.length} graph-cache entries.\n`);
    return 0;
  },
});
