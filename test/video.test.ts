import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InternVLError } from '../src/errors.js';
import {
  decodeVideoFrames,
  findFfmpeg,
  parseFfmpegRate,
  parseVideoStreamLine,
  probeVideo,
} from '../src/io/video.js';
import { loadVideo } from '../src/pipeline/video-load.js';
import { resizeBicubic } from '../src/preprocess/resize.js';
import { roundHalfEven, videoFrameIndices, videoToTiles } from '../src/preprocess/video.js';
import { GOLDEN_DIR } from './helpers.js';

interface IndexCase {
  num_frames: number;
  max_frame: number;
  fps: number;
  bound: [number, number] | null;
  first_idx: number;
  num_segments: number;
  indices: number[];
}

const isBadVideo = (error: unknown): boolean => error instanceof InternVLError && error.code === 'BAD_VIDEO';

describe('roundHalfEven', () => {
  test('ties go to even, non-ties to nearest', () => {
    const cases: [number, number][] = [
      [0.5, 0],
      [1.5, 2],
      [2.5, 2],
      [3.5, 4],
      [-0.5, -0],
      [-1.5, -2],
      [-2.5, -2],
      [2.5000000000000004, 3],
      [2.4999999999999996, 2],
      [0.49999999999999994, 0],
      [-2.5000000000000004, -3],
      [7, 7],
      [-0.4, -0],
      [0.4, 0],
      [1e300, 1e300],
    ];
    for (const [x, expected] of cases) assert.equal(roundHalfEven(x), expected, `round(${x})`);
  });
});

describe('videoFrameIndices', () => {
  test('matches all golden get_index cases', () => {
    const golden = JSON.parse(fs.readFileSync(path.join(GOLDEN_DIR, 'prep/video_index.json'), 'utf8')) as {
      cases: IndexCase[];
    };
    assert.equal(golden.cases.length, 259);
    const failures: string[] = [];
    golden.cases.forEach((c, id) => {
      assert.equal(c.max_frame, c.num_frames - 1);
      const got = videoFrameIndices({
        numFrames: c.num_frames,
        fps: c.fps,
        numSegments: c.num_segments,
        bound: c.bound,
        firstIdx: c.first_idx,
      });
      const same = got.length === c.indices.length && got.every((v, i) => Object.is(v, c.indices[i]));
      if (!same)
        failures.push(`case ${id}: expected ${JSON.stringify(c.indices)}, got ${JSON.stringify(got)}`);
    });
    assert.deepEqual(failures, []);
  });

  test('negative segment size runs downward past the last frame, as the reference does', () => {
    assert.deepEqual(
      videoFrameIndices({ numFrames: 300, fps: 30, numSegments: 8, bound: [12, 20] }).slice(0, 2),
      [356, 348],
    );
  });

  test('rejects bad arguments with BAD_VIDEO', () => {
    const base = { numFrames: 10, fps: 10, numSegments: 4 };
    for (const bad of [
      { ...base, numSegments: 0 },
      { ...base, numSegments: 2.5 },
      { ...base, fps: 0 },
      { ...base, fps: Number.NaN },
      { ...base, fps: Number.POSITIVE_INFINITY },
      { ...base, numFrames: 0 },
      { ...base, numFrames: 1.5 },
      { ...base, firstIdx: -1 },
      { ...base, bound: [0, Number.NaN] as [number, number] },
    ]) {
      assert.throws(() => videoFrameIndices(bad), isBadVideo, JSON.stringify(bad));
    }
  });
});

describe('ffmpeg output parsing', () => {
  test('rates: exact as printed, NTSC rates restored to k·1000/1001', () => {
    assert.equal(parseFfmpegRate('25'), 25);
    assert.equal(parseFfmpegRate('12.50'), 12.5);
    assert.equal(parseFfmpegRate('29.97'), 30000 / 1001);
    assert.equal(parseFfmpegRate('23.98'), 24000 / 1001);
    assert.equal(parseFfmpegRate('59.94'), 60000 / 1001);
    assert.equal(parseFfmpegRate('1k'), 1000);
    assert.ok(Number.isNaN(parseFfmpegRate('')));
  });

  test('stream line: skips cover art, reads size and fps, falls back to tbr', () => {
    const stderr = [
      "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'a.mp4':",
      '  Duration: 00:00:01.00, start: 0.000000, bitrate: 69 kb/s',
      '  Stream #0:0[0x1](und): Video: mjpeg (Baseline), yuvj420p(pc, bt470bg/unknown/unknown), 600x600, 90k tbr (attached pic)',
      '  Stream #0:1[0x2](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709, progressive), 1920x1080 [SAR 1:1 DAR 16:9], 69 kb/s, 29.97 fps, 29.97 tbr, 30k tbn (default)',
      'Stream mapping:',
      '  Stream #0:1 -> #0:0 (h264 (native) -> wrapped_avframe (native))',
    ].join('\n');
    assert.deepEqual(parseVideoStreamLine(stderr), { width: 1920, height: 1080, fps: 30000 / 1001 });
    const noFps =
      "Input #0, matroska, from 'b.mkv':\n    Stream #0:0: Video: ffv1 (FFV1 / 0x31564646), bgr0, 64x48, SAR 1:1 DAR 4:3, 10 tbr, 1k tbn\n";
    assert.deepEqual(parseVideoStreamLine(noFps), { width: 64, height: 48, fps: 10 });
    assert.equal(
      parseVideoStreamLine("Input #0, wav, from 'c.wav':\n    Stream #0:0: Audio: pcm_s16le\n"),
      null,
    );
  });
});

describe('video decoding with ffmpeg', () => {
  const WIDTH = 64;
  const HEIGHT = 48;
  const NUM_FRAMES = 20;
  let dir = '';
  let video = '';
  let ntscVideo = '';

  /** Frame k: R encodes k, G the column, B the row, so a decoded frame identifies itself exactly. */
  const syntheticFrame = (k: number): Uint8Array => {
    const data = new Uint8Array(WIDTH * HEIGHT * 3);
    for (let y = 0; y < HEIGHT; y++) {
      for (let x = 0; x < WIDTH; x++) {
        const o = (y * WIDTH + x) * 3;
        data[o] = k * 12;
        data[o + 1] = x * 4;
        data[o + 2] = y * 5;
      }
    }
    return data;
  };

  const encode = (rate: string, output: string, frames: number): void => {
    const raw = path.join(dir, 'frames.rgb');
    fs.writeFileSync(raw, Buffer.concat(Array.from({ length: frames }, (_, k) => syntheticFrame(k))));
    const result = spawnSync(
      findFfmpeg(),
      [
        '-hide_banner',
        '-nostdin',
        '-loglevel',
        'error',
        '-y',
        '-f',
        'rawvideo',
        '-pix_fmt',
        'rgb24',
        '-s',
        `${WIDTH}x${HEIGHT}`,
        '-r',
        rate,
        '-i',
        raw,
        '-c:v',
        'ffv1',
        output,
      ],
      { encoding: 'utf8', timeout: 60_000 },
    );
    assert.equal(result.status, 0, `ffmpeg could not make the test video: ${result.stderr}`);
  };

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'internvl-video-'));
    video = path.join(dir, 'clip.mkv');
    ntscVideo = path.join(dir, 'ntsc.avi');
    encode('10', video, NUM_FRAMES);
    encode('30000/1001', ntscVideo, 6);
  });
  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const frameNumberOf = (frame: { data: Uint8Array }): number => {
    const k = frame.data[0]! / 12;
    assert.deepEqual(frame.data, syntheticFrame(k), 'decoded pixels are exactly a source frame');
    return k;
  };

  test('probe: decoded frame count, average fps, size', async () => {
    assert.deepEqual(await probeVideo(video), {
      numFrames: NUM_FRAMES,
      fps: 10,
      width: WIDTH,
      height: HEIGHT,
    });
    const ntsc = await probeVideo(ntscVideo);
    assert.equal(ntsc.numFrames, 6);
    assert.equal(ntsc.fps, 30000 / 1001);
  });

  test('loadVideo returns exactly the frames get_index picks (default 8 segments)', async () => {
    const loaded = await loadVideo(video);
    assert.equal(loaded.numFrames, NUM_FRAMES);
    assert.equal(loaded.fps, 10);
    assert.deepEqual(loaded.indices, [1, 3, 6, 8, 11, 13, 15, 18]);
    assert.deepEqual(loaded.frames.map(frameNumberOf), loaded.indices);
    for (const frame of loaded.frames) {
      assert.equal(frame.width, WIDTH);
      assert.equal(frame.height, HEIGHT);
    }
  });

  test('repeated indices give duplicated, independent frames', async () => {
    const loaded = await loadVideo(video, { numSegments: 32 });
    assert.equal(loaded.indices.length, 32);
    assert.ok(new Set(loaded.indices).size < 32, 'the case has repeats');
    assert.deepEqual(loaded.frames.map(frameNumberOf), loaded.indices);
    const info = await probeVideo(video);
    const frames = await decodeVideoFrames(video, [5, 2, 5], info);
    assert.deepEqual(frames.map(frameNumberOf), [5, 2, 5]);
    frames[0]!.data[0] = 255;
    assert.equal(frames[2]!.data[0], 5 * 12);
  });

  test('a bound past the end keeps the unclamped indices and decodes clamped frames', async () => {
    const loaded = await loadVideo(video, { numSegments: 4, bound: [3, 4] });
    const expected = videoFrameIndices({ numFrames: NUM_FRAMES, fps: 10, numSegments: 4, bound: [3, 4] });
    assert.deepEqual(loaded.indices, expected);
    assert.ok(loaded.indices.some((i) => i > NUM_FRAMES - 1));
    assert.deepEqual(
      loaded.frames.map(frameNumberOf),
      expected.map((i) => Math.min(Math.max(i, 0), NUM_FRAMES - 1)),
    );
  });

  test('a bound inside the clip', async () => {
    const loaded = await loadVideo(video, { numSegments: 4, bound: [0.5, 1.5] });
    assert.deepEqual(loaded.indices, [6, 8, 11, 14]);
    assert.deepEqual(loaded.frames.map(frameNumberOf), loaded.indices);
  });

  test('videoToTiles: one direct bicubic resize per frame', async () => {
    const { frames } = await loadVideo(video, { numSegments: 2 });
    const tiles = videoToTiles(frames, 32);
    assert.equal(tiles.length, 2);
    tiles.forEach((tile, i) => {
      assert.deepEqual([tile.width, tile.height], [32, 32]);
      assert.deepEqual(tile, resizeBicubic(frames[i]!, 32, 32));
    });
    assert.deepEqual(
      videoToTiles(frames).map((t) => [t.width, t.height]),
      [
        [448, 448],
        [448, 448],
      ],
    );
    assert.throws(() => videoToTiles(frames, 0), isBadVideo);
  });

  test('errors: missing file, directory, not a video, bad options, timeout, abort', async () => {
    const missing = path.join(dir, 'missing.mp4');
    await assert.rejects(loadVideo(missing), (e: unknown) => isBadVideo(e) && String(e).includes(missing));
    await assert.rejects(loadVideo(dir), isBadVideo);
    const text = path.join(dir, 'notes.mp4');
    fs.writeFileSync(text, 'this is not a video\n');
    await assert.rejects(
      loadVideo(text),
      (e: unknown) => isBadVideo(e) && String(e).includes(text) && String(e).includes('ffmpeg failed'),
    );
    await assert.rejects(loadVideo(video, { numSegments: 0 }), isBadVideo);
    await assert.rejects(loadVideo(video, { numSegments: 16, maxFrames: 8 }), isBadVideo);
    await assert.rejects(
      probeVideo(video, { timeoutMs: 1 }),
      (e: unknown) => isBadVideo(e) && String(e).includes('timed out'),
    );
    await assert.rejects(
      probeVideo(video, { signal: AbortSignal.abort() }),
      (e: unknown) => e instanceof InternVLError && e.code === 'ABORTED',
    );
    const info = await probeVideo(video);
    await assert.rejects(decodeVideoFrames(video, [NUM_FRAMES], info), isBadVideo);
  });
});
