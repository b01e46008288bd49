/**
 * `internvl convert --target web`: the engine graphs plus everything the browser loader needs, in a
 * folder that any static file server can serve (see src/web/manifest.ts for the layout).
 */
import { copyFile, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { checkpointWeights } from '../engine/core.js';
import { buildGraphDir } from '../engine/graph-cache.js';
import { type PrecisionOptions, planEngineGraphs, resolvePrecision } from '../engine/graph-plan.js';
import { InternVLError } from '../errors.js';
import { Checkpoint } from '../io/safetensors.js';
import { loadModelConfig } from '../models/model-config.js';
import { decoderDimsFromConfig, embeddingTensorName } from '../models/registry.js';
import {
  WEB_FORMAT_VERSION,
  WEB_MANIFEST_FILE,
  WEB_MODEL_FILES,
  type WebFileEntry,
  type WebGraphEntry,
  type WebManifest,
} from '../web/manifest.js';

const EMBEDDINGS_FILE = 'embeddings.bin';

async function fileEntry(outDir: string, relative: string): Promise<WebFileEntry> {
  return { path: relative, bytes: (await stat(path.join(outDir, relative))).size };
}

async function exists(file: string): Promise<boolean> {
  try {
    return (await stat(file)).isFile();
  } catch {
    return false;
  }
}

/** Writes the web model folder `outDir` for the checkpoint `modelDir`; returns its manifest. */
export async function convertModelForWeb(
  modelDir: string,
  outDir: string,
  options: PrecisionOptions = {},
): Promise<WebManifest> {
  // The browser's CPU is unknown here: int8 weights default to U8U8, exact on every kernel.
  const config = await loadModelConfig(modelDir);
  const precision = await resolvePrecision({ ...options, int8Kernel: options.int8Kernel ?? 'u8u8' }, config);
  const checkpoint = await Checkpoint.open(modelDir);
  try {
    await mkdir(outDir, { recursive: true });
    const weights = checkpointWeights(checkpoint, config);
    const files: WebFileEntry[] = [];
    for (const name of WEB_MODEL_FILES) {
      if (!(await exists(path.join(modelDir, name)))) continue;
      await copyFile(path.join(modelDir, name), path.join(outDir, name));
      files.push(await fileEntry(outDir, name));
    }
    const graphs: Record<string, WebGraphEntry> = {};
    for (const planned of planEngineGraphs(config, checkpoint, weights, precision)) {
      await buildGraphDir(planned.build, path.join(outDir, planned.role));
      graphs[planned.role] = {
        dtype: planned.dtype,
        model: await fileEntry(outDir, `${planned.role}/model.onnx`),
        externalData: [{ name: 'weights.bin', ...(await fileEntry(outDir, `${planned.role}/weights.bin`)) }],
      };
    }
    const dims = decoderDimsFromConfig(config);
    const embeddingName = embeddingTensorName(dims);
    const bf16 = await weights.bfloat16?.(embeddingName);
    const table = bf16 ?? (await weights.float32(embeddingName));
    if (table.length % dims.hiddenSize !== 0) {
      throw new InternVLError(
        'BAD_CHECKPOINT',
        `${modelDir}: ${embeddingName} holds ${table.length} values, not rows of ${dims.hiddenSize}`,
      );
    }
    await rm(path.join(outDir, EMBEDDINGS_FILE), { force: true });
    await writeFile(
      path.join(outDir, EMBEDDINGS_FILE),
      new Uint8Array(table.buffer, table.byteOffset, table.byteLength),
    );
    const manifest: WebManifest = {
      format: 'internvl-web',
      version: WEB_FORMAT_VERSION,
      name: path.basename(path.resolve(modelDir)),
      files,
      graphs: {
        vision: graphs.vision,
        decoder: graphs.decoder,
        ...(graphs['decoder-prefill'] ? { 'decoder-prefill': graphs['decoder-prefill'] } : {}),
      },
      embeddings: {
        ...(await fileEntry(outDir, EMBEDDINGS_FILE)),
        dtype: bf16 ? 'bf16' : 'fp32',
        shape: [table.length / dims.hiddenSize, dims.hiddenSize],
      },
    };
    await writeFile(path.join(outDir, WEB_MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    return manifest;
  } finally {
    await checkpoint.close();
  }
}
