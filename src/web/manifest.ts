/**
 * The folder `internvl convert --target web` writes and the browser loader reads by URL: the model's
 * config and tokenizer files, one folder per engine graph (model.onnx + weights.bin external data)
 * and the token-embedding table as raw little-endian values, listed in internvl-web.json.
 */
import { z } from 'zod';
import { InternVLError } from '../errors.js';

export const WEB_MANIFEST_FILE = 'internvl-web.json';
export const WEB_FORMAT_VERSION = 1;

/** Model files copied beside the graphs when the checkpoint has them. */
export const WEB_MODEL_FILES = [
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer.model',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
] as const;

const fileEntry = z.object({ path: z.string().min(1), bytes: z.number().int().nonnegative() });

const graphEntry = z.object({
  dtype: z.string(),
  model: fileEntry,
  /** External-data files: `name` is the location stored in the graph, `path` the file beside the manifest. */
  externalData: z.array(fileEntry.extend({ name: z.string().min(1) })),
});

export const webManifestSchema = z.object({
  format: z.literal('internvl-web'),
  version: z.literal(WEB_FORMAT_VERSION),
  /** The checkpoint folder's name, for display. */
  name: z.string(),
  files: z.array(fileEntry),
  graphs: z.object({ vision: graphEntry, decoder: graphEntry, 'decoder-prefill': graphEntry.optional() }),
  embeddings: fileEntry.extend({
    dtype: z.enum(['bf16', 'fp32']),
    shape: z.tuple([z.number().int().positive(), z.number().int().positive()]),
  }),
});

export type WebManifest = z.infer<typeof webManifestSchema>;
export type WebGraphEntry = z.infer<typeof graphEntry>;
export type WebFileEntry = z.infer<typeof fileEntry>;

export function parseWebManifest(json: unknown, source = WEB_MANIFEST_FILE): WebManifest {
  const r = webManifestSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new InternVLError(
      'BAD_CONFIG',
      `${source}: not an internvl-web manifest (version ${WEB_FORMAT_VERSION}): ${issue.path.join('.') || '(root)'}: ${issue.message}`,
    );
  }
  return r.data;
}

/** Every file the manifest lists, for download size and progress. */
export function manifestFiles(manifest: WebManifest): WebFileEntry[] {
  const graphs = Object.values(manifest.graphs).filter((g): g is WebGraphEntry => g !== undefined);
  return [...manifest.files, ...graphs.flatMap((g) => [g.model, ...g.externalData]), manifest.embeddings];
}
