/** Splits `text` at occurrences of `tokens` (earliest, then longest match), honouring lstrip/rstrip. */
export class AddedTokenSplitter {
  private readonly byFirst = new Map<string, string[]>();

  constructor(
    tokens: Iterable<string>,
    private readonly strip: ReadonlyMap<string, { lstrip: boolean; rstrip: boolean }>,
  ) {
    for (const token of tokens) {
      if (token.length === 0) continue;
      const list = this.byFirst.get(token[0]) ?? [];
      if (!list.includes(token)) list.push(token);
      this.byFirst.set(token[0], list);
    }
    for (const list of this.byFirst.values()) list.sort((a, b) => b.length - a.length);
  }

  split(text: string): Array<{ token: string } | { text: string }> {
    const parts: Array<{ token: string } | { text: string }> = [];
    let chunkStart = 0;
    let rstripNext = false;
    const pushText = (end: number): void => {
      let chunk = text.slice(chunkStart, end);
      if (rstripNext) chunk = chunk.trimStart();
      rstripNext = false;
      if (chunk.length > 0) parts.push({ text: chunk });
    };
    for (let i = 0; i < text.length; ) {
      const token = this.byFirst.get(text[i])?.find((t) => text.startsWith(t, i));
      if (token === undefined) {
        i++;
        continue;
      }
      const strip = this.strip.get(token);
      let end = i;
      if (strip?.lstrip) while (end > chunkStart && /\s/.test(text[end - 1])) end--;
      pushText(end);
      parts.push({ token });
      i += token.length;
      chunkStart = i;
      rstripNext = strip?.rstrip === true;
    }
    pushText(text.length);
    return parts;
  }
}
