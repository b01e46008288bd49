import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import type { DataIo } from '../src/cli/data.js';

export interface DataFixture {
  dir: string;
  meta: string;
  cleanup(): Promise<void>;
}

const q = (value: string) => ({ from: 'human', value });
const a = (value: string) => ({ from: 'gpt', value });
const line = (obj: unknown) => JSON.stringify(obj);

async function png(file: string, width: number, height: number, seed: number): Promise<void> {
  const data = Buffer.alloc(width * height * 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31 + seed * 17 + ((i / 3) % width)) & 255;
  await sharp(data, { raw: { width, height, channels: 3 } })
    .png()
    .toFile(file);
}

/**
 * A small dataset in the official layout: `meta.json` beside `data/` (annotations) and `media/` (root), with
 * an augmented image dataset (repeat 2, n_max 6) holding deliberate bad lines (lines 3–6), a video dataset with
 * data_augment on, and a text dataset subsampled by repeat_time 0.5.
 */
export async function createDataFixture(): Promise<DataFixture> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'internvl-data-'));
  await mkdir(path.join(dir, 'media'));
  await mkdir(path.join(dir, 'data'));
  await png(path.join(dir, 'media/wide.png'), 600, 400, 1);
  await png(path.join(dir, 'media/square.png'), 448, 448, 2);
  await png(path.join(dir, 'media/tiny.png'), 8, 8, 3);
  await writeFile(path.join(dir, 'media/clip.mp4'), 'not decoded in reference mode');

  const images = [
    line({ image: 'wide.png', conversations: [q('What is shown?'), a('A synthetic gradient.')] }),
    line({
      image: ['wide.png', 'square.png'],
      conversations: [q('Image-1: <image>\nImage-2: <image>\nCompare them.'), a('The first is wider.')],
    }),
    '{"image": "wide.png", "conversations": [',
    line({ image: 'missing.png', conversations: [q('<image>\nHi'), a('Hello.')] }),
    line({ image: ['wide.png', 'square.png'], conversations: [q('<image>\nOnly one tag.'), a('Oops.')] }),
    line({ image: 'square.png', conversations: [q('<image>\nDescribe.'), a('  ')] }),
    '',
    line({ image: 'tiny.png', conversations: [q('<image>\nTiny?'), a('Yes, tiny.')] }),
  ];
  const video = [
    line({ video: 'clip.mp4', conversations: [q('<video>\nWhat happens?'), a('Nothing much.')] }),
  ];
  const text = [
    line({ conversations: [q('Say hello.'), a('Hello!')] }),
    line({ conversations: [{ from: 'system', value: 'Be brief.' }, q('2+2?'), a('4.'), q('3+3?'), a('6.')] }),
    line({
      conversations: [q('Count.'), a('one two three four five six seven eight nine ten eleven twelve')],
    }),
    line({ conversations: [q('Name a colour.'), a('Blue.')] }),
  ];
  await writeFile(path.join(dir, 'data/images.jsonl'), `${images.join('\n')}\n`);
  await writeFile(path.join(dir, 'data/video.jsonl'), `${video.join('\n')}\n`);
  await writeFile(path.join(dir, 'data/text.jsonl'), `${text.join('\n')}\n`);
  const meta = {
    images: {
      root: 'media',
      annotation: 'data/images.jsonl',
      data_augment: true,
      max_dynamic_patch: 6,
      repeat_time: 2,
      length: 8,
    },
    video: { root: 'media/', annotation: 'data/video.jsonl', data_augment: true, repeat_time: 1, length: 1 },
    text: { root: '', annotation: 'data/text.jsonl', data_augment: false, repeat_time: 0.5, length: 4 },
  };
  const metaFile = path.join(dir, 'meta.json');
  await writeFile(metaFile, JSON.stringify(meta, null, 2));
  return { dir, meta: metaFile, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** An in-memory DataIo for dataCommand. */
export function memoryIo(): { io: DataIo; stdout: () => string; stderr: () => string } {
  let out = '';
  let err = '';
  return {
    io: {
      stdout: { write: (text: string) => (out += text) },
      stderr: { write: (text: string) => (err += text), isTTY: false },
    },
    stdout: () => out,
    stderr: () => err,
  };
}
