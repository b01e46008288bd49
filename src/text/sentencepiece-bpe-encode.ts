import { PieceType } from './sentencepiece-model.js';
import type { SentencePieceVocab } from './sentencepiece-vocab.js';

const utf8Encoder = new TextEncoder();

interface MergeCandidate {
  left: number;
  right: number;
  score: number;
  /** UTF-16 length of the merged piece: stale candidates no longer match it. */
  size: number;
}

/** Max-heap on score; equal scores pop the leftmost pair first. */
class MergeQueue {
  private readonly items: MergeCandidate[] = [];
  get size(): number {
    return this.items.length;
  }
  private before(a: MergeCandidate, b: MergeCandidate): boolean {
    return a.score > b.score || (a.score === b.score && a.left < b.left);
  }
  push(c: MergeCandidate): void {
    const items = this.items;
    items.push(c);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(items[i], items[parent])) break;
      [items[i], items[parent]] = [items[parent], items[i]];
      i = parent;
    }
  }
  pop(): MergeCandidate {
    const items = this.items;
    const top = items[0];
    const last = items.pop() as MergeCandidate;
    if (items.length > 0) {
      items[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < items.length && this.before(items[l], items[best])) best = l;
        if (r < items.length && this.before(items[r], items[best])) best = r;
        if (best === i) break;
        [items[i], items[best]] = [items[best], items[i]];
        i = best;
      }
    }
    return top;
  }
}

/**
 * Ids of already-normalised text by sentencepiece's `bpe::Model`: user-defined pieces stay whole,
 * the highest-scoring adjacent pair merges first, merges into UNUSED pieces are split back, and
 * pieces outside the vocabulary become byte pieces (with byte fallback) or one <unk> per run.
 */
export function encodeBpe(normalized: string, vocab: SentencePieceVocab, byteFallback: boolean): number[] {
  if (normalized.length === 0) return [];
  // Initial symbols: user-defined pieces (frozen) or single code points.
  const pieces: string[] = [];
  const frozen: boolean[] = [];
  for (let i = 0; i < normalized.length; ) {
    const match = vocab.userDefinedByFirst.get(normalized[i])?.find((p) => normalized.startsWith(p, i));
    if (match !== undefined) {
      pieces.push(match);
      frozen.push(true);
      i += match.length;
    } else {
      const cp = normalized.codePointAt(i) as number;
      const len = cp > 0xffff ? 2 : 1;
      pieces.push(normalized.slice(i, i + len));
      frozen.push(false);
      i += len;
    }
  }
  const n = pieces.length;
  const prev = new Int32Array(n);
  const next = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  // Merges that produced UNUSED pieces, to split them back afterwards.
  const unusedParts = new Map<string, [string, string]>();
  const queue = new MergeQueue();
  const consider = (left: number, right: number): void => {
    if (left < 0 || right < 0 || frozen[left] || frozen[right]) return;
    const merged = pieces[left] + pieces[right];
    const id = vocab.mergeable.get(merged);
    if (id === undefined) return;
    const entry = vocab.pieces[id];
    queue.push({ left, right, score: entry.score, size: merged.length });
    if (entry.type === PieceType.UNUSED) unusedParts.set(merged, [pieces[left], pieces[right]]);
  };
  for (let i = 1; i < n; i++) consider(i - 1, i);
  while (queue.size > 0) {
    const top = queue.pop();
    const l = pieces[top.left];
    const r = pieces[top.right];
    if (l.length === 0 || r.length === 0 || l.length + r.length !== top.size) continue;
    pieces[top.left] = l + r;
    pieces[top.right] = '';
    next[top.left] = next[top.right];
    if (next[top.right] >= 0) prev[next[top.right]] = top.left;
    consider(prev[top.left], top.left);
    consider(top.left, next[top.left]);
  }

  const ids: number[] = [];
  const emit = (piece: string): void => {
    const id = vocab.pieceToId(piece);
    if (id !== undefined && vocab.pieces[id].type === PieceType.UNUSED) {
      const parts = unusedParts.get(piece);
      if (parts) {
        emit(parts[0]);
        emit(parts[1]);
        return;
      }
    }
    if (id !== undefined && id !== vocab.unkId) {
      ids.push(id);
    } else if (byteFallback) {
      for (const b of utf8Encoder.encode(piece)) ids.push(vocab.byteIds[b]);
    } else if (ids.length === 0 || ids[ids.length - 1] !== vocab.unkId) {
      // Consecutive unknown pieces collapse into one <unk>, as sentencepiece does.
      ids.push(vocab.unkId);
    }
  };
  for (let i = 0; i !== -1; i = next[i]) emit(pieces[i]);
  return ids;
}
