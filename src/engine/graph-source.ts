/**
 * What a graph-cache entry was built from: `source.json` beside its checksums, naming the checkpoint
 * files, the component and the precision tag. The cache key is a hash and cannot be read back, so this
 * is how `internvl ls` and `internvl rm` find the entries of a model. It is informational: a load never
 * reads it, and an entry without one (written by an older version) still loads.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { folderBytes } from '../io/hub-cache.js';

export const GRAPH_SOURCE_FILE = 'source.json';

const graphSourceSchema = z.object({
  /** The checkpoint files (absolute paths) the graph's weights came from. */
  files: z.array(z.string()).min(1),
  /** 'vision' or 'decoder'. */
  component: z.string(),
  /** Weight precision of the graph (fp32, int8, int4). */
  dtype: z.string(),
});

export type GraphSource = z.infer<typeof graphSourceSchema>;

export function writeGraphSource(entryDir: string, source: GraphSource): void {
  writeFileSync(path.join(entryDir, GRAPH_SOURCE_FILE), `${JSON.stringify(source, null, 1)}\n`);
}

/** The entry's source, or undefined when it has none or it is unreadable (older entries). */
export function readGraphSource(entryDir: string): GraphSource | undefined {
  try {
    const parsed = graphSourceSchema.safeParse(
      JSON.parse(readFileSync(path.join(entryDir, GRAPH_SOURCE_FILE), 'utf8')),
    );
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

export interface GraphCacheEntry {
  /** The entry folder. */
  dir: string;
  /** Bytes of its files. */
  bytes: number;
  source: GraphSource | undefined;
}

const ENTRY_NAME = /^[0-9a-f]{32}$/;

/** The complete entries of a graph cache folder (temporary folders of running conversions are left out). */
export function listGraphCacheEntries(cacheDir: string): GraphCacheEntry[] {
  let names: string[];
  try {
    names = readdirSync(cacheDir);
  } catch {
    return [];
  }
  return names
    .filter((name) => ENTRY_NAME.test(name))
    .sort()
    .map((name) => {
      const dir = path.join(cacheDir, name);
      return { dir, bytes: folderBytes(dir), source: readGraphSource(dir) };
    });
}

/** The entries whose checkpoint files lie under `modelDir` (a model folder or a hub cache repo folder). */
export function entriesUnder(entries: GraphCacheEntry[], modelDir: string): GraphCacheEntry[] {
  const prefix = path.resolve(modelDir) + path.sep;
  return entries.filter((e) => e.source?.files.some((f) => path.resolve(f).startsWith(prefix)));
}
