/**
 * The models in a Hugging Face hub cache folder (the layout huggingface_hub writes and hub.ts
 * downloads into): `models--Org--Name/{refs,snapshots,blobs}`. Listing and removal for `internvl ls`
 * and `internvl rm`.
 */
import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import { parseHubId, repoCacheDir } from './hub-snapshot.js';

/** Bytes of the regular files under `dir`; symlinks are not followed (snapshots link into blobs). */
export function folderBytes(dir: string): number {
  let total = 0;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return 0;
  }
  for (const name of names) {
    const p = path.join(dir, name);
    let st: ReturnType<typeof lstatSync>;
    try {
      st = lstatSync(p);
    } catch {
      continue;
    }
    if (st.isDirectory()) total += folderBytes(p);
    else if (st.isFile()) total += st.size;
  }
  return total;
}

export interface CachedModel {
  /** `Org/Name`. */
  repoId: string;
  /** `<cache>/models--Org--Name`. */
  dir: string;
  /** Revision name (branch, tag) → commit, from refs/. */
  refs: Record<string, string>;
  /** The commits that have a snapshot folder. */
  snapshots: string[];
  /** Bytes on disk (blobs, and files copied into snapshots where symlinks failed). */
  bytes: number;
  /** Bytes of unfinished downloads (`blobs/*.incomplete`), which the next pull resumes. */
  incompleteBytes: number;
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
}

/** refs/ holds one file per revision; branch names may contain '/', so it is walked. */
function readRefs(refsDir: string, prefix = ''): Record<string, string> {
  const refs: Record<string, string> = {};
  for (const name of listDir(refsDir)) {
    const p = path.join(refsDir, name);
    if (lstatSync(p).isDirectory()) Object.assign(refs, readRefs(p, `${prefix}${name}/`));
    else refs[`${prefix}${name}`] = readFileSync(p, 'utf8').trim();
  }
  return refs;
}

function describeRepo(dir: string, repoId: string): CachedModel {
  let incompleteBytes = 0;
  for (const name of listDir(path.join(dir, 'blobs'))) {
    if (name.endsWith('.incomplete')) incompleteBytes += lstatSync(path.join(dir, 'blobs', name)).size;
  }
  return {
    repoId,
    dir,
    refs: readRefs(path.join(dir, 'refs')),
    snapshots: listDir(path.join(dir, 'snapshots')).filter((n) => !n.includes('.tmp-')),
    bytes: folderBytes(dir),
    incompleteBytes,
  };
}

/** Every model in the cache folder, by id; an absent folder is an empty cache. */
export function listCachedModels(cacheDir: string): CachedModel[] {
  const models: CachedModel[] = [];
  for (const name of listDir(cacheDir)) {
    if (!name.startsWith('models--')) continue;
    const dir = path.join(cacheDir, name);
    if (!lstatSync(dir).isDirectory()) continue;
    // huggingface_hub writes `models--{org}--{name}`; repo names cannot contain '--'.
    const repoId = name.slice('models--'.length).split('--').join('/');
    models.push(describeRepo(dir, repoId));
  }
  return models;
}

/** The cached model `Org/Name`, or undefined when the cache does not hold it. */
export function findCachedModel(cacheDir: string, repoId: string): CachedModel | undefined {
  const dir = repoCacheDir(cacheDir, repoId);
  try {
    if (!lstatSync(dir).isDirectory()) return undefined;
  } catch {
    return undefined;
  }
  return describeRepo(dir, repoId);
}

/** `Org/Name` from a command-line id; a revision or a path is refused with the reason. */
export function repoIdArgument(id: string, command: string): string {
  const parsed = parseHubId(id);
  if (!parsed) {
    throw new InternVLError(
      'BAD_INPUT',
      `${command} takes a hub id like "Org/Name"; ${JSON.stringify(id)} is not one (local folders are yours to manage)`,
    );
  }
  if (parsed.revision !== undefined) {
    throw new InternVLError(
      'BAD_INPUT',
      `${command} works on the whole model: write "${parsed.repoId}" without "@${parsed.revision}"`,
    );
  }
  return parsed.repoId;
}

/** Removes a cached model's folder (all its revisions and blobs). */
export async function removeCachedModel(model: CachedModel): Promise<void> {
  await rm(model.dir, { recursive: true, force: true });
}
