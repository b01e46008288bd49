import assert from 'node:assert/strict';
import { copyFile, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InternVLError } from '../src/errors.js';
import { bf16ToFloat32, float16ToFloat32, float32ToBf16, float32ToFloat16 } from '../src/io/float-formats.js';
import { Checkpoint } from '../src/io/safetensors.js';
import type { SafetensorsDType } from '../src/io/safetensors-format.js';
import { writeSafetensors, writeSafetensorsStreaming } from '../src/io/safetensors-write.js';
import { GOLDEN_DIR, goldenModelDir } from './helpers.js';

let tmp: string;
before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'internvl-st-'));
});
after(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const sum = (a: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i];
  return s;
};

function isError(code: string, ...fragments: string[]) {
  return (err: unknown) => {
    assert.ok(err instanceof InternVLError, `expected InternVLError, got ${err}`);
    assert.equal(err.code, code, err.message);
    for (const f of fragments) assert.ok(err.message.includes(f), `"${err.message}" should mention "${f}"`);
    return true;
  };
}

describe('golden files', () => {
  test('BF16 model weights', async () => {
    const ckpt = await Checkpoint.open(goldenModelDir('tiny-internvl2_5-qwen2'));
    try {
      assert.equal(ckpt.names().length, 65);
      assert.deepEqual(ckpt.metadata(), { format: 'pt' });
      const info = ckpt.info('vision_model.embeddings.position_embedding');
      assert.equal(info.dtype, 'BF16');
      assert.deepEqual(info.shape, [1, 1025, 64]);
      assert.equal(info.byteLength, 1025 * 64 * 2);
      const cls = await ckpt.readFloat32('vision_model.embeddings.class_embedding');
      assert.deepEqual([...cls.slice(0, 4)], [0.435546875, 0.08740234375, 0.71875, -0.29296875]);
      assert.ok(Math.abs(sum(cls) - 3.31915283203125) < 1e-9);
      const head = await ckpt.readFloat32('language_model.lm_head.weight');
      assert.equal(head.length, 320 * 64);
      assert.deepEqual([...head.slice(0, 3)], [0.08154296875, -0.1923828125, 0.09765625]);
      assert.ok(Math.abs(sum(head) - 1.5721140503883362) < 1e-6);
      assert.throws(
        () => ckpt.info('no.such.tensor'),
        isError('NOT_FOUND', 'no.such.tensor', 'model.safetensors'),
      );
      await assert.rejects(
        ckpt.readInt64('language_model.lm_head.weight'),
        isError('BAD_CHECKPOINT', 'BF16'),
      );
    } finally {
      await ckpt.close();
    }
  });

  test('case files: I64, F32, I32 and BF16 inputs', async () => {
    const ckpt = await Checkpoint.open(
      path.join(GOLDEN_DIR, 'cases/tiny-internvl2_5-qwen2/img1.safetensors'),
    );
    try {
      const ids = await ckpt.readInt64('input_ids');
      assert.equal(ids.length, 479);
      assert.deepEqual([...ids.slice(0, 6)], [257n, 115n, 121n, 115n, 116n, 101n]);
      assert.equal(
        ids.reduce((a, b) => a + b, 0n),
        101951n,
      );
      const projector = await ckpt.readFloat32('projector');
      assert.deepEqual(ckpt.info('projector').shape, [1, 256, 64]);
      assert.equal(projector[0], Math.fround(0.04678027331829071));
      assert.ok(Math.abs(sum(projector) - -336.0752082746476) < 1e-6);
      await assert.rejects(ckpt.readInt32('input_ids'), isError('BAD_CHECKPOINT', 'input_ids', 'I64'));
    } finally {
      await ckpt.close();
    }
    const pixels = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases/_inputs/img1.safetensors'));
    const values = await pixels.readFloat32('pixel_values');
    assert.deepEqual([...values.slice(0, 3)], [-0.291015625, -0.609375, -0.447265625]);
    assert.ok(Math.abs(sum(values) - -142.0264682243578) < 1e-6);
    assert.equal(pixels.metadata().seed, '700100');
    await pixels.close();
    const train = await Checkpoint.open(
      path.join(GOLDEN_DIR, 'cases/train/tiny-internvl2_5-qwen2.pack2.safetensors'),
    );
    assert.deepEqual([...(await train.readInt32('cu_seqlens'))], [0, 489, 693]);
    await train.close();
  });

  test('a truncated copy is rejected at open time, naming the file and the tensor', async () => {
    const file = path.join(tmp, 'truncated.safetensors');
    await copyFile(path.join(goldenModelDir('tiny-internvl2_5-qwen2'), 'model.safetensors'), file);
    await truncate(file, 620952 - 100);
    await assert.rejects(
      Checkpoint.open(file),
      isError('BAD_CHECKPOINT', file, 'language_model.lm_head.weight'),
    );
  });
});

describe('write and read back', () => {
  const samples: Record<SafetensorsDType, ArrayBufferView> = {
    F64: new Float64Array([1.5, -2.25, 1e300, 0.1]),
    F32: new Float32Array([1.5, -2.25, 3e38, 0.1]),
    F16: new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001]),
    BF16: new Uint16Array([0x3f80, 0xc000, 0x7f7f, 0x0001]),
    I64: new BigInt64Array([1n, -2n, 9007199254740993n, -9223372036854775808n]),
    I32: new Int32Array([1, -2, 2147483647, -2147483648]),
    I16: new Int16Array([1, -2, 32767, -32768]),
    I8: new Int8Array([1, -2, 127, -128]),
    U8: new Uint8Array([1, 2, 255, 0]),
    BOOL: new Uint8Array([1, 0, 0, 1]),
  };

  test('every dtype round-trips byte for byte, with metadata', async () => {
    const file = path.join(tmp, 'all.safetensors');
    const tensors = Object.fromEntries(
      Object.entries(samples).map(([dtype, data]) => [
        `t.${dtype}`,
        { dtype: dtype as SafetensorsDType, shape: [2, 2], data },
      ]),
    );
    tensors.empty = { dtype: 'F32', shape: [0, 3], data: new Float32Array(0) };
    tensors.scalar = { dtype: 'I32', shape: [], data: new Int32Array([7]) };
    await writeSafetensors(file, tensors, { format: 'pt', note: 'test' });
    const bytes = await readFile(file);
    const headerLength = Number(bytes.readBigUInt64LE(0));
    assert.equal((8 + headerLength) % 8, 0);
    const ckpt = await Checkpoint.open(file);
    try {
      assert.deepEqual(ckpt.names(), Object.keys(tensors));
      assert.deepEqual(ckpt.metadata(), { format: 'pt', note: 'test' });
      for (const [dtype, data] of Object.entries(samples)) {
        const info = ckpt.info(`t.${dtype}`);
        assert.equal(info.dtype, dtype);
        assert.deepEqual(info.shape, [2, 2]);
        assert.deepEqual(await ckpt.readBytes(`t.${dtype}`), new Uint8Array(data.buffer));
      }
      assert.deepEqual(
        [...(await ckpt.readFloat32('t.F64'))],
        [1.5, -2.25, Number.POSITIVE_INFINITY, Math.fround(0.1)],
      );
      assert.deepEqual([...(await ckpt.readFloat32('t.F16'))], [1, -2, 65504, 2 ** -24]);
      assert.deepEqual(
        [...(await ckpt.readFloat32('t.BF16'))],
        [1, -2, Math.fround(3.3895313892515355e38), 2 ** -133],
      );
      assert.deepEqual([...(await ckpt.readInt64('t.I64'))], [...(samples.I64 as BigInt64Array)]);
      assert.deepEqual([...(await ckpt.readInt32('t.I32'))], [1, -2, 2147483647, -2147483648]);
      assert.equal((await ckpt.readFloat32('empty')).length, 0);
      assert.deepEqual([...(await ckpt.readInt32('scalar'))], [7]);
      await assert.rejects(ckpt.readFloat32('t.U8'), isError('BAD_CHECKPOINT', 't.U8'));
    } finally {
      await ckpt.close();
    }
  });

  test('streaming writer produces tensors on demand and rejects wrong sizes without leaving files', async () => {
    const file = path.join(tmp, 'streamed.safetensors');
    const asked: number[] = [];
    await writeSafetensorsStreaming(
      file,
      [
        { name: 'a', dtype: 'F32', shape: [3] },
        { name: 'b', dtype: 'BF16', shape: [2] },
      ],
      async (i) => {
        asked.push(i);
        return i === 0 ? new Float32Array([1, 2, 3]) : float32ToBf16(new Float32Array([4, 5]));
      },
    );
    assert.deepEqual(asked, [0, 1]);
    const ckpt = await Checkpoint.open(file);
    assert.deepEqual([...(await ckpt.readFloat32('b'))], [4, 5]);
    await ckpt.close();
    const bad = path.join(tmp, 'bad-write.safetensors');
    await assert.rejects(
      writeSafetensors(bad, { x: { dtype: 'F32', shape: [4], data: new Float32Array(3) } }),
      isError('BAD_INPUT', '"x"', '16 bytes'),
    );
    await assert.rejects(readFile(bad), { code: 'ENOENT' });
  });

  test('sharded set via model.safetensors.index.json', async () => {
    const dir = await mkdtemp(path.join(tmp, 'sharded-'));
    await writeSafetensors(path.join(dir, 'model-00001-of-00002.safetensors'), {
      'w.a': { dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) },
      'w.b': { dtype: 'I64', shape: [1], data: new BigInt64Array([5n]) },
    });
    await writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), {
      'w.c': { dtype: 'BF16', shape: [1], data: new Uint16Array([0x4040]) },
    });
    const index = {
      metadata: { total_size: 26 },
      weight_map: {
        'w.a': 'model-00001-of-00002.safetensors',
        'w.b': 'model-00001-of-00002.safetensors',
        'w.c': 'model-00002-of-00002.safetensors',
      },
    };
    await writeFile(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    for (const target of [dir, path.join(dir, 'model.safetensors.index.json')]) {
      const ckpt = await Checkpoint.open(target);
      assert.deepEqual(ckpt.names().sort(), ['w.a', 'w.b', 'w.c']);
      assert.deepEqual([...(await ckpt.readFloat32('w.a'))], [1, 2]);
      assert.deepEqual([...(await ckpt.readFloat32('w.c'))], [3]);
      assert.deepEqual([...(await ckpt.readInt64('w.b'))], [5n]);
      assert.equal(ckpt.info('w.c').file, path.join(dir, 'model-00002-of-00002.safetensors'));
      assert.equal(ckpt.metadata().total_size, '26');
      await ckpt.close();
    }
    index.weight_map['w.c'] = 'model-00001-of-00002.safetensors';
    await writeFile(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    await assert.rejects(Checkpoint.open(dir), isError('BAD_CHECKPOINT', '"w.c"', 'model-00001-of-00002'));
    (index.weight_map as Record<string, string>)['w.c'] = 'missing.safetensors';
    await writeFile(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    await assert.rejects(Checkpoint.open(dir), isError('NOT_FOUND', 'missing.safetensors'));
    (index.weight_map as Record<string, string>)['w.c'] = '../escape.safetensors';
    await writeFile(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    await assert.rejects(Checkpoint.open(dir), isError('BAD_CHECKPOINT', 'w.c'));
  });
});

describe('rows read on demand', () => {
  test('rows of F32, BF16 and F16 tables equal the rows of the whole tensor; bad rows and tensors are named', async () => {
    const file = path.join(tmp, 'rows.safetensors');
    const f32 = Float32Array.from({ length: 5 * 3 }, (_, i) => i * 0.5 - 3);
    await writeSafetensors(file, {
      f32: { dtype: 'F32', shape: [5, 3], data: f32 },
      bf16: { dtype: 'BF16', shape: [5, 3], data: float32ToBf16(f32) },
      f16: { dtype: 'F16', shape: [5, 3], data: float32ToFloat16(f32) },
      flat: { dtype: 'F32', shape: [15], data: f32 },
      ints: { dtype: 'I32', shape: [5, 3], data: new Int32Array(15) },
    });
    const ckpt = await Checkpoint.open(file);
    try {
      for (const name of ['f32', 'bf16', 'f16']) {
        const rows = ckpt.rows(name);
        assert.equal(rows.rowCount, 5);
        assert.equal(rows.rowLength, 3);
        const whole = await ckpt.readFloat32(name);
        for (const row of [4, 0, 2]) {
          const out = new Float32Array(3);
          rows.readRow(row, out);
          assert.deepEqual([...out], [...whole.subarray(row * 3, row * 3 + 3)], `${name} row ${row}`);
        }
        assert.throws(() => rows.readRow(5, new Float32Array(3)), isError('BAD_INPUT', 'row 5', name));
      }
      assert.throws(() => ckpt.rows('flat'), isError('BAD_CHECKPOINT', '"flat"', '2 dimensions'));
      assert.throws(() => ckpt.rows('ints'), isError('BAD_CHECKPOINT', '"ints"', 'I32'));
      const rows = ckpt.rows('f32');
      await ckpt.close();
      assert.throws(() => rows.readRow(0, new Float32Array(3)), isError('BAD_INPUT', 'closed'));
    } finally {
      await ckpt.close();
    }
  });
});

describe('malformed headers', () => {
  async function rawFile(
    name: string,
    header: string,
    dataBytes: number,
    lengthField?: bigint,
  ): Promise<string> {
    const json = Buffer.from(header, 'utf8');
    const buf = Buffer.alloc(8 + json.length + dataBytes);
    buf.writeBigUInt64LE(lengthField ?? BigInt(json.length), 0);
    json.copy(buf, 8);
    const file = path.join(tmp, `${name}.safetensors`);
    await writeFile(file, buf);
    return file;
  }
  const entry = (dtype: unknown, shape: unknown, offsets: unknown) =>
    JSON.stringify({ 'layer.w': { dtype, shape, data_offsets: offsets } });

  const cases: [string, string, number, bigint | undefined, string[]][] = [
    ['length-past-end', entry('F32', [2], [0, 8]), 8, 10_000n, ['past the end']],
    ['length-absurd', entry('F32', [2], [0, 8]), 8, 1n << 40n, ['not plausible']],
    ['length-zero', '', 8, 0n, ['not plausible']],
    ['bad-json', '{"layer.w": {', 8, undefined, ['not valid']],
    ['not-object', '[1, 2]', 8, undefined, ['not a JSON object']],
    ['unknown-dtype', entry('Q4', [2], [0, 8]), 8, undefined, ['"layer.w"', 'unknown dtype']],
    ['fractional-shape', entry('F32', [1.5], [0, 6]), 8, undefined, ['"layer.w"', 'shape']],
    ['negative-shape', entry('F32', [-2], [0, 8]), 8, undefined, ['"layer.w"', 'shape']],
    ['offsets-not-pair', entry('F32', [2], [0]), 8, undefined, ['"layer.w"', 'data_offsets']],
    ['offsets-reversed', entry('F32', [2], [8, 0]), 8, undefined, ['"layer.w"', 'end before begin']],
    ['size-mismatch', entry('F32', [3], [0, 8]), 8, undefined, ['"layer.w"', 'needs 12 bytes']],
    ['data-truncated', entry('F32', [2], [0, 8]), 4, undefined, ['"layer.w"', 'truncated']],
    [
      'overlap',
      JSON.stringify({
        a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
        b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] },
      }),
      8,
      undefined,
      ['"b"', 'overlaps'],
    ],
    ['bad-metadata', JSON.stringify({ __metadata__: { n: 1 } }), 0, undefined, ['__metadata__']],
  ];
  for (const [name, header, dataBytes, lengthField, fragments] of cases) {
    test(name, async () => {
      const file = await rawFile(name, header, dataBytes, lengthField);
      await assert.rejects(Checkpoint.open(file), isError('BAD_CHECKPOINT', file, ...fragments));
    });
  }

  test('file shorter than the length prefix', async () => {
    const file = path.join(tmp, 'tiny.safetensors');
    await writeFile(file, Buffer.from([1, 2, 3]));
    await assert.rejects(Checkpoint.open(file), isError('BAD_CHECKPOINT', file, 'too short'));
  });

  test('missing file or folder without weights', async () => {
    await assert.rejects(Checkpoint.open(path.join(tmp, 'nope.safetensors')), isError('NOT_FOUND', 'nope'));
    const empty = await mkdtemp(path.join(tmp, 'empty-'));
    await assert.rejects(Checkpoint.open(empty), isError('NOT_FOUND', 'model.safetensors'));
  });
});

describe('float conversions', () => {
  test('bf16 to float32 is the top half of the bits', () => {
    const out = bf16ToFloat32(new Uint16Array([0x3f80, 0xbf80, 0x7f80, 0xff80, 0x0000, 0x8000, 0x4049]));
    assert.deepEqual(
      [...out.slice(0, 6)],
      [1, -1, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 0, -0],
    );
    assert.equal(out[6], 3.140625);
  });

  test('float32 to bf16 rounds to nearest even and keeps NaN', () => {
    const inputs = new Float32Array([
      1 + 2 ** -8, // tie, rounds down to the even 1.0
      1 + 2 ** -7 + 2 ** -8, // tie, rounds up to the even 1 + 2^-6
      1 + 2 ** -8 + 2 ** -20, // above the tie
      -2.5,
      Number.POSITIVE_INFINITY,
      3.4028234663852886e38, // largest float32 rounds to infinity
      Number.NaN,
    ]);
    const bits = float32ToBf16(inputs);
    assert.deepEqual([...bits.slice(0, 6)], [0x3f80, 0x3f82, 0x3f81, 0xc020, 0x7f80, 0x7f80]);
    assert.ok(Number.isNaN(bf16ToFloat32(bits.slice(6))[0]));
  });

  test('every half value round-trips through float32', () => {
    const all = new Uint16Array(65536);
    for (let i = 0; i < all.length; i++) all[i] = i;
    const floats = float16ToFloat32(all);
    const back = float32ToFloat16(floats);
    for (let h = 0; h < 65536; h++) {
      const halfIsNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (halfIsNaN)
        assert.ok(Number.isNaN(floats[h]) && (back[h] & 0x7c00) === 0x7c00 && (back[h] & 0x3ff) !== 0);
      else assert.equal(back[h], h, `half 0x${h.toString(16)}`);
    }
    assert.equal(floats[0x0001], 2 ** -24);
    assert.equal(floats[0x03ff], 1023 * 2 ** -24);
    assert.equal(floats[0x7c00], Number.POSITIVE_INFINITY);
    assert.ok(Object.is(floats[0x8000], -0));
  });

  test('float32 to half rounds to nearest even', () => {
    const bits = float32ToFloat16(
      new Float32Array([
        65519,
        65520,
        1 + 2 ** -11,
        1 + 3 * 2 ** -11,
        2 ** -25,
        3 * 2 ** -25,
        2 ** -26,
        1e-10,
      ]),
    );
    assert.deepEqual([...bits], [0x7bff, 0x7c00, 0x3c00, 0x3c02, 0x0000, 0x0002, 0x0000, 0x0000]);
  });
});
