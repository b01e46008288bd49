/**
 * The tokenizer of a random-weight checkpoint: byte-level BPE (tokenizer.json) with the real model's
 * vocabulary size and special/added tokens at the real ids. The 256 byte tokens let any text be encoded;
 * every other ordinary id is a made-up word (" bako", " tirume", …), so whatever ids a random model
 * generates decode to visible text.
 */

/** The nine tokens InternVL adds to the LLM's tokenizer, in this order (spec §3.4). */
export const INTERNVL_TOKENS = [
  '<img>',
  '</img>',
  '<IMG_CONTEXT>',
  '<quad>',
  '</quad>',
  '<ref>',
  '</ref>',
  '<box>',
  '</box>',
];

/** One added token: its text, id and whether skipSpecialTokens drops it. */
export interface AddedToken {
  content: string;
  id: number;
  special: boolean;
}

export interface TokenizerLayout {
  /** Id of byte 0; byte b has id byteBase + b. */
  byteBase: number;
  /** Number of ids (config vocab_size): bytes, words, added tokens. */
  vocab: number;
  tokens: AddedToken[];
  bos?: number;
  eos: number;
  pad: number;
  generationEos: number[];
}

const special = (content: string, id: number): AddedToken => ({ content, id, special: true });

/** Qwen2.5's 22 added tokens from id 151643 (special: false for the tool-call and FIM tokens). */
const QWEN_ADDED = [
  '<|endoftext|>',
  '<|im_start|>',
  '<|im_end|>',
  '<|object_ref_start|>',
  '<|object_ref_end|>',
  '<|box_start|>',
  '<|box_end|>',
  '<|quad_start|>',
  '<|quad_end|>',
  '<|vision_start|>',
  '<|vision_end|>',
  '<|vision_pad|>',
  '<|image_pad|>',
  '<|video_pad|>',
  '<tool_call>',
  '</tool_call>',
  '<|fim_prefix|>',
  '<|fim_middle|>',
  '<|fim_suffix|>',
  '<|fim_pad|>',
  '<|repo_name|>',
  '<|file_sep|>',
];

/** Qwen3's four tokens after Qwen2.5's (151665–151668), before InternVL3.5's own. */
const QWEN3_ADDED = ['<tool_response>', '</tool_response>', '<think>', '</think>'];

/**
 * The real token layout of the LLM family (Qwen2.5: 151674 ids; InternLM2.5: 92553 ids; Qwen3: Qwen2.5's
 * added tokens, then <tool_response>, </tool_response>, <think>, </think>, then InternVL's, in 151936 ids).
 */
export function tokenizerLayout(arch: 'qwen2' | 'qwen3' | 'internlm2', vocab: number): TokenizerLayout {
  if (arch !== 'internlm2') {
    const base = 151643;
    const added = arch === 'qwen3' ? [...QWEN_ADDED, ...QWEN3_ADDED] : QWEN_ADDED;
    const internvl = base + added.length;
    return {
      byteBase: 0,
      vocab,
      tokens: [
        ...added.map((content, i) => ({ content, id: base + i, special: i < 14 })),
        ...INTERNVL_TOKENS.map((t, i) => special(t, internvl + i)),
      ],
      eos: 151645,
      pad: 151643,
      generationEos: [151644, 151645, 151643],
    };
  }
  const base = 92544;
  return {
    byteBase: 3,
    vocab,
    tokens: [
      special('<unk>', 0),
      special('<s>', 1),
      special('</s>', 2),
      special('<|plugin|>', 92538),
      special('<|interpreter|>', 92539),
      special('<|action_end|>', 92540),
      special('<|action_start|>', 92541),
      special('<|im_end|>', 92542),
      special('<|im_start|>', 92543),
      ...INTERNVL_TOKENS.map((t, i) => special(t, base + i)),
    ],
    bos: 1,
    eos: 2,
    pad: 2,
    generationEos: [92542, 92543],
  };
}

/** GPT-2's byte → printable-character map used by byte-level BPE vocabularies. */
function byteToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const out: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    out[b] = printable.includes(b) ? String.fromCharCode(b) : String.fromCharCode(256 + extra++);
  }
  return out;
}

const CONSONANTS = 'bdfgklmnprstvz';
const VOWELS = 'aeiou';
const SYLLABLES = [...CONSONANTS].flatMap((c) => [...VOWELS].map((v) => c + v));

/**
 * The n-th made-up word (n ≥ 0), with a leading space: 1 syllable for the first 70, then 2, then 3, …
 * Distinct n give distinct words.
 */
export function madeUpWord(n: number): string {
  let rest = n;
  let length = 1;
  while (rest >= SYLLABLES.length ** length) {
    rest -= SYLLABLES.length ** length;
    length++;
  }
  let word = '';
  for (let i = 0; i < length; i++) {
    word = SYLLABLES[rest % SYLLABLES.length] + word;
    rest = Math.floor(rest / SYLLABLES.length);
  }
  return ` ${word}`;
}

/** tokenizer.json, tokenizer_config.json and special_tokens_map.json contents for a layout. */
export function tokenizerFiles(layout: TokenizerLayout): Record<string, unknown> {
  const chars = byteToUnicode();
  const vocab: Record<string, number> = {};
  chars.forEach((c, b) => {
    vocab[c] = layout.byteBase + b;
  });
  const taken = new Set(layout.tokens.map((t) => t.id));
  for (let b = 0; b < 256; b++) taken.add(layout.byteBase + b);
  // Words are byte-level strings too: the space is written as its mapped character.
  const space = chars[0x20];
  let n = 0;
  for (let id = 0; id < layout.vocab; id++) {
    if (taken.has(id)) continue;
    vocab[madeUpWord(n++).replace(' ', space)] = id;
  }
  const added = layout.tokens.map(({ id, content, special }) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special,
  }));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: { ...byteLevel, trim_offsets: false },
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
  const name = (id: number) => layout.tokens.find((t) => t.id === id)?.content;
  const tokenizerConfig = {
    added_tokens_decoder: Object.fromEntries(added.map(({ id, ...rest }) => [String(id), rest])),
    bos_token: layout.bos === undefined ? null : name(layout.bos),
    eos_token: name(layout.eos),
    pad_token: name(layout.pad),
    add_bos_token: layout.bos !== undefined,
    add_eos_token: false,
    model_max_length: 8192,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
  return {
    'tokenizer.json': tokenizer,
    'tokenizer_config.json': tokenizerConfig,
    'special_tokens_map.json': {
      eos_token: name(layout.eos),
      pad_token: name(layout.pad),
      ...(layout.bos === undefined ? {} : { bos_token: name(layout.bos) }),
      additional_special_tokens: INTERNVL_TOKENS,
    },
  };
}
