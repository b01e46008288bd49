import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { InternVLError } from '../errors.js';
import type { TrainingTurn } from '../text/training.js';
import { conversationForJudge, type JudgeAspect, type JudgeClient, mapWithConcurrency } from './judge.js';
import { type AnnotationSample, type DataIssue, type MetaFile, readDataset } from './meta.js';

/**
 * `calculate_ngram_repetition` (dataset.py): whitespace-split words; the number of distinct n-grams that occur more
 * than once over the total number of n-grams; 0 when the text has fewer than n words.
 */
export function ngramRepetitionRatio(text: string, n: number): number {
  const words = text.split(/\s+/).filter((w) => w !== '');
  const total = words.length - n + 1;
  if (total <= 0) return 0;
  const counts = new Map<string, number>();
  for (let i = 0; i < total; i++) {
    const gram = words.slice(i, i + n).join('\u0000');
    counts.set(gram, (counts.get(gram) ?? 0) + 1);
  }
  let repeated = 0;
  for (const count of counts.values()) if (count > 1) repeated++;
  return repeated / total;
}

export interface RuleOptions {
  /** n of the n-gram check and the ratio above which an answer is repetitive (official: 10 and 0.4). */
  ngramN?: number;
  ngramThreshold?: number;
  /** A sentence longer than this many characters is abnormal (default 2000). */
  maxSentenceChars?: number;
  /** Answers of at least `minLinesForDuplicates` non-empty lines with more than this share of repeated lines. */
  maxDuplicateLineRatio?: number;
  minLinesForDuplicates?: number;
  /** A character repeated more than this many times in a row (default 64), e.g. "!!!!…" or "=====…". */
  maxCharRun?: number;
  /** Images whose shorter side is below this many pixels (default 28), or more elongated than maxAspectRatio. */
  minImageSide?: number;
  maxAspectRatio?: number;
}

export type FilterRule =
  | 'invalid'
  | 'ngram-repetition'
  | 'long-sentence'
  | 'duplicate-lines'
  | 'char-run'
  | 'image-anomaly'
  | 'llm-quality'
  | 'llm-repetition';

export interface DropReason {
  rule: FilterRule;
  detail: string;
}

/** Heuristic text rules over the answers (gpt turns) of a conversation. */
export function textRuleViolations(
  conversations: readonly TrainingTurn[],
  options: RuleOptions = {},
): DropReason[] {
  const n = options.ngramN ?? 10;
  const ngramThreshold = options.ngramThreshold ?? 0.4;
  const maxSentence = options.maxSentenceChars ?? 2000;
  const maxDuplicateRatio = options.maxDuplicateLineRatio ?? 0.5;
  const minLines = options.minLinesForDuplicates ?? 4;
  const maxRun = options.maxCharRun ?? 64;
  const runPattern = new RegExp(`(\\S)\\1{${maxRun},}`, 'u');
  const reasons: DropReason[] = [];
  conversations.forEach((turn, i) => {
    if (turn.from !== 'gpt') return;
    const ratio = ngramRepetitionRatio(turn.value, n);
    if (ratio > ngramThreshold) {
      reasons.push({
        rule: 'ngram-repetition',
        detail: `conversations[${i}]: ${n}-gram repetition ${ratio.toFixed(3)} > ${ngramThreshold}`,
      });
    }
    const longest = turn.value
      .split(/(?<=[.!?。！？])\s+|\n+/u)
      .reduce((max, sentence) => Math.max(max, sentence.trim().length), 0);
    if (longest > maxSentence) {
      reasons.push({
        rule: 'long-sentence',
        detail: `conversations[${i}]: a sentence of ${longest} characters (limit ${maxSentence})`,
      });
    }
    const lines = turn.value
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '');
    if (lines.length >= minLines) {
      const duplicates = lines.length - new Set(lines).size;
      if (duplicates / lines.length > maxDuplicateRatio) {
        reasons.push({
          rule: 'duplicate-lines',
          detail: `conversations[${i}]: ${duplicates} of ${lines.length} lines repeat an earlier line`,
        });
      }
    }
    const run = runPattern.exec(turn.value);
    if (run) {
      reasons.push({
        rule: 'char-run',
        detail: `conversations[${i}]: '${run[1]}' repeated more than ${maxRun} times in a row`,
      });
    }
  });
  return reasons;
}

/** An image of a sample with its size from a complete decode (`AnnotationSample.imageSizes`). */
export interface SizedImage {
  file: string;
  width: number;
  height: number;
}

/**
 * Visual anomaly rules: tiny or extremely elongated images. Unreadable and truncated images never get
 * here: reading the annotation decodes every image and reports those lines as invalid.
 */
export function imageRuleViolations(images: readonly SizedImage[], options: RuleOptions = {}): DropReason[] {
  const minSide = options.minImageSide ?? 28;
  const maxAspect = options.maxAspectRatio ?? 50;
  const reasons: DropReason[] = [];
  for (const { file, width, height } of images) {
    if (Math.min(width, height) < minSide) {
      reasons.push({
        rule: 'image-anomaly',
        detail: `${file} is ${width}×${height}, a side below ${minSide} px`,
      });
    } else if (Math.max(width / height, height / width) > maxAspect) {
      reasons.push({
        rule: 'image-anomaly',
        detail: `${file} is ${width}×${height}, aspect ratio above ${maxAspect}`,
      });
    }
  }
  return reasons;
}

/** One judged sample in the progress file. */
export interface ProgressRecord {
  key: string;
  dataset: string;
  line: number;
  scores: Partial<Record<JudgeAspect, number>>;
}

/** Identifies a sample across runs: its dataset, line number and exact text. */
export function sampleKey(sample: AnnotationSample): string {
  return createHash('sha256')
    .update(`${sample.dataset}\u0000${sample.line}\u0000${sample.source}`)
    .digest('hex')
    .slice(0, 32);
}

/**
 * Append-only JSONL of judged samples. Each record is one write of one line, so a killed process leaves at worst
 * a torn last line, which the next run ignores (and re-scores that sample).
 */
export class ProgressLog {
  readonly file: string;
  readonly done: Map<string, ProgressRecord>;
  #handle: Awaited<ReturnType<typeof open>> | undefined;

  private constructor(file: string, done: Map<string, ProgressRecord>) {
    this.file = file;
    this.done = done;
  }

  static async open(file: string): Promise<ProgressLog> {
    const done = new Map<string, ProgressRecord>();
    let text = '';
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      try {
        const record = JSON.parse(line) as ProgressRecord;
        if (typeof record.key === 'string' && record.scores && typeof record.scores === 'object') {
          done.set(record.key, record);
        }
      } catch {
        // A torn line from an interrupted write: that sample is judged again.
      }
    }
    const log = new ProgressLog(file, done);
    log.#handle = await open(file, 'a');
    // Start on a fresh line if the previous run was cut off mid-record.
    if (text !== '' && !text.endsWith('\n')) await log.#handle.write('\n');
    return log;
  }

  async append(record: ProgressRecord): Promise<void> {
    if (!this.#handle) throw new InternVLError('INTERNAL', `progress log ${this.file} is closed`);
    await this.#handle.write(`${JSON.stringify(record)}\n`);
    this.done.set(record.key, record);
  }

  async close(): Promise<void> {
    await this.#handle?.close();
    this.#handle = undefined;
  }
}

export interface FilterOptions {
  outDir: string;
  judge?: JudgeClient;
  /** Drop text samples whose LLM quality score is below this (default 7). */
  minScore?: number;
  /** Drop samples whose LLM repetition score is below this (default 3). */
  minRepetitionScore?: number;
  concurrency?: number;
  rules?: RuleOptions;
  strict?: boolean;
  /** Accept media paths outside a dataset's root (refused as invalid lines by default). */
  allowOutsideRoot?: boolean;
  /** Called with each dataset's invalid lines as soon as it has been read. */
  onIssues?: (issues: readonly DataIssue[]) => void;
  /** Called after each judged sample. */
  onProgress?: (done: number, total: number) => void;
}

export interface DroppedSample {
  dataset: string;
  file: string;
  line: number;
  reasons: DropReason[];
}

export interface DatasetFilterStats {
  lines: number;
  invalid: number;
  kept: number;
  dropped: number;
  reasons: Partial<Record<FilterRule, number>>;
  output: string;
}

export interface FilterReport {
  meta: string;
  outMeta: string;
  judged: boolean;
  datasets: Record<string, DatasetFilterStats>;
  dropped: DroppedSample[];
}

function outputName(name: string, used: Set<string>): string {
  const base = name.replace(/[^\w.-]+/g, '_') || 'dataset';
  let candidate = `${base}.jsonl`;
  for (let i = 2; used.has(candidate); i++) candidate = `${base}_${i}.jsonl`;
  used.add(candidate);
  return candidate;
}

async function writeAtomic(file: string, text: string): Promise<void> {
  const temp = `${file}.${process.pid}.tmp`;
  await writeFile(temp, text);
  await rename(temp, file);
}

/** Which LLM checks a sample gets: text-only data both, multimodal data repetition only (report §9). */
const judgeAspects = (sample: AnnotationSample): JudgeAspect[] =>
  sample.kind === 'text' ? ['quality', 'repetition'] : ['repetition'];

/**
 * The filtering pipeline: validation, heuristic rules and n-gram repetition offline, then (with a judge) LLM
 * quality and repetition scores, resumable through `<outDir>/progress.jsonl`. Writes the kept lines of each
 * dataset unchanged as `<outDir>/<name>.jsonl`, a meta file `<outDir>/meta.json` in the official format pointing
 * at them, and `<outDir>/report.json` listing every dropped line and why.
 */
export async function filterMeta(meta: MetaFile, options: FilterOptions): Promise<FilterReport> {
  const minScore = options.minScore ?? 7;
  const minRepetition = options.minRepetitionScore ?? 3;
  const outDir = path.resolve(options.outDir);
  await mkdir(outDir, { recursive: true });

  interface Candidate {
    sample: AnnotationSample;
    reasons: DropReason[];
  }
  const perDataset: { issues: DataIssue[]; candidates: Candidate[] }[] = [];
  for (const dataset of meta.datasets) {
    const { samples, issues } = await readDataset(dataset, {
      strict: options.strict,
      allowOutsideRoot: options.allowOutsideRoot,
    });
    options.onIssues?.(issues);
    const candidates: Candidate[] = [];
    for (const sample of samples) {
      const reasons = textRuleViolations(sample.conversations, options.rules);
      const sized = sample.images.map((file, i) => ({ file, ...sample.imageSizes[i] }));
      reasons.push(...imageRuleViolations(sized, options.rules));
      candidates.push({ sample, reasons });
    }
    perDataset.push({ issues, candidates });
  }

  const toJudge = options.judge
    ? perDataset.flatMap((d) => d.candidates.filter((c) => c.reasons.length === 0))
    : [];
  const progress = options.judge ? await ProgressLog.open(path.join(outDir, 'progress.jsonl')) : undefined;
  try {
    if (options.judge && progress) {
      const judge = options.judge;
      const pending = toJudge.filter((c) => !progress.done.has(sampleKey(c.sample)));
      let finished = toJudge.length - pending.length;
      options.onProgress?.(finished, toJudge.length);
      await mapWithConcurrency(pending, options.concurrency ?? 4, async ({ sample }) => {
        const text = conversationForJudge(sample.conversations);
        const scores: Partial<Record<JudgeAspect, number>> = {};
        for (const aspect of judgeAspects(sample)) scores[aspect] = await judge.score(aspect, text);
        await progress.append({ key: sampleKey(sample), dataset: sample.dataset, line: sample.line, scores });
        options.onProgress?.(++finished, toJudge.length);
      });
    }
    for (const candidate of toJudge) {
      const scores = progress?.done.get(sampleKey(candidate.sample))?.scores ?? {};
      if (scores.quality !== undefined && scores.quality < minScore) {
        candidate.reasons.push({
          rule: 'llm-quality',
          detail: `quality score ${scores.quality} < ${minScore}`,
        });
      }
      if (scores.repetition !== undefined && scores.repetition < minRepetition) {
        candidate.reasons.push({
          rule: 'llm-repetition',
          detail: `repetition score ${scores.repetition} < ${minRepetition}`,
        });
      }
    }
  } finally {
    await progress?.close();
  }

  const report: FilterReport = {
    meta: meta.file,
    outMeta: path.join(outDir, 'meta.json'),
    judged: options.judge !== undefined,
    datasets: {},
    dropped: [],
  };
  const outMeta: Record<string, Record<string, unknown>> = {};
  const used = new Set<string>(['meta.json', 'report.json', 'progress.jsonl']);
  for (const [d, dataset] of meta.datasets.entries()) {
    const { issues, candidates } = perDataset[d];
    const stats: DatasetFilterStats = {
      lines: issues.length + candidates.length,
      invalid: issues.length,
      kept: 0,
      dropped: 0,
      reasons: {},
      output: path.join(outDir, outputName(dataset.name, used)),
    };
    const dropped: DroppedSample[] = issues.map((issue) => ({
      dataset: dataset.name,
      file: issue.file,
      line: issue.line,
      reasons: [{ rule: 'invalid', detail: issue.message }],
    }));
    const kept: string[] = [];
    for (const { sample, reasons } of candidates) {
      if (reasons.length === 0) kept.push(sample.source);
      else dropped.push({ dataset: dataset.name, file: sample.file, line: sample.line, reasons });
    }
    dropped.sort((a, b) => a.line - b.line);
    for (const drop of dropped) {
      for (const rule of new Set(drop.reasons.map((r) => r.rule)))
        stats.reasons[rule] = (stats.reasons[rule] ?? 0) + 1;
    }
    stats.kept = kept.length;
    stats.dropped = dropped.length;
    report.datasets[dataset.name] = stats;
    report.dropped.push(...dropped);
    await writeAtomic(stats.output, kept.map((line) => `${line}\n`).join(''));
    outMeta[dataset.name] = {
      ...dataset.entry,
      root: dataset.root,
      annotation: stats.output,
      length: kept.length,
    };
  }
  await writeAtomic(report.outMeta, `${JSON.stringify(outMeta, null, 2)}\n`);
  await writeAtomic(path.join(outDir, 'report.json'), `${JSON.stringify(report, null, 2)}\n`);
  return report;
}
