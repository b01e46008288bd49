import { InternVLError } from '../errors.js';

export interface StopPushResult {
  /** Text that is now certain to be output (possibly ''). */
  emit: string;
  /** A stop string was found: `emit` ends where it begins, and generation should end. */
  stopped: boolean;
}

/**
 * Cuts generated text at the first stop string, for streaming and whole-text output alike.
 *
 * `push` emits text as soon as it cannot be the start of a stop string and holds back a suffix that
 * might still become one. The match is the first stop string to be completed as the text grows
 * (the smallest end position; at the same end, the one that starts earliest), so the output does not
 * depend on how the text was split into chunks. The stop string itself is not output, as in OpenAI's
 * API. After a stop, `push` emits nothing more.
 */
export class StopStringMatcher {
  private readonly stops: string[];
  private readonly longestStop: number;
  private held = '';
  private matched: string | undefined;

  constructor(stops: readonly string[]) {
    for (const stop of stops) {
      if (typeof stop !== 'string' || stop.length === 0) {
        throw new InternVLError(
          'BAD_INPUT',
          `stop strings must be non-empty strings (got ${JSON.stringify(stop)})`,
        );
      }
    }
    this.stops = [...new Set(stops)];
    this.longestStop = this.stops.reduce((max, stop) => Math.max(max, stop.length), 0);
  }

  /** Whether a stop string has been found. */
  get stopped(): boolean {
    return this.matched !== undefined;
  }

  /** The stop string that ended the text, if any. */
  get matchedStop(): string | undefined {
    return this.matched;
  }

  push(text: string): StopPushResult {
    if (this.matched !== undefined) return { emit: '', stopped: true };
    if (this.stops.length === 0) return { emit: text, stopped: false };
    const buffer = this.held + text;
    // The held text holds no complete stop string, so a match must end inside the new text.
    let bestStart = -1;
    let bestEnd = Infinity;
    for (const stop of this.stops) {
      const start = buffer.indexOf(stop, Math.max(0, this.held.length - stop.length + 1));
      if (start < 0) continue;
      const end = start + stop.length;
      if (end < bestEnd || (end === bestEnd && start < bestStart)) {
        bestStart = start;
        bestEnd = end;
        this.matched = stop;
      }
    }
    if (bestStart >= 0) {
      this.held = '';
      return { emit: buffer.slice(0, bestStart), stopped: true };
    }
    const keep = this.partialMatchLength(buffer);
    this.held = buffer.slice(buffer.length - keep);
    return { emit: buffer.slice(0, buffer.length - keep), stopped: false };
  }

  /** Ends the text: returns what was held back as a possible stop-string start. */
  flush(): string {
    const rest = this.held;
    this.held = '';
    return rest;
  }

  /** Length of the longest suffix of `buffer` that is a proper prefix of a stop string. */
  private partialMatchLength(buffer: string): number {
    for (let length = Math.min(buffer.length, this.longestStop - 1); length > 0; length--) {
      const suffix = buffer.slice(buffer.length - length);
      if (this.stops.some((stop) => stop.length > length && stop.startsWith(suffix))) return length;
    }
    return 0;
  }
}

/** Whole-text form of {@link StopStringMatcher}: the text before the first stop string. */
export function applyStopStrings(text: string, stops: readonly string[]): { text: string; stopped: boolean } {
  const matcher = new StopStringMatcher(stops);
  const { emit, stopped } = matcher.push(text);
  return { text: emit + matcher.flush(), stopped };
}
