import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { InternVLError } from '../src/errors.js';
import { float16ToFloat32, float32ToFloat16 } from '../src/io/float-formats.js';
import { dequantizeQ4_0, quantizeQ4_0 } from '../src/io/ggml-quant.js';
import { GGML_TYPES, type GgufTensor, gguf, readGgufInfo, writeGguf } from '../src/io/gguf.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { gpt2ByteSymbols, writeQwen2Gguf } from '../src/tools/qwen2-gguf.js';
import { goldenModelDir } from './helpers.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'ivl-gguf-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** Seeded values in [-scale, scale). */
function values(count: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0 || 1;
  return Float32Array.from({ length: count }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * 2 * scale;
  });
}

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

test('Q4_0: the block layout is ggml’s (fp16 scale, low nibbles 0–15, high nibbles 16–31)', () => {
  // max |x| is −2 (value 0), so d = −2 / −8 = 0.25 exactly and every value is a multiple of d.
  const block = Float32Array.from({ length: 32 }, (_, j) =>
    j < 16 ? (j - 8) * 0.25 : (7 - (j - 16)) * 0.25,
  );
  const bytes = quantizeQ4_0(block);
  assert.equal(bytes.length, 18);
  assert.deepEqual([bytes[0], bytes[1]], [0x00, 0x34]); // 0.25 as IEEE half, little-endian
  for (let j = 0; j < 16; j++) assert.equal(bytes[2 + j], j | ((15 - j) << 4), `byte ${j}`);
  assert.deepEqual(dequantizeQ4_0(bytes, 32), block);
});

test('Q4_0 round trip is within one step of each block (half a step unless clamped at +8)', () => {
  const x = values(32 * 500, 3, 0.7);
  x.fill(0, 64, 96); // an all-zero block: d = 0, decoded as zeros
  const bytes = quantizeQ4_0(x);
  assert.equal(bytes.length, 500 * 18);
  const y = dequantizeQ4_0(bytes, x.length);
  for (let b = 0; b < 500; b++) {
    const d = Math.abs(float16ToFloat32(Uint16Array.of(bytes[b * 18] | (bytes[b * 18 + 1] << 8)))[0]);
    const block = [...x.subarray(b * 32, b * 32 + 32)];
    const amax = Math.max(...block.map(Math.abs));
    if (amax === 0) continue;
    // d is the value of largest magnitude over −8, rounded to half precision.
    const signedD = block.find((v) => Math.abs(v) === amax)! / -8;
    assert.ok(Math.abs(d - amax / 8) <= (amax / 8) * 2 ** -11, `block ${b}: d ${d}, amax ${amax}`);
    for (let j = 0; j < 32; j++) {
      const err = Math.abs(block[j] - y[b * 32 + j]);
      // x/d ≥ 7.5 would be q = 16 and clamps to 15 (up to one step off); the rest round to nearest.
      const bound = (block[j] / signedD >= 7.5 ? d : d / 2) + 8 * d * 2 ** -10;
      assert.ok(err <= bound, `block ${b} value ${j}: error ${err} > ${bound}`);
    }
  }
  assert.ok(y.subarray(64, 96).every((v) => v === 0));
  assert.throws(() => quantizeQ4_0(new Float32Array(33)), InternVLError);
});

function tensorsFor(data: Record<string, Uint8Array>): GgufTensor[] {
  return [
    { name: 'norm', type: 'F32', dims: [5], data: () => [data.norm] },
    {
      name: 'half',
      type: 'F16',
      dims: [4, 3],
      data: () => [data.half.subarray(0, 10), data.half.subarray(10)],
    },
    { name: 'w', type: 'Q4_0', dims: [64, 2], data: () => [data.w] },
  ];
}

for (const alignment of [32, 64]) {
  test(`writeGguf (alignment ${alignment}): header, metadata and tensor offsets parse back`, async () => {
    const data = {
      norm: bytesOf(values(5, 1)),
      half: bytesOf(float32ToFloat16(values(12, 2))),
      w: quantizeQ4_0(values(128, 4)),
    };
    const file = path.join(root, `a${alignment}.gguf`);
    const metadata = {
      'general.architecture': gguf.str('qwen2'),
      'qwen2.block_count': gguf.u32(24),
      'x.neg': gguf.i32(-5),
      'x.eps': gguf.f32(1e-6),
      'x.flag': gguf.bool(true),
      'x.tokens': gguf.array('string', ['a', 'ü', '']),
      'x.types': gguf.array('int32', [1, 3, -1]),
      'x.empty': gguf.array('string', []),
      'x.u64': { type: 'uint64', value: 2n ** 40n + 3n },
      'x.i64': { type: 'int64', value: -7n },
      'x.i8': { type: 'int8', value: -3 },
      'x.u16': { type: 'uint16', value: 65535 },
      'x.f64': { type: 'float64', value: 0.1 },
      'x.u8s': gguf.array('uint8', [0, 255]),
    } as const;
    const written = await writeGguf(file, metadata, tensorsFor(data), alignment);
    const info = await readGgufInfo(file);
    assert.equal(info.version, 3);
    assert.equal(info.alignment, alignment);
    assert.equal(info.dataOffset, written.dataOffset);
    assert.equal(info.dataOffset % alignment, 0);
    assert.equal(info.metadata.get('general.architecture'), 'qwen2');
    assert.equal(info.metadata.get('qwen2.block_count'), 24);
    assert.equal(info.metadata.get('x.neg'), -5);
    assert.equal(info.metadata.get('x.eps'), Math.fround(1e-6));
    assert.equal(info.metadata.get('x.flag'), true);
    assert.deepEqual(info.metadata.get('x.tokens'), ['a', 'ü', '']);
    assert.deepEqual(info.metadata.get('x.types'), [1, 3, -1]);
    assert.deepEqual(info.metadata.get('x.empty'), []);
    assert.equal(info.metadata.get('x.u64'), 2n ** 40n + 3n);
    assert.equal(info.metadata.get('x.i64'), -7n);
    assert.equal(info.metadata.get('x.i8'), -3);
    assert.equal(info.metadata.get('x.u16'), 65535);
    assert.equal(info.metadata.get('x.f64'), 0.1);
    assert.deepEqual(info.metadata.get('x.u8s'), [0, 255]);
    assert.equal(info.metadata.has('general.alignment'), alignment !== 32);
    assert.deepEqual(
      info.tensors.map((t) => [t.name, t.dims, t.typeId]),
      [
        ['norm', [5], GGML_TYPES.F32.id],
        ['half', [4, 3], GGML_TYPES.F16.id],
        ['w', [64, 2], GGML_TYPES.Q4_0.id],
      ],
    );
    const bytes = readFileSync(file);
    const expected = [data.norm, data.half, data.w];
    let end = info.dataOffset;
    info.tensors.forEach((t, i) => {
      assert.equal((t.offset - info.dataOffset) % alignment, 0, `${t.name} offset aligned`);
      assert.equal(t.offset, Math.ceil(end / alignment) * alignment, `${t.name} follows the previous tensor`);
      assert.deepEqual(new Uint8Array(bytes.subarray(t.offset, t.offset + expected[i].length)), expected[i]);
      end = t.offset + expected[i].length;
    });
    assert.equal(bytes.length, end);
    assert.equal(written.bytes, end);
  });
}

test('writeGguf refuses a partial block, a wrong data size and a name given twice, and leaves no file', async () => {
  const file = path.join(root, 'bad.gguf');
  const w = quantizeQ4_0(values(64, 1));
  const one = (dims: number[], data: Uint8Array, name = 'w'): GgufTensor => ({
    name,
    type: 'Q4_0',
    dims,
    data: () => [data],
  });
  await assert.rejects(writeGguf(file, {}, [one([33, 2], w)]), /multiple of 32/);
  await assert.rejects(writeGguf(file, {}, [one([64, 2], w)]), /needs 72 bytes, the data gave 36/);
  await assert.rejects(writeGguf(file, {}, [one([32, 1], w)]), /needs 18 bytes, the data gave more/);
  await assert.rejects(writeGguf(file, {}, [one([64], w), one([64], w)]), /given twice/);
  await assert.rejects(writeGguf(file, { k: gguf.u32('7' as never) }, []), /k: 7 is not a uint32/);
  assert.equal(existsSync(file), false);
  assert.deepEqual(
    readdirSync(root).filter((f) => f.startsWith('bad.gguf')),
    [],
  );
});

test('readGgufInfo names a file that is not GGUF or whose header is cut short', async () => {
  const file = path.join(root, 'meta.gguf');
  await writeGguf(file, { 'x.tokens': gguf.array('string', ['a', 'b', 'c']) }, []);
  const whole = readFileSync(file);
  const bad = path.join(root, 'not.gguf');
  const code = (c: string) => (err: unknown) => err instanceof InternVLError && err.code === c;
  writeFileSync(bad, Buffer.concat([Buffer.from('GGML'), whole.subarray(4)]));
  await assert.rejects(readGgufInfo(bad), code('BAD_CHECKPOINT'));
  writeFileSync(bad, whole.subarray(0, 40)); // inside the token strings
  await assert.rejects(readGgufInfo(bad), /header is truncated/);
  const v2 = Buffer.from(whole);
  v2.writeUInt32LE(2, 4);
  writeFileSync(bad, v2);
  await assert.rejects(readGgufInfo(bad), code('UNSUPPORTED'));
});

test('writeQwen2Gguf: the tiny Qwen2 checkpoint as llama.cpp tensor names, shapes and types', async () => {
  const dir = goldenModelDir('tiny-internvl2_5-qwen2');
  const file = path.join(root, 'tiny-q4.gguf');
  const { tensors } = await writeQwen2Gguf(dir, file, 'Q4_0');
  const info = await readGgufInfo(file);
  assert.equal(info.tensors.length, tensors);
  assert.equal(tensors, 1 + 2 * 12 + 2); // embeddings, 12 per layer, final norm, output
  const byName = new Map(info.tensors.map((t) => [t.name, t]));
  assert.deepEqual(byName.get('token_embd.weight')?.dims, [64, 320]);
  assert.deepEqual(byName.get('output.weight')?.dims, [64, 320]);
  assert.deepEqual(byName.get('blk.1.attn_k.weight')?.dims, [64, 32]);
  assert.deepEqual(byName.get('blk.1.attn_k.bias')?.dims, [32]);
  assert.deepEqual(byName.get('blk.0.ffn_down.weight')?.dims, [128, 64]);
  assert.equal(byName.get('blk.0.attn_norm.weight')?.typeId, GGML_TYPES.F32.id);
  assert.equal(byName.get('blk.0.ffn_gate.weight')?.typeId, GGML_TYPES.Q4_0.id);
  assert.equal(info.metadata.get('general.architecture'), 'qwen2');
  assert.equal(info.metadata.get('qwen2.attention.head_count_kv'), 2);
  assert.equal(info.metadata.get('qwen2.feed_forward_length'), 128);
  const tokens = info.metadata.get('tokenizer.ggml.tokens') as string[];
  assert.equal(tokens.length, 320);
  assert.equal(new Set(tokens).size, 320);
  assert.deepEqual(tokens.slice(0, 256), gpt2ByteSymbols());
  assert.equal(tokens[256], '<|endoftext|>'); // bos = eos = 256 in this config

  // The weights are the checkpoint's: F32 norms exact, Q4_0 weights within a step of the values.
  const bytes = readFileSync(file);
  const checkpoint = await Checkpoint.open(dir);
  try {
    const norm = byName.get('blk.0.attn_norm.weight')!;
    const expectedNorm = await checkpoint.readFloat32('language_model.model.layers.0.input_layernorm.weight');
    assert.deepEqual(new Float32Array(bytes.buffer.slice(norm.offset, norm.offset + 64 * 4)), expectedNorm);
    const q = byName.get('blk.0.attn_q.weight')!;
    const expectedQ = await checkpoint.readFloat32('language_model.model.layers.0.self_attn.q_proj.weight');
    const decoded = dequantizeQ4_0(
      new Uint8Array(bytes.subarray(q.offset, q.offset + (64 * 64 * 18) / 32)),
      64 * 64,
    );
    const amax = Math.max(...expectedQ.map(Math.abs));
    for (let i = 0; i < decoded.length; i++)
      assert.ok(Math.abs(decoded[i] - expectedQ[i]) <= amax / 8 + 1e-6);
  } finally {
    await checkpoint.close();
  }
  await assert.rejects(
    writeQwen2Gguf(goldenModelDir('tiny-internvl2_5-internlm2'), path.join(root, 'x.gguf'), 'F16'),
    (err: unknown) => err instanceof InternVLError && err.code === 'UNSUPPORTED',
  );
});
