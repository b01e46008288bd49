import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { crc32, deflateSync } from 'node:zlib';
import sharp from 'sharp';
import { InternVLError } from '../src/errors.js';
import { loadImage } from '../src/io/image.js';
import { toPixelValues } from '../src/preprocess/pixels.js';
import { dynamicPreprocess } from '../src/preprocess/tiles.js';
import { GOLDEN_DIR } from './helpers.js';

const PREP = path.join(GOLDEN_DIR, 'prep');

interface PixelGolden {
  source: string;
  decoded_rgb_sha256: string;
  width: number;
  height: number;
  grid: [number, number];
  thumbnail_appended: boolean;
  tiles_file: string;
  shape: [number, number, number, number];
  tiles_sha256: string;
  tile0_ch0_row0_first16_uint8: number[];
  tile0_ch0_row0_first16_normalized_float32: number[];
  tile_last_row100_x200_215_uint8: [number, number, number][];
  tile_last_row100_x200_215_all_channels_normalized_float32: number[][];
}

const pixels = JSON.parse(readFileSync(path.join(PREP, 'pixels.json'), 'utf8')) as { images: PixelGolden[] };

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

function badImage(pattern: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof InternVLError, `expected InternVLError, got ${e}`);
    assert.equal(e.code, 'BAD_IMAGE');
    assert.match(e.message, pattern);
    return true;
  };
}

function pngChunk(type: string, data: Uint8Array): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([head, body, crc]);
}

/** A minimal PNG: IHDR (+ extra chunks) + one IDAT of unfiltered rows + IEND. */
function makePng(
  width: number,
  height: number,
  bitDepth: number,
  colorType: number,
  rows: Buffer[],
  extra: Buffer[] = [],
): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = bitDepth;
  ihdr[9] = colorType;
  const raw = Buffer.concat(rows.map((r) => Buffer.concat([Buffer.from([0]), r])));
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    pngChunk('IHDR', ihdr),
    ...extra,
    pngChunk('IDAT', deflateSync(raw)),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

let tmp = '';
before(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'internvl-image-test-'));
});
after(() => {
  rmSync(tmp, { recursive: true, force: true });
});

for (const g of pixels.images) {
  test(`golden pipeline ${path.basename(g.source)}: decode, tiles byte-exact, spot values`, async () => {
    const image = await loadImage(path.join(PREP, g.source));
    assert.equal(image.width, g.width);
    assert.equal(image.height, g.height);
    assert.equal(sha256(image.data), g.decoded_rgb_sha256, 'decoded RGB differs from Pillow convert("RGB")');

    const { grid, tiles } = dynamicPreprocess(image, { minTiles: 1, maxTiles: 6, useThumbnail: true });
    assert.deepEqual([grid.cols, grid.rows], g.grid);
    assert.equal(tiles.length, g.shape[0]);
    const expected = readFileSync(path.join(PREP, g.tiles_file));
    const tileBytes = g.shape[1] * g.shape[2] * g.shape[3];
    assert.equal(expected.length, tiles.length * tileBytes);
    tiles.forEach((tile, n) => {
      assert.equal(tile.width, 448);
      assert.equal(tile.height, 448);
      const want = expected.subarray(n * tileBytes, (n + 1) * tileBytes);
      assert.equal(
        Buffer.compare(Buffer.from(tile.data.buffer, tile.data.byteOffset, tile.data.length), want),
        0,
        `tile ${n}`,
      );
    });

    const values = toPixelValues(tiles);
    assert.equal(values.length, tiles.length * 3 * 448 * 448);
    assert.deepEqual(
      Array.from(tiles[0].data.filter((_, i) => i % 3 === 0).subarray(0, 16)),
      g.tile0_ch0_row0_first16_uint8,
    );
    assert.deepEqual(Array.from(values.subarray(0, 16)), g.tile0_ch0_row0_first16_normalized_float32);
    const last = tiles.length - 1;
    const lastTile = tiles[last];
    for (let c = 0; c < 3; c++) {
      const base = (last * 3 + c) * 448 * 448 + 100 * 448;
      assert.deepEqual(
        Array.from(values.subarray(base + 200, base + 216)),
        g.tile_last_row100_x200_215_all_channels_normalized_float32[c],
        `last tile channel ${c}`,
      );
    }
    const spot = Array.from({ length: 16 }, (_, i) =>
      Array.from(lastTile.data.subarray((100 * 448 + 200 + i) * 3, (100 * 448 + 201 + i) * 3)),
    );
    assert.deepEqual(spot, g.tile_last_row100_x200_215_uint8);
  });
}

const s0Path = path.join(PREP, 'sources/s0_500x300_rgb.png');
const s2Path = path.join(PREP, 'sources/s2_37x61_rgb.png');

test('bytes, file: URL and data URLs decode like the path', async () => {
  const fromPath = await loadImage(s2Path);
  const bytes = new Uint8Array(readFileSync(s2Path));
  assert.deepEqual((await loadImage(bytes)).data, fromPath.data);
  assert.deepEqual((await loadImage(pathToFileURL(s2Path))).data, fromPath.data);
  const base64 = `data:image/png;base64,${Buffer.from(bytes).toString('base64')}`;
  assert.deepEqual((await loadImage(base64)).data, fromPath.data);
  assert.deepEqual((await loadImage(new URL(base64))).data, fromPath.data);
  const percent = `data:image/png,${Array.from(bytes, (b) => `%${b.toString(16).padStart(2, '0')}`).join('')}`;
  assert.deepEqual((await loadImage(percent)).data, fromPath.data);
});

test('GIF and WebP decode to their first frame; EXIF orientation is ignored', async () => {
  const frame = (r: number, g: number, b: number) =>
    sharp({ create: { width: 8, height: 6, channels: 3, background: { r, g, b } } })
      .png()
      .toBuffer();
  const frames = [await frame(255, 0, 0), await frame(0, 0, 255)];
  const gif = await sharp(frames, { join: { animated: true } })
    .gif()
    .toBuffer();
  const webp = await sharp(frames, { join: { animated: true } })
    .webp({ lossless: true })
    .toBuffer();
  for (const [name, encoded] of [
    ['gif', gif],
    ['webp', webp],
  ] as const) {
    const img = await loadImage(new Uint8Array(encoded));
    assert.deepEqual([img.width, img.height], [8, 6], name);
    assert.deepEqual(
      img.data,
      new Uint8Array(8 * 6 * 3).map((_, i) => (i % 3 === 0 ? 255 : 0)),
      name,
    );
  }
  const rotated = await sharp({
    create: { width: 8, height: 4, channels: 3, background: { r: 9, g: 9, b: 9 } },
  })
    .jpeg()
    .withMetadata({ orientation: 6 })
    .toBuffer();
  assert.equal((await sharp(rotated).metadata()).orientation, 6);
  const img = await loadImage(new Uint8Array(rotated));
  assert.deepEqual([img.width, img.height], [8, 4]);
});

test('16-bit and palette PNGs convert like Pillow', async () => {
  const samples = [0, 255, 256, 1000, 40000, 65535];
  const row16 = Buffer.alloc(samples.length * 2);
  samples.forEach((v, i) => {
    row16.writeUInt16BE(v, i * 2);
  });
  // RGB 16-bit: Pillow keeps the high byte.
  const rgb16 = await loadImage(makePng(2, 1, 16, 2, [row16]));
  assert.deepEqual(Array.from(rgb16.data), [0, 0, 1, 3, 156, 255]);
  // Gray 16-bit opens as mode "I"; convert('RGB') clamps to 255.
  const gray16 = await loadImage(makePng(6, 1, 16, 0, [row16]));
  assert.deepEqual(
    Array.from(gray16.data),
    samples.flatMap((v) => [Math.min(v, 255), Math.min(v, 255), Math.min(v, 255)]),
  );
  // Palette with a transparent entry: the palette colour is kept, alpha dropped.
  const plte = pngChunk('PLTE', Buffer.from([10, 20, 30, 200, 100, 50]));
  const trns = pngChunk('tRNS', Buffer.from([0, 255]));
  const palette = await loadImage(makePng(3, 1, 8, 3, [Buffer.from([0, 1, 0])], [plte, trns]));
  assert.deepEqual(Array.from(palette.data), [10, 20, 30, 200, 100, 50, 10, 20, 30]);
});

test('guard rails: truncated, non-image, empty, missing, oversized', async () => {
  const png = readFileSync(s0Path);
  const truncatedPng = new Uint8Array(png.subarray(0, Math.floor(png.length / 2)));
  await assert.rejects(
    loadImage(truncatedPng),
    badImage(new RegExp(`bytes \\(${truncatedPng.length} bytes\\)`)),
  );
  const jpg = readFileSync(path.join(PREP, 'sources/s4_1920x1080_rgb_q90.jpg'));
  const truncatedJpgPath = path.join(tmp, 'truncated.jpg');
  writeFileSync(truncatedJpgPath, jpg.subarray(0, Math.floor(jpg.length * 0.6)));
  await assert.rejects(loadImage(truncatedJpgPath), badImage(/truncated\.jpg/));

  const textPath = path.join(tmp, 'notes.txt');
  writeFileSync(textPath, 'this is not an image\n');
  await assert.rejects(loadImage(textPath), badImage(/notes\.txt.*not a readable image/));
  await assert.rejects(loadImage(new Uint8Array(0)), badImage(/bytes \(0 bytes\).*empty/));
  await assert.rejects(loadImage(path.join(tmp, 'missing.png')), badImage(/not found: .*missing\.png/));
  await assert.rejects(loadImage(tmp), badImage(/directory/));
  await assert.rejects(loadImage('data:image/png;base64,@@@'), badImage(/invalid base64/));
  await assert.rejects(loadImage('ftp://example.com/a.png'), badImage(/unsupported image URL scheme ftp:/));

  // The header claims 100000×100000; the pixel data is a few bytes, so only a header check can give this message.
  const bomb = makePng(100000, 100000, 8, 2, [Buffer.alloc(3)]);
  await assert.rejects(
    loadImage(new Uint8Array(bomb)),
    badImage(/declares 100000×100000 = 10000000000 pixels/),
  );
  await assert.rejects(loadImage(s0Path, { maxPixels: 100_000 }), badImage(/500×300.*limit of 100000/));
  await assert.rejects(loadImage(s0Path, { maxBytes: 1000 }), badImage(/above the limit of 1000/));
  await assert.rejects(
    loadImage(s0Path, { maxPixels: -1 }),
    (e: unknown) => e instanceof InternVLError && e.code === 'BAD_INPUT',
  );
});

test('http: fetches from a local server; status errors, size limit and timeout name the URL', async () => {
  const body = readFileSync(s2Path);
  const server: Server = createServer((req, res) => {
    if (req.url === '/img.png') {
      res.writeHead(200, { 'content-type': 'image/png' });
      res.end(body);
    } else if (req.url === '/slow.png') {
      res.writeHead(200, { 'content-type': 'image/png' });
      res.write(body.subarray(0, 10));
    } else {
      res.writeHead(404);
      res.end('nope');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const img = await loadImage(`${base}/img.png`);
    assert.deepEqual(img.data, (await loadImage(s2Path)).data);
    await assert.rejects(loadImage(`${base}/gone.png`), badImage(new RegExp(`${base}/gone\\.png.*HTTP 404`)));
    await assert.rejects(loadImage(`${base}/img.png`, { maxBytes: 100 }), badImage(/img\.png.*limit of 100/));
    await assert.rejects(
      loadImage(`${base}/slow.png`, { fetchTimeoutMs: 200 }),
      badImage(/slow\.png timed out after 200 ms/),
    );
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});
