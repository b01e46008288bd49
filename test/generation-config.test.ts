import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import {
  type GenerationConfigFile,
  loadGenerationConfig,
  parseGenerationConfig,
} from '../src/config/generation-config.js';
import { InternVLError } from '../src/errors.js';
import { loadTokenizer } from '../src/io/tokenizer-files.js';
import {
  DEFAULT_MAX_NEW_TOKENS,
  type GenerationConfigInput,
  parseGenerationConfigInput,
  resolveGenerationConfig,
} from '../src/pipeline/generation-config.js';
import { getTemplate } from '../src/text/templates.js';
import type { Tokenizer } from '../src/text/types.js';
import { goldenModelDir } from './helpers.js';

const template = getTemplate('internvl2_5');

function badInput(pattern: RegExp) {
  return (e: unknown) => e instanceof InternVLError && e.code === 'BAD_INPUT' && pattern.test(e.message);
}

describe('resolveGenerationConfig', () => {
  let tokenizer: Tokenizer;
  let fileConfig: GenerationConfigFile;
  before(async () => {
    const dir = goldenModelDir('tiny-internvl2_5-qwen2');
    tokenizer = await loadTokenizer(dir);
    fileConfig = await loadGenerationConfig(dir);
  });

  it('takes defaults from generation_config.json: greedy, its max_new_tokens and eos ids', () => {
    // The tiny model: do_sample false, max_new_tokens 8, eos_token_id [258, 256]; <|im_end|> is 258.
    const config = resolveGenerationConfig(undefined, { fileConfig, template, tokenizer });
    assert.deepEqual(config, {
      maxNewTokens: 8,
      temperature: 0,
      topK: 50,
      topP: 1,
      minP: 0,
      repetitionPenalty: 1,
      stop: [],
      stopTokenIds: [],
      ignoreEos: false,
      logprobs: false,
      topLogprobs: 0,
      skipSpecialTokens: true,
      eosTokenIds: [258, 256],
      endTokenIds: [258, 256],
    });
  });

  it('lets the user override and adds user stop ids; ignoreEos keeps only those', () => {
    const config = resolveGenerationConfig(
      { temperature: 0.7, topP: 0.9, maxNewTokens: 100, stop: 'END', stopTokenIds: [5, 256], seed: 3 },
      { fileConfig, template, tokenizer },
    );
    assert.equal(config.temperature, 0.7);
    assert.equal(config.topP, 0.9);
    assert.equal(config.maxNewTokens, 100);
    assert.equal(config.seed, 3);
    assert.deepEqual(config.stop, ['END']);
    assert.deepEqual(config.endTokenIds, [258, 256, 5]);
    const ignoring = resolveGenerationConfig(
      { ignoreEos: true, stopTokenIds: [5] },
      { fileConfig, template, tokenizer },
    );
    assert.deepEqual(ignoring.eosTokenIds, [258, 256]);
    assert.deepEqual(ignoring.endTokenIds, [5]);
  });

  it('samples with the file settings when it says do_sample, and uses fallbacks without a file', () => {
    const sampling = parseGenerationConfig({
      do_sample: true,
      temperature: 0.6,
      top_k: 20,
      top_p: 0.8,
      repetition_penalty: 1.05,
      eos_token_id: 7,
    });
    const config = resolveGenerationConfig({}, { fileConfig: sampling, template, tokenizer });
    assert.deepEqual(
      [config.temperature, config.topK, config.topP, config.repetitionPenalty, config.maxNewTokens],
      [0.6, 20, 0.8, 1.05, DEFAULT_MAX_NEW_TOKENS],
    );
    assert.deepEqual(config.endTokenIds, [258, 7]);
    const bare = resolveGenerationConfig({ topLogprobs: 2 }, { template, tokenizer });
    assert.equal(bare.temperature, 0);
    assert.equal(bare.logprobs, true);
    assert.deepEqual(bare.endTokenIds, [258]);
  });

  it('names the bad field', () => {
    const resolve = (user: unknown) =>
      resolveGenerationConfig(user as GenerationConfigInput, { fileConfig, template, tokenizer });
    assert.throws(() => resolve({ temperature: -0.1 }), badInput(/temperature must be a number ≥ 0/));
    assert.throws(() => resolve({ topP: 1.5 }), badInput(/topP must be a number in \(0, 1\] \(got 1\.5\)/));
    assert.throws(() => resolve({ topK: 2.5 }), badInput(/topK must be a non-negative integer \(0 = off\)/));
    assert.throws(
      () => resolve({ topLogprobs: 21 }),
      badInput(/topLogprobs must be an integer from 0 to 20/),
    );
    assert.throws(() => resolve({ maxNewTokens: 0 }), badInput(/maxNewTokens must be a positive integer/));
    assert.throws(() => resolve({ stop: ['a', ''] }), badInput(/stop must be a non-empty string/));
    assert.throws(() => resolve({ seed: 0.5 }), badInput(/seed must be a safe integer/));
    assert.throws(
      () => resolve({ max_new_tokens: 5 }),
      badInput(/unknown field 'max_new_tokens' \(did you mean 'maxNewTokens'\?\)/),
    );
    assert.throws(() => resolve('greedy'), badInput(/generation config must be an object/));
    assert.throws(() => resolve({ topLogprobs: 3, logprobs: false }), badInput(/topLogprobs needs logprobs/));
    assert.throws(() => resolve({ temperature: -1, minP: 2 }), badInput(/temperature.*; minP must be/));
  });

  it('requires the template end-of-turn token in the tokenizer', () => {
    assert.throws(
      () => resolveGenerationConfig({}, { template: getTemplate('phi3-chat'), tokenizer, fileConfig }),
      (e: unknown) => e instanceof InternVLError && e.code === 'BAD_TOKENIZER' && /<\|end\|>/.test(e.message),
    );
  });
});

describe('parseGenerationConfigInput', () => {
  it('returns only the given fields, with stop as a list', () => {
    assert.deepEqual(parseGenerationConfigInput(undefined), {});
    assert.deepEqual(parseGenerationConfigInput({ stop: 'x', topK: 0 }), { stop: ['x'], topK: 0 });
  });
});
