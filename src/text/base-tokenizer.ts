import { InternVLError } from '../errors.js';
import type { SpecialTokenSettings } from './special-token-settings.js';
import type { DecodeOptions, EncodeOptions, Tokenizer } from './types.js';

function checkText(text: unknown): string {
  if (typeof text !== 'string')
    throw new InternVLError('BAD_INPUT', `text to encode must be a string, got ${typeof text}`);
  return text;
}

function checkIds(ids: unknown): ArrayLike<number> {
  if (ids === null || typeof ids !== 'object' || typeof (ids as ArrayLike<number>).length !== 'number') {
    throw new InternVLError('BAD_INPUT', 'ids to decode must be an array of numbers');
  }
  return ids as ArrayLike<number>;
}

/** Shared parts of both tokenizer kinds: specials, BOS/EOS handling. */
export abstract class BaseTokenizer implements Tokenizer {
  abstract readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  readonly padTokenId: number | undefined;
  readonly addBosToken: boolean;
  readonly addEosToken: boolean;
  protected readonly specialIds: ReadonlySet<number>;

  abstract tokenToId(token: string): number | undefined;
  abstract idToToken(id: number): string | undefined;
  /** Ids of `text` without BOS/EOS. */
  protected abstract encodeText(text: string): number[];
  /** Text of ids that are all known to the tokenizer (specials already removed if asked). */
  protected abstract decodeKnown(ids: number[]): string;

  protected constructor(
    settings: SpecialTokenSettings,
    defaults: { bos?: string; eos?: string; pad?: string; unk?: string; addBos: boolean; addEos: boolean },
    lookup: (token: string) => number | undefined,
    extraSpecialIds: Iterable<number>,
  ) {
    const idOf = (token: string | undefined): number | undefined =>
      token === undefined ? undefined : lookup(token);
    this.bosTokenId = idOf(settings.bos ?? defaults.bos);
    this.eosTokenId = idOf(settings.eos ?? defaults.eos);
    this.padTokenId = idOf(settings.pad ?? defaults.pad);
    this.addBosToken = (settings.addBosToken ?? defaults.addBos) && this.bosTokenId !== undefined;
    this.addEosToken = (settings.addEosToken ?? defaults.addEos) && this.eosTokenId !== undefined;
    const special = new Set<number>(extraSpecialIds);
    for (const t of settings.addedTokens.values()) if (t.special) special.add(t.id);
    for (const token of [settings.bos, settings.eos, settings.pad, settings.unk, ...settings.additional]) {
      const id = idOf(token);
      if (id !== undefined) special.add(id);
    }
    for (const id of [this.bosTokenId, this.eosTokenId, this.padTokenId])
      if (id !== undefined) special.add(id);
    this.specialIds = special;
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  encode(text: string, options?: EncodeOptions): number[] {
    const ids = this.encodeText(checkText(text));
    if (options?.addSpecialTokens === false) return ids;
    if (this.addBosToken) ids.unshift(this.bosTokenId as number);
    if (this.addEosToken) ids.push(this.eosTokenId as number);
    return ids;
  }

  decode(ids: ArrayLike<number>, options?: DecodeOptions): string {
    const list = checkIds(ids);
    const skip = options?.skipSpecialTokens === true;
    const known: number[] = [];
    for (let i = 0; i < list.length; i++) {
      const id = list[i];
      if (this.idToToken(id) === undefined) continue;
      if (skip && this.specialIds.has(id)) continue;
      known.push(id);
    }
    return known.length === 0 ? '' : this.decodeKnown(known);
  }
}
