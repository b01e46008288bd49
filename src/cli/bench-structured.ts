/**
 * `internvl bench --structured`: what constrained decoding costs. Through pipeline(), as a user runs
 * it: the first grammar's setup (XGrammar and the vocabulary), a JSON Schema's compile time (cold,
 * then cached), and decode tok/s of greedy decoding with and without a JSON schema. Decode speed is
 * read from streamed token times (first to last token), so prompt prefill and compile are not in it.
 * Unconstrained greedy decoding takes the argmax inside the graph; constrained decoding fetches the
 * logits, masks them and picks in JS. A third run, greedy with logprobs (the logits path without a
 * grammar), splits the difference into the logits path's share and the grammar's.
 */

import type { EngineOptions } from '../engine/core.js';
import type { ResponseFormat } from '../engine/grammar-types.js';
import type { GenerationConfigInput } from '../pipeline/generation-config.js';
import { pipeline } from '../pipeline/pipeline.js';

/** A schema whose JSON runs long (arrays of strings), so a random model decodes many tokens in it. */
export const BENCH_SCHEMA: Record<string, unknown> = {
  type: 'object',
  properties: {
    title: { type: 'string', maxLength: 40 },
    year: { type: 'integer', minimum: 1900, maximum: 2100 },
    genres: { type: 'array', items: { enum: ['drama', 'comedy', 'documentary'] }, maxItems: 3 },
    notes: { type: 'array', items: { type: 'string', maxLength: 40 }, minItems: 4, maxItems: 8 },
  },
  required: ['title', 'year', 'genres', 'notes'],
  additionalProperties: false,
};

export interface StructuredBenchOptions {
  model: string;
  engine: EngineOptions;
  reps: number;
  /** Most tokens per answer. */
  maxNewTokens?: number;
  log?: (line: string) => void;
}

const round = (x: number, digits: number) => Number(x.toFixed(digits));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

export async function runStructuredBench(options: StructuredBenchOptions): Promise<Record<string, unknown>> {
  const log = options.log ?? (() => {});
  const maxNewTokens = options.maxNewTokens ?? 96;
  const pipe = await pipeline(options.model, { ...options.engine });
  try {
    const format: ResponseFormat = { type: 'json_schema', jsonSchema: BENCH_SCHEMA };
    log('grammar setup and schema compile');
    const setup = await pipe.compileResponseFormat({ type: 'json_object' });
    const cold = await pipe.compileResponseFormat(format);
    const t0 = performance.now();
    await pipe.compileResponseFormat(format);
    const cachedMs = performance.now() - t0;

    /** Decode tok/s of one answer from its streamed token times, and its token count. */
    const decode = async (gen: GenerationConfigInput, prompt: string) => {
      const times: number[] = [];
      let text = '';
      let finish: string | undefined;
      for await (const chunk of pipe.stream(prompt, gen)) {
        for (const _ of chunk.tokenIds) times.push(performance.now());
        text += chunk.text;
        finish = chunk.finishReason ?? finish;
      }
      const n = times.length;
      return { tokPerS: n > 1 ? ((n - 1) * 1000) / (times[n - 1] - times[0]) : 0, tokens: n, text, finish };
    };
    const free: number[] = [];
    const viaLogits: number[] = [];
    const constrained: number[] = [];
    const tokens: number[] = [];
    let valid = 0;
    for (let rep = 0; rep < options.reps; rep++) {
      const prompt = `Describe film number ${rep} as JSON.`;
      log(`rep ${rep + 1}/${options.reps}: greedy, then greedy with the JSON schema`);
      const run = await decode({ maxNewTokens, temperature: 0, responseFormat: format }, prompt);
      constrained.push(run.tokPerS);
      tokens.push(run.tokens);
      if (run.finish === 'stop') {
        JSON.parse(run.text);
        valid++;
      }
      // The same number of tokens without a grammar (ignoreEos: a random model may end at once).
      const same = { maxNewTokens: Math.max(2, run.tokens), temperature: 0, ignoreEos: true };
      free.push((await decode(same, prompt)).tokPerS);
      viaLogits.push((await decode({ ...same, logprobs: true }, prompt)).tokPerS);
    }
    const freeTokPerS = median(free);
    const logitsTokPerS = median(viaLogits);
    const constrainedTokPerS = median(constrained);
    return {
      model: options.model,
      grammarSetupMs: round(setup.compileMs, 1),
      schemaCompileMs: round(cold.compileMs, 1),
      schemaCachedMs: round(cachedMs, 2),
      reps: options.reps,
      tokensPerAnswer: tokens,
      completeJsonAnswers: valid,
      decodeTokPerS: {
        greedy: round(freeTokPerS, 2),
        greedyLogitsPath: round(logitsTokPerS, 2),
        greedyJsonSchema: round(constrainedTokPerS, 2),
      },
      jsonSchemaSlowdownPercent: round((1 - constrainedTokPerS / freeTokPerS) * 100, 1),
      jsonSchemaSlowdownVsLogitsPathPercent: round((1 - constrainedTokPerS / logitsTokPerS) * 100, 1),
    };
  } finally {
    await pipe.close();
  }
}
