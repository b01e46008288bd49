import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InternVLError } from '../src/errors.js';
import { applyStopStrings, StopStringMatcher } from '../src/pipeline/stop.js';

/** Feeds `chunks` through a matcher the way a stream does; returns the output and whether it stopped. */
function stream(stops: string[], chunks: string[]): { text: string; stopped: boolean; log: string[] } {
  const matcher = new StopStringMatcher(stops);
  const log: string[] = [];
  let stopped = false;
  for (const chunk of chunks) {
    const r = matcher.push(chunk);
    log.push(r.emit);
    if (r.stopped) {
      stopped = true;
      break;
    }
  }
  if (!stopped) log.push(matcher.flush());
  return { text: log.join(''), stopped, log };
}

/** Every split of `text` into two or three chunks. */
function* splits(text: string): Generator<string[]> {
  for (let i = 0; i <= text.length; i++) {
    for (let j = i; j <= text.length; j++) {
      yield [text.slice(0, i), text.slice(i, j), text.slice(j)];
    }
  }
}

const CASES: { stops: string[]; text: string; want: string; stopped: boolean }[] = [
  { stops: ['<|end|>'], text: 'Hello <|en world<|end|> after', want: 'Hello <|en world', stopped: true },
  { stops: ['STOP'], text: 'no stop here, ST', want: 'no stop here, ST', stopped: false },
  { stops: ['aab'], text: 'xaaab!', want: 'xa', stopped: true },
  { stops: ['abab'], text: 'abababab', want: '', stopped: true },
  // The first stop string to be completed wins; at the same end, the one starting earlier.
  { stops: ['abcd', 'bc'], text: 'xabcd', want: 'xa', stopped: true },
  { stops: ['c', 'abc'], text: '12abc', want: '12', stopped: true },
  {
    stops: ['\n\n', 'User:'],
    text: 'line one\nline two\n\nUser: hi',
    want: 'line one\nline two',
    stopped: true,
  },
  { stops: ['猫'], text: '我的猫很可爱', want: '我的', stopped: true },
  { stops: ['😀x'], text: 'a😀😀xb', want: 'a😀', stopped: true },
  { stops: [], text: 'anything', want: 'anything', stopped: false },
];

describe('StopStringMatcher', () => {
  it('gives the same output for every chunking of the text', () => {
    for (const { stops, text, want, stopped } of CASES) {
      assert.deepEqual(applyStopStrings(text, stops), { text: want, stopped }, text);
      for (const chunks of splits(text)) {
        const r = stream(stops, chunks);
        assert.equal(r.text, want, `${JSON.stringify(stops)} ${JSON.stringify(chunks)}`);
        assert.equal(r.stopped, stopped);
      }
      const perChar = stream(stops, [...text]);
      assert.equal(perChar.text, want);
    }
  });

  it('emits text as soon as it cannot start a stop string and holds back a partial match', () => {
    const matcher = new StopStringMatcher(['</answer>']);
    assert.deepEqual(matcher.push('The result is 4'), { emit: 'The result is 4', stopped: false });
    assert.deepEqual(matcher.push(' </ans'), { emit: ' ', stopped: false });
    assert.deepEqual(matcher.push('wer'), { emit: '', stopped: false });
    assert.deepEqual(matcher.push('s>'), { emit: '</answers>', stopped: false });
    assert.deepEqual(matcher.push(' </'), { emit: ' ', stopped: false });
    assert.deepEqual(matcher.push('answer> tail'), { emit: '', stopped: true });
    assert.equal(matcher.matchedStop, '</answer>');
    assert.equal(matcher.stopped, true);
    assert.deepEqual(matcher.push('more'), { emit: '', stopped: true });
    assert.equal(matcher.flush(), '');
  });

  it('flush releases held text when the stream ends without a stop', () => {
    const matcher = new StopStringMatcher(['###']);
    assert.deepEqual(matcher.push('a ##'), { emit: 'a ', stopped: false });
    assert.equal(matcher.flush(), '##');
    assert.equal(matcher.stopped, false);
    assert.equal(matcher.matchedStop, undefined);
  });

  it('rejects empty stop strings', () => {
    assert.throws(
      () => new StopStringMatcher(['ok', '']),
      (e: unknown) => e instanceof InternVLError && e.code === 'BAD_INPUT' && /non-empty/.test(e.message),
    );
  });
});
