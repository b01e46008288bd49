/** The grammar engine of a model folder in Node: its vocabulary read from the folder's tokenizer files. */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { loadTokenizer } from '../io/tokenizer-files.js';
import { GrammarEngine, type GrammarEngineOptions } from './grammar.js';
import { grammarVocab } from './grammar-vocab.js';

/** A grammar engine for a model folder's tokenizer, with `vocabSize` logits per step. */
export function grammarEngineForModel(
  dir: string,
  vocabSize: number,
  options?: GrammarEngineOptions,
): GrammarEngine {
  return new GrammarEngine(async () => {
    const tokenizer = await loadTokenizer(dir);
    const file = path.join(dir, 'tokenizer.json');
    const json = await readFile(file, 'utf8').then(
      (text) => JSON.parse(text) as unknown,
      () => undefined,
    );
    return grammarVocab(tokenizer, json, vocabSize);
  }, options);
}
