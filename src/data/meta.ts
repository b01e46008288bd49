import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { z } from 'zod';
import { InternVLError } from '../errors.js';
import { countImagePlaceholders } from '../text/prompt.js';
import type { TrainingTurn } from '../text/training.js';
import {
  type ImageSize,
  MediaChecker,
  outsideRootProblem,
  resolveDataPath,
  URL_PATTERN,
} from './media-check.js';

export { resolveDataPath } from './media-check.js';

/** One dataset of a meta file (`shell/data/*.json`), paths resolved against the meta file's folder. */
export interface DatasetSpec {
  name: string;
  /** Position in the meta file; the official code seeds the dataset's shuffle with it. */
  index: number;
  root: string;
  annotation: string;
  dataAugment: boolean;
  repeatTime: number;
  maxDynamicPatch: number | undefined;
  length: number | undefined;
  /** The entry exactly as written in the meta file. */
  entry: Record<string, unknown>;
}

export interface MetaFile {
  file: string;
  datasets: DatasetSpec[];
}

export type SampleKind = 'image' | 'multi_image' | 'video' | 'text';

/** A validated annotation line. */
export interface AnnotationSample {
  dataset: string;
  /** The annotation file and the 1-based line number. */
  file: string;
  line: number;
  kind: SampleKind;
  /** Resolved image paths, in placeholder order (empty unless kind is image / multi_image). */
  images: string[];
  /** Each image's size from a complete decode; empty when files were not checked. */
  imageSizes: ImageSize[];
  /** Resolved video path (kind video). */
  video: string | undefined;
  conversations: TrainingTurn[];
  /** The line's original text, written unchanged to cleaned JSONL. */
  source: string;
}

/** A line that failed validation, reported as `file:line: message`. */
export interface DataIssue {
  dataset: string;
  file: string;
  line: number;
  message: string;
}

export const formatIssue = (issue: DataIssue): string => `${issue.file}:${issue.line}: ${issue.message}`;

const metaEntrySchema = z.looseObject({
  root: z.string({ error: 'expected a path string' }),
  annotation: z
    .string({ error: 'expected a path string' })
    .refine((a) => a.endsWith('.jsonl'), { error: 'must be a .jsonl file' }),
  data_augment: z.boolean({ error: 'expected true or false' }).default(false),
  repeat_time: z.number({ error: 'expected a number' }).positive({ error: 'must be > 0' }).default(1),
  max_dynamic_patch: z
    .number({ error: 'expected a positive integer' })
    .int({ error: 'expected a positive integer' })
    .positive({ error: 'expected a positive integer' })
    .optional(),
  length: z
    .number({ error: 'expected a non-negative integer' })
    .int({ error: 'expected a non-negative integer' })
    .nonnegative({ error: 'expected a non-negative integer' })
    .optional(),
});

const turnSchema = z.object({
  from: z.enum(['system', 'human', 'gpt'], { error: 'expected "system", "human" or "gpt"' }),
  value: z.string({ error: 'expected a string' }),
});

const lineSchema = z.looseObject({
  image: z
    .union([z.string(), z.array(z.string())], { error: 'expected a path or a list of paths' })
    .nullable()
    .optional(),
  video: z.string({ error: 'expected a path' }).nullable().optional(),
  conversations: z.array(turnSchema, { error: 'expected a list of turns' }),
});

function zodMessage(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const where = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('');
      return `${where.replace(/^\./, '') || '(line)'}: ${issue.message}`;
    })
    .join('; ');
}

/** Reads and validates a meta JSON file; relative `root`/`annotation` paths resolve against its folder. */
export async function loadMeta(file: string): Promise<MetaFile> {
  const metaPath = path.resolve(file);
  let text: string;
  try {
    text = await readFile(metaPath, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new InternVLError('NOT_FOUND', `meta file ${metaPath} does not exist`);
    throw new InternVLError('BAD_INPUT', `meta file ${metaPath}: ${(err as Error).message}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    // V8 says "at position N"; FILE:LINE:COLUMN is what an editor jumps to.
    const message = (err as Error).message;
    const at = /at position (\d+)/.exec(message);
    const before = at ? text.slice(0, Number(at[1])).split('\n') : undefined;
    const where = before ? `:${before.length}:${before[before.length - 1].length + 1}` : '';
    throw new InternVLError('BAD_INPUT', `${metaPath}${where}: invalid meta JSON (${message})`, {
      cause: err,
    });
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new InternVLError('BAD_INPUT', `meta file ${metaPath}: expected an object of dataset entries`);
  }
  const dir = path.dirname(metaPath);
  const datasets = Object.entries(json as Record<string, unknown>).map(([name, entry], index) => {
    const parsed = metaEntrySchema.safeParse(entry);
    if (!parsed.success) {
      throw new InternVLError(
        'BAD_INPUT',
        `meta file ${metaPath}: dataset "${name}": ${zodMessage(parsed.error)}`,
      );
    }
    const e = parsed.data;
    return {
      name,
      index,
      root: URL_PATTERN.test(e.root) ? e.root : path.resolve(dir, e.root),
      annotation: path.resolve(dir, e.annotation),
      dataAugment: e.data_augment,
      repeatTime: e.repeat_time,
      maxDynamicPatch: e.max_dynamic_patch,
      length: e.length,
      entry: entry as Record<string, unknown>,
    } satisfies DatasetSpec;
  });
  if (datasets.length === 0) throw new InternVLError('BAD_INPUT', `meta file ${metaPath} lists no datasets`);
  return { file: metaPath, datasets };
}

function humanImagePlaceholders(conversations: readonly TrainingTurn[]): number {
  return conversations
    .filter((turn) => turn.from === 'human')
    .reduce((sum, turn) => sum + countImagePlaceholders(turn.value), 0);
}

/** Structure checks on a parsed line; returns a problem description or undefined. */
function conversationProblem(conversations: readonly TrainingTurn[]): string | undefined {
  const turns = conversations[0]?.from === 'system' ? conversations.slice(1) : conversations;
  if (turns.length === 0) return 'conversations has no human or gpt turn';
  const offset = turns === conversations ? 0 : 1;
  for (const [i, turn] of turns.entries()) {
    const expected = i % 2 === 0 ? 'human' : 'gpt';
    const at = i + offset;
    if (turn.from !== expected) {
      return `conversations[${at}] is from "${turn.from}", expected "${expected}" (turns alternate human/gpt)`;
    }
    if (turn.from === 'gpt' && turn.value.trim() === '') return `conversations[${at}] has an empty answer`;
  }
  if (turns[turns.length - 1].from !== 'gpt') return 'the last turn is a question without an answer';
  return undefined;
}

async function isFile(file: string): Promise<boolean> {
  try {
    return (await stat(file)).isFile();
  } catch {
    return false;
  }
}

export interface LineCheckOptions {
  /** Check the media: every image decoded completely, videos present (default true). */
  checkFiles?: boolean;
  /** Accept image/video paths that leave the dataset root (`../…`, absolute); refused by default. */
  allowOutsideRoot?: boolean;
  /** Shares decoded-image results across lines; a fresh one per call when absent. */
  media?: MediaChecker;
}

/**
 * Validates one annotation line: JSON, schema, alternating turns with non-empty answers, `<image>`
 * placeholders matching the images (a single image may omit it; it is then prepended at training time),
 * media paths inside the dataset root, every image decodable to the end and every video present.
 * Returns the sample or a problem description.
 */
export async function parseAnnotationLine(
  text: string,
  dataset: DatasetSpec,
  line: number,
  options: LineCheckOptions = {},
): Promise<AnnotationSample | string> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return `invalid JSON (${(err as Error).message})`;
  }
  const parsed = lineSchema.safeParse(json);
  if (!parsed.success) return zodMessage(parsed.error);
  const { image, video, conversations } = parsed.data;
  const problem = conversationProblem(conversations);
  if (problem) return problem;

  const imageList = image === null || image === undefined ? [] : typeof image === 'string' ? [image] : image;
  let kind: SampleKind;
  if (imageList.length > 0) kind = typeof image === 'string' ? 'image' : 'multi_image';
  else if (video) kind = 'video';
  else kind = 'text';

  const placeholders = humanImagePlaceholders(conversations);
  if (kind === 'image' && placeholders > 1) {
    return `has 1 image but ${placeholders} <image> placeholders in its questions`;
  }
  if (kind === 'multi_image' && placeholders !== imageList.length) {
    return `has ${imageList.length} images but ${placeholders} <image> placeholders in its questions`;
  }
  if (kind === 'video' && placeholders > 0) return 'a video sample must not contain <image> placeholders';

  const writtenVideo = kind === 'video' && video ? video : undefined;
  if (!options.allowOutsideRoot) {
    for (const file of imageList) {
      const outside = outsideRootProblem(dataset.root, file, 'image');
      if (outside) return outside;
    }
    const outside = writtenVideo && outsideRootProblem(dataset.root, writtenVideo, 'video');
    if (outside) return outside;
  }
  const images = imageList.map((p) => resolveDataPath(dataset.root, p));
  const videoPath = writtenVideo === undefined ? undefined : resolveDataPath(dataset.root, writtenVideo);
  const imageSizes: ImageSize[] = [];
  if (options.checkFiles !== false) {
    const media = options.media ?? new MediaChecker();
    for (const [i, file] of images.entries()) {
      const size = await media.image(file, imageList[i]);
      if (typeof size === 'string') return size;
      imageSizes.push(size);
    }
    // A video may be a file or a folder of frames.
    const videoProblem = videoPath && (await media.video(videoPath, writtenVideo as string));
    if (videoProblem) return videoProblem;
  }
  return {
    dataset: dataset.name,
    file: dataset.annotation,
    line,
    kind,
    images,
    imageSizes,
    video: videoPath,
    conversations: conversations.map((turn) => ({ from: turn.from, value: turn.value })),
    source: text,
  };
}

export interface ReadDatasetOptions extends Omit<LineCheckOptions, 'media'> {
  /** Throw on the first bad line instead of reporting it (`--strict`). */
  strict?: boolean;
}

export interface DatasetLines {
  samples: AnnotationSample[];
  issues: DataIssue[];
}

/**
 * Reads a dataset's JSONL annotation, streaming it line by line. Blank lines are not samples; every other
 * line is a sample or an issue, or with `strict` the first issue is thrown. An annotation file that cannot
 * be read is an error naming it. Lines are checked one at a time: libvips keeps one error buffer per
 * process, and images decoded concurrently lose each other's error text ("Unknown error"), while every
 * bad image must be reported with its reason.
 */
export async function readDataset(
  dataset: DatasetSpec,
  options: ReadDatasetOptions = {},
): Promise<DatasetLines> {
  if (!(await isFile(dataset.annotation))) {
    throw new InternVLError(
      'NOT_FOUND',
      `dataset "${dataset.name}": annotation ${dataset.annotation} not found`,
    );
  }
  const samples: AnnotationSample[] = [];
  const issues: DataIssue[] = [];
  const lineOptions: LineCheckOptions = { ...options, media: new MediaChecker() };
  const input = createReadStream(dataset.annotation, 'utf8');
  const reader = createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY });
  let line = 0;
  try {
    for await (const text of reader) {
      line++;
      if (text.trim() === '') continue;
      const result = await parseAnnotationLine(text, dataset, line, lineOptions);
      if (typeof result !== 'string') {
        samples.push(result);
        continue;
      }
      const issue = { dataset: dataset.name, file: dataset.annotation, line, message: result };
      if (options.strict) throw new InternVLError('BAD_INPUT', formatIssue(issue));
      issues.push(issue);
    }
  } catch (err) {
    // Only errors of the file itself (EACCES, EIO…) are about reading the annotation.
    if (err instanceof InternVLError || !(err instanceof Error) || !('syscall' in err)) throw err;
    throw new InternVLError(
      'BAD_INPUT',
      `dataset "${dataset.name}": cannot read annotation ${dataset.annotation} after line ${line} (${err.message})`,
      { cause: err },
    );
  } finally {
    reader.close();
    input.destroy();
  }
  return { samples, issues };
}
