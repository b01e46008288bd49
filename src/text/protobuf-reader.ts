import { InternVLError } from '../errors.js';

const utf8Decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

/** Minimal protobuf wire-format reader (proto2 scalars, strings, nested messages). */
export class ProtoReader {
  pos: number;
  constructor(
    private readonly bytes: Uint8Array,
    private readonly what: string,
    start = 0,
    readonly end = bytes.length,
  ) {
    this.pos = start;
  }

  private fail(problem: string): never {
    throw new InternVLError('BAD_TOKENIZER', `${this.what}: ${problem} at byte ${this.pos}`);
  }

  /** Reads a varint; returns its low 32 bits (as uint32) — enough for tags, lengths, enums, int32, bool. */
  varint(): number {
    let low = 0;
    let shift = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) this.fail('truncated varint');
      const b = this.bytes[this.pos++];
      if (shift < 32) low |= (b & 0x7f) << shift;
      shift += 7;
      if ((b & 0x80) === 0) return low >>> 0;
    }
    this.fail('varint longer than 10 bytes');
  }

  length(): number {
    const n = this.varint();
    if (n > this.end - this.pos) this.fail(`length ${n} runs past the end`);
    return n;
  }

  bytesField(): Uint8Array {
    const n = this.length();
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  string(): string {
    return utf8Decoder.decode(this.bytesField());
  }

  float(): number {
    if (this.end - this.pos < 4) this.fail('truncated float');
    const view = new DataView(this.bytes.buffer, this.bytes.byteOffset + this.pos, 4);
    this.pos += 4;
    return view.getFloat32(0, true);
  }

  /** A nested message: a reader over its bytes. */
  message(): ProtoReader {
    const n = this.length();
    const sub = new ProtoReader(this.bytes, this.what, this.pos, this.pos + n);
    this.pos += n;
    return sub;
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        if (this.end - this.pos < 8) this.fail('truncated fixed64');
        this.pos += 8;
        return;
      case 2: {
        const n = this.length();
        this.pos += n;
        return;
      }
      case 5:
        if (this.end - this.pos < 4) this.fail('truncated fixed32');
        this.pos += 4;
        return;
      default:
        this.fail(`unsupported wire type ${wireType}`);
    }
  }

  /** Iterates fields: calls `onField(fieldNumber, wireType)`, which must consume the value or return false to skip it. */
  forEachField(onField: (field: number, wireType: number) => boolean): void {
    while (this.pos < this.end) {
      const tag = this.varint();
      const field = tag >>> 3;
      const wireType = tag & 7;
      if (field === 0) this.fail('field number 0');
      if (!onField(field, wireType)) this.skip(wireType);
    }
  }

  expectWireType(actual: number, expected: number, field: string): void {
    if (actual !== expected) this.fail(`field ${field} has wire type ${actual}, expected ${expected}`);
  }
}
