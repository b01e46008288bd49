/** Progress of one file download. `total` is undefined when the server did not say. */
export interface DownloadProgress {
  file: string;
  downloaded: number;
  total: number | undefined;
}

export type ProgressCallback = (progress: DownloadProgress) => void;

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

/** One line of text for a progress state, `width` columns for the bar. */
export function formatProgressLine(p: DownloadProgress, width = 24): string {
  if (p.total === undefined || p.total <= 0) return `${p.file} ${formatBytes(p.downloaded)}`;
  const fraction = Math.min(1, p.downloaded / p.total);
  const filled = Math.round(fraction * width);
  const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
  const percent = `${Math.floor(fraction * 100)}`.padStart(3);
  return `${p.file} ${percent}% [${bar}] ${formatBytes(p.downloaded)} / ${formatBytes(p.total)}`;
}

interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(text: string): unknown;
}

/**
 * A progress callback that redraws one line on `stream` (stderr by default), at most every
 * `intervalMs`, and ends the line when a file completes. Draws nothing when the stream is not a TTY.
 */
export function createProgressBar(
  stream: ProgressStream = process.stderr,
  intervalMs = 100,
): ProgressCallback {
  let lastDraw = 0;
  let lastFile: string | undefined;
  return (p) => {
    if (!stream.isTTY) return;
    const done = p.total !== undefined && p.downloaded >= p.total;
    const now = Date.now();
    if (!done && p.file === lastFile && now - lastDraw < intervalMs) return;
    if (lastFile !== undefined && p.file !== lastFile) stream.write('\n');
    lastDraw = now;
    lastFile = p.file;
    const columns = stream.columns ?? 80;
    stream.write(`\r${formatProgressLine(p).slice(0, Math.max(10, columns - 1))}\x1b[K`);
    if (done) {
      stream.write('\n');
      lastFile = undefined;
    }
  };
}
