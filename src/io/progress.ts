/** Progress of one file download. `total` is undefined when the server did not say. */
export interface DownloadProgress {
  file: string;
  downloaded: number;
  total: number | undefined;
}

export type ProgressCallback = (progress: DownloadProgress) => void;

/** One step of a long task: `done` of `total` units (`bytes` formats them as sizes). */
export interface TaskProgress {
  label: string;
  done: number;
  total: number | undefined;
  bytes?: boolean;
}

/** 1536 -> "1.5 KiB". */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** One line of text for a task's progress, `width` columns for the bar. */
export function formatTaskLine(p: TaskProgress, width = 24): string {
  const amount = (n: number) => (p.bytes ? formatBytes(n) : String(n));
  if (p.total === undefined || p.total <= 0) return `${p.label} ${amount(p.done)}`;
  const fraction = Math.min(1, p.done / p.total);
  const filled = Math.round(fraction * width);
  const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
  const percent = `${Math.floor(fraction * 100)}`.padStart(3);
  return `${p.label} ${percent}% [${bar}] ${amount(p.done)} / ${amount(p.total)}`;
}

/** One line of text for a download's progress. */
export function formatProgressLine(p: DownloadProgress, width = 24): string {
  return formatTaskLine({ label: p.file, done: p.downloaded, total: p.total, bytes: true }, width);
}

interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(text: string): unknown;
}

/**
 * A progress callback that redraws one line on `stream` (stderr by default), at most every
 * `intervalMs`, and ends the line when a task completes. Draws nothing when the stream is not a TTY.
 */
export function createTaskProgress(
  stream: ProgressStream = process.stderr,
  intervalMs = 100,
): (progress: TaskProgress) => void {
  let lastDraw = 0;
  let lastLabel: string | undefined;
  return (p) => {
    if (!stream.isTTY) return;
    const done = p.total !== undefined && p.done >= p.total;
    const now = Date.now();
    if (!done && p.label === lastLabel && now - lastDraw < intervalMs) return;
    if (lastLabel !== undefined && p.label !== lastLabel) stream.write('\n');
    lastDraw = now;
    lastLabel = p.label;
    const columns = stream.columns ?? 80;
    stream.write(`\r${formatTaskLine(p).slice(0, Math.max(10, columns - 1))}\x1b[K`);
    if (done) {
      stream.write('\n');
      lastLabel = undefined;
    }
  };
}

/** A download progress callback drawing on `stream` (see createTaskProgress). */
export function createProgressBar(
  stream: ProgressStream = process.stderr,
  intervalMs = 100,
): ProgressCallback {
  const draw = createTaskProgress(stream, intervalMs);
  return (p) => draw({ label: p.file, done: p.downloaded, total: p.total, bytes: true });
}

/**
 * A task progress callback for logs and pipes: one plain line (no bar, no carriage return) when a
 * task starts, each time it passes another quarter, and when it completes; at most 5 lines a task.
 */
export function createTaskLines(stream: ProgressStream = process.stderr): (progress: TaskProgress) => void {
  let label: string | undefined;
  let lastQuarter = -1;
  return (p) => {
    if (p.label !== label) {
      label = p.label;
      lastQuarter = -1;
    }
    const total = p.total !== undefined && p.total > 0 ? p.total : undefined;
    const quarter =
      total === undefined ? Math.max(lastQuarter, 0) : Math.min(4, Math.floor((4 * p.done) / total));
    if (quarter <= lastQuarter) return;
    lastQuarter = quarter;
    stream.write(`${formatTaskLine(p, 0).replace(' [] ', ' ')}\n`);
  };
}

/** A bar redrawn in place on a terminal, plain lines otherwise (createTaskProgress, createTaskLines). */
export function createAnyTaskProgress(
  stream: ProgressStream = process.stderr,
): (progress: TaskProgress) => void {
  return stream.isTTY ? createTaskProgress(stream) : createTaskLines(stream);
}

/** Download progress as a bar on a terminal, plain lines otherwise. */
export function createDownloadProgress(stream: ProgressStream = process.stderr): ProgressCallback {
  const draw = createAnyTaskProgress(stream);
  return (p) => draw({ label: p.file, done: p.downloaded, total: p.total, bytes: true });
}
