/**
 * Time to first token of a follow-up question about a photo, resent OpenAI-style (the whole
 * conversation again), against the first question: the prefix cache should make the second cheap.
 *
 *   node --import tsx scripts/second-turn.ts MODEL [--llm-dtype int4] [--prefill-dtype int8] [--vit-dtype fp32]
 *
 * Uses a synthetic 1920×1280 photo (6 tiles + thumbnail at max 6 tiles). Prints JSON.
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import { type ChatMessage, pipeline } from '../src/index.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'llm-dtype': { type: 'string', default: 'int4' },
    'prefill-dtype': { type: 'string', default: 'int8' },
    'vit-dtype': { type: 'string', default: 'fp32' },
  },
});
if (positionals.length !== 1) throw new Error('usage: second-turn.ts MODEL [precision flags]');
const width = 1920;
const height = 1280;
const data = new Uint8Array(width * height * 3).map((_, i) => (i * 7 + (i >> 11)) % 253);
const photo = { width, height, data };
const pipe = await pipeline(positionals[0], {
  llmDtype: values['llm-dtype'] as 'int4',
  prefillDtype: values['prefill-dtype'] as 'int8',
  vitDtype: values['vit-dtype'] as 'fp32',
  maxTiles: 6,
});

async function ttft(messages: ChatMessage[]) {
  const start = performance.now();
  let first: number | undefined;
  let text = '';
  let usage: unknown;
  for await (const chunk of pipe.stream(messages, { maxNewTokens: 16, ignoreEos: true })) {
    first ??= performance.now() - start;
    text += chunk.text;
    usage = chunk.usage ?? usage;
  }
  return { ttft_s: (first ?? 0) / 1000, total_s: (performance.now() - start) / 1000, text, usage };
}

const question: ChatMessage = {
  role: 'user',
  content: [
    { type: 'image', image: photo },
    { type: 'text', text: 'Describe this photo.' },
  ],
};
const first = await ttft([question]);
const second = await ttft([
  question,
  { role: 'assistant', content: first.text },
  { role: 'user', content: 'What is in the top left corner?' },
]);
await pipe.close();
process.stdout.write(
  `${JSON.stringify(
    {
      cpu: os.cpus()[0]?.model,
      first_ttft_s: first.ttft_s,
      second_ttft_s: second.ttft_s,
      ratio: second.ttft_s / first.ttft_s,
      first_usage: first.usage,
      second_usage: second.usage,
    },
    null,
    2,
  )}\n`,
);
