import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { InternVLError } from '../errors.js';
import { BaseTokenizer } from './base-tokenizer.js';
import {
  asRecord,
  isRecord,
  readSpecialTokenSettings,
  type SpecialTokenSettings,
  type TokenizerFileContents,
} from './special-token-settings.js';
import type { Tokenizer } from './types.js';

/** A tokenizer.json tokenizer (Qwen2 / byte-level BPE), run by @huggingface/tokenizers. */
class JsonTokenizer extends BaseTokenizer {
  readonly vocabSize: number;
  private readonly hf: HfTokenizer;
  private readonly cleanUp: boolean;

  constructor(hf: HfTokenizer, settings: SpecialTokenSettings) {
    const lookup = (token: string): number | undefined => hf.token_to_id(token);
    const probe = (add: boolean): number[] => hf.encode('a', { add_special_tokens: add }).ids;
    // Without add_bos_token/add_eos_token in the config, follow what the post-processor would add.
    const plain = probe(false);
    const withSpecials = probe(true);
    const bosId = settings.bos === undefined ? undefined : lookup(settings.bos);
    const eosId = settings.eos === undefined ? undefined : lookup(settings.eos);
    const addBos = withSpecials.length > plain.length && bosId !== undefined && withSpecials[0] === bosId;
    const addEos = withSpecials.length > plain.length && eosId !== undefined && withSpecials.at(-1) === eosId;
    const libSpecials = [...hf.get_added_tokens_decoder().values()].filter((t) => t.special).map((t) => t.id);
    super(settings, { addBos, addEos }, lookup, libSpecials);
    this.hf = hf;
    // transformers' (4.x) default for fast tokenizers.
    this.cleanUp = settings.cleanUpTokenizationSpaces ?? true;
    let maxId = -1;
    for (const id of hf.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
  }

  tokenToId(token: string): number | undefined {
    return typeof token === 'string' ? this.hf.token_to_id(token) : undefined;
  }

  idToToken(id: number): string | undefined {
    return Number.isSafeInteger(id) && id >= 0 ? this.hf.id_to_token(id) : undefined;
  }

  protected encodeText(text: string): number[] {
    return this.hf.encode(text, { add_special_tokens: false }).ids;
  }

  protected decodeKnown(ids: number[]): string {
    return this.hf.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: this.cleanUp });
  }
}

/**
 * Builds a Tokenizer from tokenizer.json contents. Added tokens of tokenizer_config.json's
 * added_tokens_decoder that tokenizer.json lacks are added; for ids in both, the config's entry wins.
 */
export function createJsonTokenizer(files: TokenizerFileContents): Tokenizer {
  const source = files.source ?? 'tokenizer';
  const json = files.tokenizerJson;
  if (!isRecord(json) || !isRecord(json.model)) {
    throw new InternVLError(
      'BAD_TOKENIZER',
      `${source}/tokenizer.json must be an object with a 'model' object`,
    );
  }
  const settings = readSpecialTokenSettings(files, source);
  const jsonAdded = json.added_tokens ?? [];
  if (!Array.isArray(jsonAdded)) {
    throw new InternVLError('BAD_TOKENIZER', `${source}/tokenizer.json added_tokens must be an array`);
  }
  const added = new Map<number, Record<string, unknown>>();
  jsonAdded.forEach((entry, i) => {
    if (!isRecord(entry) || !Number.isSafeInteger(entry.id) || typeof entry.content !== 'string') {
      throw new InternVLError(
        'BAD_TOKENIZER',
        `${source}/tokenizer.json added_tokens[${i}] needs an integer id and content`,
      );
    }
    added.set(entry.id as number, entry);
  });
  for (const t of settings.addedTokens.values()) {
    added.set(t.id, {
      ...(added.get(t.id) ?? { single_word: false, normalized: false }),
      id: t.id,
      content: t.content,
      special: t.special,
      lstrip: t.lstrip,
      rstrip: t.rstrip,
    });
  }
  const config = { ...asRecord(files.tokenizerConfig, `${source}/tokenizer_config.json`) };
  config.additional_special_tokens = settings.additional;
  let hf: HfTokenizer;
  try {
    hf = new HfTokenizer(
      { ...json, added_tokens: [...added.values()].sort((a, b) => Number(a.id) - Number(b.id)) },
      config,
    );
  } catch (error) {
    throw new InternVLError(
      'BAD_TOKENIZER',
      `${source}/tokenizer.json could not be loaded: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
  return new JsonTokenizer(hf, settings);
}
