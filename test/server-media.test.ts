import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { HttpError, toOpenAIError } from '../src/server/errors.js';
import {
  DEFAULT_MEDIA_POLICY,
  domainAllowed,
  fetchImageBytes,
  isNonPublicAddress,
  loadRequestImage,
  type MediaPolicy,
  materializeVideo,
} from '../src/server/media.js';
import { GOLDEN_DIR } from './helpers.js';

const IMAGE = path.join(GOLDEN_DIR, 'prep/sources/s2_37x61_rgb.png');
const png = readFileSync(IMAGE);

let origin: string;
let server: http.Server;
before(async () => {
  server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/img.png') {
      res.writeHead(200, { 'content-type': 'image/png' });
      res.end(png);
    } else if (url.pathname === '/redirect') {
      res.writeHead(302, { location: url.searchParams.get('to') ?? '/img.png' });
      res.end();
    } else if (url.pathname === '/loop') {
      res.writeHead(302, { location: '/loop' });
      res.end();
    } else if (url.pathname === '/hang') {
      res.writeHead(200);
      res.write('x');
    } else if (url.pathname === '/not-an-image') {
      res.end('hello');
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

const local: MediaPolicy = { ...DEFAULT_MEDIA_POLICY, allowPrivateAddresses: true };

async function rejectsWith(promise: Promise<unknown>, pattern: RegExp, openaiCode?: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof HttpError, `expected an HttpError, got ${String(err)}`);
    assert.equal(err.status, 400);
    assert.match(err.message, pattern);
    if (openaiCode) assert.equal(err.openaiCode, openaiCode);
    return true;
  });
}

describe('address and domain checks', () => {
  test('non-public addresses', () => {
    for (const ip of [
      '127.0.0.1',
      '10.1.2.3',
      '192.168.0.1',
      '172.20.0.1',
      '169.254.169.254',
      '::1',
      'fe80::1',
      'fd00::1',
      '::ffff:127.0.0.1',
      '0.0.0.0',
    ]) {
      assert.equal(isNonPublicAddress(ip), true, ip);
    }
    for (const ip of ['8.8.8.8', '1.1.1.1', '2606:4700::1111', 'example.com']) {
      assert.equal(isNonPublicAddress(ip), false, ip);
    }
  });

  test('allow-list admits the domain and its subdomains only', () => {
    assert.equal(domainAllowed('example.com', ['example.com']), true);
    assert.equal(domainAllowed('img.Example.com', ['example.com']), true);
    assert.equal(domainAllowed('evilexample.com', ['example.com']), false);
    assert.equal(domainAllowed('example.com.evil.org', ['example.com']), false);
  });
});

describe('fetching images under the policy', () => {
  test('http, redirects and data URLs give the same bytes', async () => {
    const direct = await fetchImageBytes(`${origin}/img.png`, local, 'url');
    assert.deepEqual(Buffer.from(direct.bytes), png);
    const redirected = await fetchImageBytes(`${origin}/redirect`, local, 'url');
    assert.deepEqual(Buffer.from(redirected.bytes), png);
    const data = await fetchImageBytes(`data:image/png;base64,${png.toString('base64')}`, local, 'url');
    assert.deepEqual(Buffer.from(data.bytes), png);
    const image = await loadRequestImage(`${origin}/img.png`, local, 'url');
    assert.equal(image.width, 37);
    assert.equal(image.height, 61);
  });

  test('private addresses are refused by default, literal or resolved', async () => {
    await rejectsWith(
      fetchImageBytes(`${origin}/img.png`, DEFAULT_MEDIA_POLICY, 'p'),
      /127\.0\.0\.1 is not a public address/,
    );
    const port = new URL(origin).port;
    await rejectsWith(
      fetchImageBytes(`http://localhost:${port}/img.png`, DEFAULT_MEDIA_POLICY, 'p'),
      /localhost resolves to .* not a public address/,
      'media_domain_not_allowed',
    );
  });

  test('the allow-list is checked again on every redirect hop', async () => {
    const port = new URL(origin).port;
    const policy = { ...local, allowedDomains: ['localhost'] };
    assert.equal(
      (await fetchImageBytes(`http://localhost:${port}/img.png`, policy, 'p')).bytes.length,
      png.length,
    );
    await rejectsWith(
      fetchImageBytes(
        `http://localhost:${port}/redirect?to=${encodeURIComponent(`${origin}/img.png`)}`,
        policy,
        'p',
      ),
      /host 127\.0\.0\.1 is not in the allowed media domains \(localhost\)/,
      'media_domain_not_allowed',
    );
    await rejectsWith(
      fetchImageBytes(`${origin}/redirect?to=file:///etc/passwd`, local, 'p'),
      /only http\(s\) URLs/,
    );
    await rejectsWith(fetchImageBytes(`${origin}/loop`, local, 'p'), /redirected more than 5 times/);
  });

  test('HTTP errors, size limit, timeout, undecodable bytes', async () => {
    await rejectsWith(fetchImageBytes(`${origin}/missing`, local, 'p'), /HTTP 404/, 'media_fetch_failed');
    await rejectsWith(
      fetchImageBytes(`${origin}/img.png`, { ...local, maxImageBytes: 100 }, 'p'),
      /limit of 100 bytes/,
      'media_too_large',
    );
    await rejectsWith(
      fetchImageBytes(`${origin}/hang`, { ...local, fetchTimeoutMs: 200 }, 'p'),
      /timed out after 200 ms/,
      'media_fetch_timeout',
    );
    await rejectsWith(
      loadRequestImage(`${origin}/not-an-image`, local, 'p'),
      /not a readable image/,
      'invalid_image',
    );
  });

  test('data URLs must be base64; local files only when allowed; other schemes refused', async () => {
    await rejectsWith(fetchImageBytes('data:image/png,abc', local, 'p'), /base64/);
    await rejectsWith(fetchImageBytes('data:image/png;base64,@@@', local, 'p'), /invalid base64/);
    await rejectsWith(fetchImageBytes(IMAGE, local, 'p'), /--allow-local-files/, 'local_files_not_allowed');
    await rejectsWith(fetchImageBytes(`file://${IMAGE}`, local, 'p'), /--allow-local-files/);
    await rejectsWith(
      fetchImageBytes('ftp://example.com/a.png', local, 'p'),
      /http\(s\) URL or a base64 data URL/,
    );
    const allowed = await fetchImageBytes(IMAGE, { ...local, allowLocalFiles: true }, 'p');
    assert.equal(allowed.bytes.length, png.length);
  });

  test('a downloaded video lives in a temporary file until released', async () => {
    const video = await materializeVideo(`${origin}/img.png`, local, 'v');
    assert.deepEqual(readFileSync(video.path), png);
    await video.release();
    assert.equal(existsSync(video.path), false);
    await rejectsWith(
      materializeVideo(`${origin}/img.png`, { ...local, maxVideoBytes: 10 }, 'v'),
      /limit of 10 bytes/,
    );
  });
});

test('error bodies have the OpenAI shape and the status of their code', () => {
  const e = toOpenAIError(
    new HttpError(404, 'no such model', { param: 'model', openaiCode: 'model_not_found' }),
  );
  assert.deepEqual(e, {
    status: 404,
    body: {
      error: { message: 'no such model', type: 'not_found_error', param: 'model', code: 'model_not_found' },
    },
  });
  assert.equal(toOpenAIError(new TypeError('boom')).status, 500);
});
