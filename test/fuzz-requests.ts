/** Seeded random requests for the server fuzz test: odd methods, paths, field values, bodies and media. */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { GOLDEN_DIR } from './helpers.js';

/** mulberry32: a small seeded generator, so that a failure can be replayed. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface FuzzRequest {
  method: string;
  target: string;
  body?: string | Buffer;
  headers?: Record<string, string>;
  abortAfterMs?: number;
}

const pngDataUrl = `data:image/png;base64,${readFileSync(path.join(GOLDEN_DIR, 'prep/sources/s2_37x61_rgb.png')).toString('base64')}`;

export function fuzzRequests(count: number, seed: number): FuzzRequest[] {
  const rnd = random(seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rnd() * items.length)];
  const odd = (): unknown =>
    pick<() => unknown>([
      () => null,
      () => -1,
      () => 0,
      () => 1e308,
      () => -1e308,
      () => 2 ** 53 + 1,
      () => 0.5,
      () => '',
      () => 'x'.repeat(Math.floor(rnd() * 5000)),
      () => '\u0000\ud800\udfff<|im_end|><IMG_CONTEXT>',
      () => true,
      () => [],
      () => [[[[[]]]]],
      () => ({}),
      () => ({ url: 'x' }),
      () => Array.from({ length: 20 }, () => 'y'),
    ])();
  const textContent = () =>
    pick(['hi', 'Describe.', '', ' ', 'é中🙂', '<image>', '<IMAGE_TOKEN> what?', '<|im_end|>']);
  const imagePart = () =>
    pick([
      { type: 'image_url', image_url: { url: pngDataUrl, max_dynamic_patch: 1 } },
      { type: 'image_url', image_url: 'data:image/png;base64,AAAA' },
      { type: 'image_url', image_url: 'data:image/png;base64,@@@' },
      { type: 'image_url', image_url: 'data:text/plain,hello' },
      { type: 'image_url', image_url: 'http://127.0.0.1:1/x.png' },
      { type: 'image_url', image_url: 'http://10.0.0.1/x.png' },
      { type: 'image_url', image_url: 'file:///etc/passwd' },
      { type: 'image_url', image_url: '/etc/passwd' },
      { type: 'image_url', image_url: { url: pngDataUrl, max_dynamic_patch: 1000 } },
      { type: 'image_url', image_url: { url: pngDataUrl, detail: 'ultra' } },
      { type: 'video_url', video_url: 'data:video/mp4;base64,AAAAIGZ0eXA=' },
      { type: 'video_url', video_url: { url: 'data:video/mp4;base64,AAAA', num_segments: 0 } },
      { type: 'input_audio', input_audio: {} },
    ]);
  const validChat = (): Record<string, unknown> => ({
    model: pick([undefined, 'tiny-internvl2_5-qwen2', 'gpt-4']),
    messages: [
      ...(rnd() < 0.3 ? [{ role: pick(['system', 'developer']), content: 'Be brief.' }] : []),
      {
        role: 'user',
        content:
          rnd() < 0.5
            ? textContent()
            : [...(rnd() < 0.5 ? [imagePart()] : []), { type: 'text', text: textContent() }],
      },
    ],
    max_tokens: 1 + Math.floor(rnd() * 3),
    ...(rnd() < 0.3 ? { stream: true, stream_options: { include_usage: rnd() < 0.5 } } : {}),
    ...(rnd() < 0.2 ? { temperature: rnd() * 2, top_p: rnd(), top_k: Math.floor(rnd() * 50), seed: 7 } : {}),
    ...(rnd() < 0.1 ? { n: 2, logprobs: true, top_logprobs: 2 } : {}),
    ...(rnd() < 0.1 ? { stop: ['a', 'b'] } : {}),
  });
  const validCompletion = (): Record<string, unknown> => ({
    prompt: rnd() < 0.8 ? textContent() || 'x' : ['a', 'b'],
    max_tokens: 1 + Math.floor(rnd() * 3),
    ...(rnd() < 0.3 ? { stream: true } : {}),
    ...(rnd() < 0.1 ? { logprobs: 2 } : {}),
  });
  /** A valid body with one field set to something odd, or removed. */
  const mutate = (body: Record<string, unknown>): Record<string, unknown> => {
    const keys = [
      ...Object.keys(body),
      'temperature',
      'top_p',
      'top_k',
      'n',
      'max_tokens',
      'stop',
      'seed',
      'logit_bias',
      'tools',
      'tool_choice',
      'response_format',
      'repetition_penalty',
      'min_p',
    ];
    const key = pick(keys);
    const copy = { ...body };
    if (rnd() < 0.2) delete copy[key];
    else copy[key] = odd();
    if (Array.isArray(copy.messages) && rnd() < 0.3) {
      copy.messages = [{ role: pick(['user', 'assistant', 'tool', 'x', 1]), content: odd() }];
    }
    return copy;
  };
  const bodyOf = (value: unknown): string | Buffer =>
    pick<() => string | Buffer>([
      () => JSON.stringify(value),
      () => JSON.stringify(value),
      () => JSON.stringify(value).slice(0, Math.floor(rnd() * 40)),
      () => Buffer.from([0xff, 0xfe, 0x00, 0x7b, 0x22]),
      () => '',
      () => 'null',
      () => '[]',
      () => '"a string"',
      () => `${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}`,
    ])();
  const requests: FuzzRequest[] = [];
  for (let i = 0; i < count; i++) {
    const r = rnd();
    if (r < 0.12) {
      requests.push({
        method: pick(['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']),
        target: pick([
          '/',
          '/health',
          '/ready',
          '/metrics',
          '/v1/models',
          '/v1/models/tiny-internvl2_5-qwen2',
          '/v1/models/%E0%A4%A',
          '/v1/models/x%00y',
          '//',
          '/v1//chat/completions',
          '/v1/chat/completions/../../health',
          `/${'a'.repeat(6000)}`,
          '/v1/embeddings',
          '/?q=%%%',
          '*',
        ]),
        headers: rnd() < 0.3 ? { authorization: pick(['Bearer', 'Bearer x', 'Basic Zm9v', '']) } : undefined,
      });
      continue;
    }
    const chat = r < 0.6;
    const valid = chat ? validChat() : validCompletion();
    const value = rnd() < 0.45 ? valid : mutate(valid);
    requests.push({
      method: 'POST',
      target: chat ? '/v1/chat/completions' : '/v1/completions',
      body: rnd() < 0.8 ? JSON.stringify(value) : bodyOf(value),
      headers:
        rnd() < 0.1
          ? { 'content-type': pick(['text/plain', 'application/x-www-form-urlencoded']) }
          : undefined,
      abortAfterMs: rnd() < 0.08 ? Math.floor(rnd() * 30) : undefined,
    });
  }
  return requests;
}
