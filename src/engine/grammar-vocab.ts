/**
 * The vocabulary XGrammar compiles against, from the model's tokenizer (Node and browsers alike).
 */
import { TOOL_MARKER_TOKENS } from '../text/tool-prompts.js';
import type { Tokenizer } from '../text/types.js';
import type { VocabType } from './grammar-types.js';
import { tokenBytes } from './utf8-guard.js';

export type { VocabType };

export interface GrammarVocab {
  /** Token strings as the vocabulary stores them, by id; '' for special tokens and unused ids. */
  encodedVocab: string[];
  vocabType: VocabType;
  prependSpace: boolean;
  /** Each token's bytes; undefined for special tokens and unused ids. */
  bytes: (Uint8Array | undefined)[];
  /** Ids whose bytes hold a control character (U+0000–U+001F), which JSON text never contains raw. */
  controlIds: number[];
  /** Ids whose bytes hold a control character other than a newline. */
  controlIdsButNewline: number[];
}

function decoderTypes(decoder: unknown): string[] {
  if (!decoder || typeof decoder !== 'object') return [];
  const d = decoder as { type?: unknown; decoders?: unknown };
  const inner = Array.isArray(d.decoders) ? d.decoders.flatMap(decoderTypes) : [];
  return [...(typeof d.type === 'string' ? [d.type] : []), ...inner];
}

/**
 * The vocabulary XGrammar compiles against. The kind follows the tokenizer: a tokenizer.json whose
 * decoder is ByteLevel (Qwen2, GPT-2 style BPE) is byte_level; SentencePiece (tokenizer.model, or a
 * tokenizer.json with ByteFallback / Metaspace / `byte_fallback`, as InternLM2's) is byte_fallback,
 * whose `▁` is a space and `<0xAB>` a byte; anything else is raw. Special tokens are given as empty
 * strings, which XGrammar never lets into text (they can only end it, as end tokens), except the
 * tool-call markers (InternLM2's `<|action_start|>`…), which a tool grammar matches as their text.
 */
export function grammarVocab(tokenizer: Tokenizer, tokenizerJson: unknown, vocabSize: number): GrammarVocab {
  const json = tokenizerJson as
    | {
        decoder?: unknown;
        model?: { byte_fallback?: unknown };
        pre_tokenizer?: unknown;
        normalizer?: unknown;
      }
    | undefined;
  let vocabType: VocabType;
  let prependSpace: boolean;
  if (json) {
    const decoders = decoderTypes(json.decoder);
    const text = JSON.stringify([json.pre_tokenizer ?? null, json.normalizer ?? null]);
    if (decoders.includes('ByteLevel')) vocabType = 'byte_level';
    else if (
      decoders.includes('ByteFallback') ||
      decoders.includes('Metaspace') ||
      json.model?.byte_fallback === true
    )
      vocabType = 'byte_fallback';
    else vocabType = 'raw';
    prependSpace =
      vocabType === 'byte_fallback' && /"(?:Prepend|prepend_scheme|add_prefix_space)"/.test(text);
  } else {
    vocabType = 'byte_fallback';
    prependSpace = true;
  }
  const encodedVocab = new Array<string>(vocabSize);
  const bytes = new Array<Uint8Array | undefined>(vocabSize);
  const controlIds: number[] = [];
  const controlIdsButNewline: number[] = [];
  for (let id = 0; id < vocabSize; id++) {
    const token = tokenizer.idToToken(id) ?? '';
    encodedVocab[id] = tokenizer.isSpecial(id) && !TOOL_MARKER_TOKENS.includes(token) ? '' : token;
    bytes[id] = tokenBytes(encodedVocab[id], vocabType);
    if (bytes[id]?.some((b) => b < 0x20)) controlIds.push(id);
    if (bytes[id]?.some((b) => b < 0x20 && b !== 0x0a)) controlIdsButNewline.push(id);
  }
  return { encodedVocab, vocabType, prependSpace, bytes, controlIds, controlIdsButNewline };
}
