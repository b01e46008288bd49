/**
 * What constrained decoding needs from a grammar engine, without naming one: the Generator (which also
 * runs in browsers) sees only these types; `engine/grammar.ts` implements them with XGrammar in Node.
 */

/** The shape generated text must have. */
export type ResponseFormat =
  /** Any JSON object. */
  | { type: 'json_object' }
  /**
   * JSON valid for `jsonSchema`. `strict` (default true) also forbids properties and items that the
   * schema does not list (XGrammar's strict mode); false follows JSON Schema's defaults.
   */
  | { type: 'json_schema'; jsonSchema: Record<string, unknown>; strict?: boolean }
  /** Text matching the regular expression, whole. */
  | { type: 'regex'; pattern: string }
  /** Text of the EBNF grammar's `root` rule (XGrammar's EBNF dialect). */
  | { type: 'grammar'; ebnf: string }
  /**
   * An XGrammar structural tag (its `format` object: `tag`, `triggered_tags`, `tags_with_separator`,
   * `sequence`, `or`, `const_string`, `any_text`, `regex`, `grammar`, `json_schema`): text whose parts
   * follow their own grammars, e.g. tool calls inside free text. Its `json_schema` parts are written
   * as `json.dumps` writes JSON (separators ', ' and ': ', no other whitespace), strict. Control
   * characters other than newline never enter the text (JSON strings cannot hold them raw).
   */
  | { type: 'structural_tag'; structuralTag: Record<string, unknown> };

/** One request's grammar state: which tokens may come next, and the tokens chosen. */
export interface TokenMatcher {
  /** The allowed next tokens as a bitmask: token i is allowed when bit i % 32 of word i >> 5 is set. */
  mask(): Int32Array;
  /**
   * Advances by one token. False, with the state unchanged, when the mask does not allow it or when
   * nothing could follow it (a dead end): the caller then picks another token.
   */
  accept(tokenId: number): Promise<boolean>;
  /** Frees the matcher. */
  dispose(): void;
}

export interface GrammarProvider {
  /**
   * A matcher for `format` whose end tokens are `endTokenIds` (allowed only once the text is complete).
   * Throws InternVLError('BAD_INPUT') naming the problem when the format is invalid.
   */
  matcher(format: ResponseFormat, endTokenIds: readonly number[]): Promise<TokenMatcher>;
}

export function maskAllows(mask: Int32Array, id: number): boolean {
  return ((mask[id >> 5] >>> (id & 31)) & 1) === 1;
}

/** Sets the logits of tokens the mask forbids to -Infinity. */
export function applyMask(logits: Float32Array, mask: Int32Array): void {
  for (let w = 0; w < mask.length; w++) {
    const word = mask[w];
    if (word === -1) continue;
    const base = w << 5;
    const end = Math.min(base + 32, logits.length);
    for (let i = base; i < end; i++) if (((word >>> (i - base)) & 1) === 0) logits[i] = -Infinity;
  }
  // Logits beyond the mask (a vocabulary padded past the matcher's size) are never allowed.
  for (let i = mask.length << 5; i < logits.length; i++) logits[i] = -Infinity;
}

/** True when the only allowed tokens are end tokens: the grammar is complete and admits nothing more. */
export function onlyEndAllowed(
  mask: Int32Array,
  endTokenIds: ReadonlySet<number>,
  vocabSize: number,
): boolean {
  for (let w = 0; w < mask.length; w++) {
    let word = mask[w];
    while (word !== 0) {
      const bit = 31 - Math.clz32(word & -word);
      const id = (w << 5) + bit;
      if (id < vocabSize && !endTokenIds.has(id)) return false;
      word &= word - 1;
    }
  }
  return true;
}

/** How a vocabulary's token strings map to bytes (XGrammar's VocabType). */
export type VocabType = 'byte_level' | 'byte_fallback' | 'raw';
