/**
 * The Hugging Face hub cache as huggingface_hub lays it out (`models--Org--Name/{refs,blobs,snapshots}`):
 * where a repository's folder is, which commit a revision points to, whether a snapshot holds a
 * usable model, and the atomic writes that add to it. What `resolveModel` reads offline.
 */
import { copyFile, mkdir, readFile, rename, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import type { ProgressCallback } from './progress.js';

export const DEFAULT_ENDPOINT = 'https://huggingface.co';
export const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'tokenizer.model',
  'added_tokens.json',
];
export const WEIGHTS_FILE = 'model.safetensors';
export const WEIGHTS_INDEX_FILE = 'model.safetensors.index.json';
export const COMMIT_RE = /^[0-9a-f]{40}$/;
const REPO_ID_RE = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;

/** resolveModel's options, checked, with their defaults. */
export interface HubSettings {
  repoId: string;
  revision: string;
  endpoint: string;
  token: string | undefined;
  cacheDir: string;
  offline: boolean;
  onProgress: ProgressCallback | undefined;
  extraFiles: string[];
  maxRetries: number;
  timeoutMs: number;
  signal: AbortSignal | undefined;
}

/** The Hugging Face hub cache folder, as huggingface_hub computes it. */
export function defaultHubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HF_HOME) return path.join(env.HF_HOME, 'hub');
  const cacheHome = env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(cacheHome, 'huggingface', 'hub');
}

/** `models--Org--Name` under the cache folder. */
export function repoCacheDir(cacheDir: string, repoId: string): string {
  return path.join(cacheDir, `models--${repoId.split('/').join('--')}`);
}

/** Splits `Org/Name@revision`; undefined when the text is not a hub id. */
export function parseHubId(id: string): { repoId: string; revision: string | undefined } | undefined {
  const at = id.indexOf('@');
  const repoId = at < 0 ? id : id.slice(0, at);
  const revision = at < 0 ? undefined : id.slice(at + 1);
  if (!REPO_ID_RE.test(repoId) || repoId.includes('..') || revision === '') return undefined;
  return { repoId, revision };
}

export async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

export async function isDirectory(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

export function checkRepoFileName(name: string, from: string): string {
  if (
    name === '' ||
    path.isAbsolute(name) ||
    name.split(/[\\/]/).some((part) => part === '..' || part === '')
  ) {
    throw new InternVLError('BAD_CHECKPOINT', `${from} names an unsafe file path ${JSON.stringify(name)}`);
  }
  return name;
}

/** `model Org/Name (revision main)`, for messages. */
export function describe(s: HubSettings): string {
  return `model ${s.repoId} (revision ${s.revision})`;
}

export async function readRef(s: HubSettings): Promise<string | undefined> {
  const repoDir = repoCacheDir(s.cacheDir, s.repoId);
  if (COMMIT_RE.test(s.revision) && (await isDirectory(path.join(repoDir, 'snapshots', s.revision)))) {
    return s.revision;
  }
  try {
    const commit = (await readFile(path.join(repoDir, 'refs', s.revision), 'utf8')).trim();
    return COMMIT_RE.test(commit) ? commit : undefined;
  } catch {
    return undefined;
  }
}

/** The files a snapshot folder lacks to be a usable model (empty when complete). */
export async function missingSnapshotFiles(dir: string, extraFiles: string[]): Promise<string[]> {
  const missing: string[] = [];
  for (const f of ['config.json', ...extraFiles]) if (!(await exists(path.join(dir, f)))) missing.push(f);
  if (
    !(await exists(path.join(dir, 'tokenizer.json'))) &&
    !(await exists(path.join(dir, 'tokenizer.model')))
  ) {
    missing.push('tokenizer.json (or tokenizer.model)');
  }
  if (!(await exists(path.join(dir, WEIGHTS_FILE)))) {
    const indexPath = path.join(dir, WEIGHTS_INDEX_FILE);
    if (!(await exists(indexPath))) {
      missing.push(`${WEIGHTS_FILE} (or ${WEIGHTS_INDEX_FILE})`);
    } else {
      for (const shard of await shardsOfIndex(indexPath)) {
        if (!(await exists(path.join(dir, shard)))) missing.push(shard);
      }
    }
  }
  return missing;
}

export async function shardsOfIndex(indexPath: string): Promise<string[]> {
  let index: unknown;
  try {
    index = JSON.parse(await readFile(indexPath, 'utf8'));
  } catch (err) {
    throw new InternVLError('BAD_CHECKPOINT', `${indexPath}: not valid JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new InternVLError('BAD_CHECKPOINT', `${indexPath}: missing "weight_map" object`);
  }
  const shards = new Set<string>();
  for (const [tensor, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string') {
      throw new InternVLError('BAD_CHECKPOINT', `${indexPath}: weight_map["${tensor}"] is not a file name`);
    }
    shards.add(checkRepoFileName(shard, indexPath));
  }
  return [...shards];
}

export async function resolveFromCache(s: HubSettings): Promise<string> {
  const repoDir = repoCacheDir(s.cacheDir, s.repoId);
  const commit = await readRef(s);
  if (!commit) {
    throw new InternVLError(
      'OFFLINE',
      `offline mode: ${describe(s)} is not in the cache ${s.cacheDir} (no ${path.join(repoDir, 'refs', s.revision)}); ` +
        'download it once online or unset HF_HUB_OFFLINE',
    );
  }
  const snapshot = path.join(repoDir, 'snapshots', commit);
  const missing = await missingSnapshotFiles(snapshot, s.extraFiles);
  if (missing.length > 0) {
    throw new InternVLError(
      'OFFLINE',
      `offline mode: ${describe(s)} is only partly cached in ${snapshot}; missing ${missing.join(', ')}`,
    );
  }
  return snapshot;
}

/** Writes a small file via a temporary name and a rename, so readers never see it half written. */
export async function writeAtomically(file: string, content: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  await writeFile(tmp, content);
  await rename(tmp, file);
}

/** snapshots/<commit>/<file> -> ../../blobs/<etag> (relative symlink, as huggingface_hub makes); a copy where symlinks fail. */
export async function linkIntoSnapshot(blobPath: string, snapshotPath: string): Promise<void> {
  await mkdir(path.dirname(snapshotPath), { recursive: true });
  const tmp = `${snapshotPath}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    await symlink(path.relative(path.dirname(snapshotPath), blobPath), tmp);
  } catch {
    await unlink(tmp).catch(() => {});
    await copyFile(blobPath, tmp);
  }
  await rename(tmp, snapshotPath);
}
