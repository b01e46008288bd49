/** The tokenizer surface the rest of the library relies on (tokenizer.json and SentencePiece alike). */
export interface EncodeOptions {
  /** Add the tokenizer's BOS when it has `add_bos_token` (InternLM2: `<s>`); default true, as HF does. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
}

export interface Tokenizer {
  /** Ids of `text`; special/added tokens written in the text (e.g. `<|im_start|>`) map to their ids. */
  encode(text: string, options?: EncodeOptions): number[];
  /** Text of `ids`; ids outside the vocabulary decode to nothing. */
  decode(ids: ArrayLike<number>, options?: DecodeOptions): string;
  /** Id of a token string (vocab or added token), or undefined. */
  tokenToId(token: string): number | undefined;
  /** Token string of an id, or undefined (e.g. padded embedding rows). */
  idToToken(id: number): string | undefined;
  /** Whether an id is a special token (skipped by skipSpecialTokens). */
  isSpecial(id: number): boolean;
  /** Largest id + 1 that the tokenizer knows. */
  readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  readonly padTokenId: number | undefined;
  /** True for tokenizers that prepend BOS on encode (InternLM2's SentencePiece tokenizer). */
  readonly addBosToken: boolean;
}
