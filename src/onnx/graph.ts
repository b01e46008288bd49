/**
 * The project's graph IR and builder. A graph is plain data (inputs, nodes, initializers, outputs),
 * so later passes (autodiff for training, quantisation, the browser target) can walk and rewrite it;
 * `serializeModel` turns it into an ONNX ModelProto.
 */
import { DTYPE_BYTES, type DType, OnnxDataType, ProtoWriter } from './proto.js';

export type { DType } from './proto.js';
export type Dim = number | string;

export interface ValueInfo {
  name: string;
  dtype: DType;
  shape: Dim[];
}

export type AttributeValue = number | string | number[] | { int: number } | { ints: number[] } | TensorValue;

export interface OnnxNode {
  opType: string;
  domain: string;
  name: string;
  /** '' marks an omitted optional input. */
  inputs: string[];
  outputs: string[];
  attributes: Record<string, AttributeValue>;
}

export type TensorData =
  | Float32Array
  | Float64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array
  | Uint16Array
  | BigInt64Array;

export interface TensorValue {
  dtype: DType;
  dims: number[];
  /** Little-endian element data; Uint16Array for float16/bfloat16, Uint8Array for bool. */
  data: TensorData;
}

export interface Initializer extends TensorValue {
  name: string;
}

export interface Graph {
  name: string;
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  nodes: OnnxNode[];
  initializers: Initializer[];
  /** Opset versions by domain ('' = ai.onnx). */
  opsets: Record<string, number>;
}

export const MS_DOMAIN = 'com.microsoft';

/** An INT attribute of a node (`fallback` when absent). */
export function intAttribute(node: OnnxNode, name: string, fallback: number): number {
  const v = node.attributes[name];
  if (v === undefined) return fallback;
  if (typeof v === 'number') return v;
  if (typeof v === 'object' && 'int' in v) return v.int;
  throw new Error(`${node.name}: attribute ${name} is not an integer`);
}

/** An INTS attribute of a node, or undefined when absent. */
export function intsAttribute(node: OnnxNode, name: string): number[] | undefined {
  const v = node.attributes[name];
  if (v === undefined) return undefined;
  if (Array.isArray(v)) return v;
  if (typeof v === 'object' && 'ints' in v) return v.ints;
  throw new Error(`${node.name}: attribute ${name} is not a list of integers`);
}

/**
 * Builds a Graph node by node. Values are named by strings; every method returns the name of the
 * value it produced, so model code reads as a sequence of tensor expressions.
 */
export class GraphBuilder {
  readonly graph: Graph;
  private counter = 0;
  private readonly used = new Set<string>();
  /** Prefix for generated value names, e.g. 'layers.3.attn'. */
  scope = '';

  constructor(name: string, opsets: Record<string, number> = { '': 21, [MS_DOMAIN]: 1 }) {
    this.graph = { name, inputs: [], outputs: [], nodes: [], initializers: [], opsets: { ...opsets } };
  }

  /** A fresh value name under the current scope. */
  fresh(hint: string): string {
    const base = this.scope ? `${this.scope}/${hint}` : hint;
    let name = base;
    while (this.used.has(name)) name = `${base}_${++this.counter}`;
    this.used.add(name);
    return name;
  }

  /** Runs `body` (until its promise settles, when it returns one) with value names prefixed by `scope`. */
  within<T>(scope: string, body: () => T): T {
    const saved = this.scope;
    this.scope = saved ? `${saved}/${scope}` : scope;
    let result: T;
    try {
      result = body();
    } catch (error) {
      this.scope = saved;
      throw error;
    }
    if (result instanceof Promise) {
      return result.finally(() => {
        this.scope = saved;
      }) as T;
    }
    this.scope = saved;
    return result;
  }

  input(name: string, dtype: DType, shape: Dim[]): string {
    this.used.add(name);
    this.graph.inputs.push({ name, dtype, shape });
    return name;
  }

  output(value: string, name: string, dtype: DType, shape: Dim[]): string {
    const out = value === name ? value : this.identityAs(value, name);
    this.graph.outputs.push({ name: out, dtype, shape });
    return out;
  }

  private identityAs(value: string, name: string): string {
    this.used.add(name);
    this.graph.nodes.push({
      opType: 'Identity',
      domain: '',
      name: `${name}_identity`,
      inputs: [value],
      outputs: [name],
      attributes: {},
    });
    return name;
  }

  /** A named weight; the name is kept as given (checkpoint names make graphs easy to inspect). */
  initializer(name: string, dtype: DType, dims: number[], data: TensorData): string {
    return this.addInitializer(this.claim(name), dtype, dims, data);
  }

  private addInitializer(name: string, dtype: DType, dims: number[], data: TensorData): string {
    const expected = dims.reduce((a, b) => a * b, 1);
    const elements = dtype === 'bool' ? data.byteLength : data.length;
    if (elements !== expected) {
      throw new Error(`initializer ${name}: ${elements} elements for dims [${dims}] (${expected})`);
    }
    this.graph.initializers.push({ name, dtype, dims, data });
    return name;
  }

  constF32(values: number[] | Float32Array, dims: number[] = [values.length]): string {
    return this.addInitializer(this.fresh('const'), 'float32', dims, Float32Array.from(values));
  }

  constI64(values: number[], dims: number[] = [values.length]): string {
    return this.addInitializer(this.fresh('const'), 'int64', dims, BigInt64Array.from(values.map(BigInt)));
  }

  scalarF32(value: number): string {
    return this.constF32([value], []);
  }

  /** Adds a node; returns its output names. */
  node(
    opType: string,
    inputs: (string | null | undefined)[],
    attributes: Record<string, AttributeValue> = {},
    options: { domain?: string; outputs?: number | string[]; name?: string } = {},
  ): string[] {
    const outputs =
      typeof options.outputs === 'object'
        ? options.outputs.map((o) => (o === '' ? '' : this.claim(o)))
        : Array.from({ length: options.outputs ?? 1 }, () => this.fresh(opType));
    this.graph.nodes.push({
      opType,
      domain: options.domain ?? '',
      name: options.name ?? this.fresh(`${opType}_node`),
      inputs: inputs.map((i) => i ?? ''),
      outputs,
      attributes,
    });
    return outputs;
  }

  private claim(name: string): string {
    if (this.used.has(name)) throw new Error(`value ${name} defined twice`);
    this.used.add(name);
    return name;
  }

  /** A single-output node. */
  op(
    opType: string,
    inputs: (string | null | undefined)[],
    attributes: Record<string, AttributeValue> = {},
    domain = '',
  ): string {
    return this.node(opType, inputs, attributes, { domain })[0];
  }

  // Elementwise and shape helpers used by the model files.
  add(a: string, b: string): string {
    return this.op('Add', [a, b]);
  }
  sub(a: string, b: string): string {
    return this.op('Sub', [a, b]);
  }
  mul(a: string, b: string): string {
    return this.op('Mul', [a, b]);
  }
  div(a: string, b: string): string {
    return this.op('Div', [a, b]);
  }
  matMul(a: string, b: string): string {
    return this.op('MatMul', [a, b]);
  }
  reshape(x: string, shape: number[]): string {
    return this.op('Reshape', [x, this.constI64(shape)]);
  }
  transpose(x: string, perm: number[]): string {
    return this.op('Transpose', [x], { perm });
  }
  concat(values: string[], axis: number): string {
    return this.op('Concat', values, { axis: { int: axis } });
  }
  gather(data: string, indices: string, axis = 0): string {
    return this.op('Gather', [data, indices], { axis: { int: axis } });
  }
  slice(x: string, starts: number[], ends: number[], axes: number[]): string {
    return this.op('Slice', [x, this.constI64(starts), this.constI64(ends), this.constI64(axes)]);
  }
  softmax(x: string, axis = -1): string {
    return this.op('Softmax', [x], { axis: { int: axis } });
  }
  sigmoid(x: string): string {
    return this.op('Sigmoid', [x]);
  }
  /** Exact (erf) GELU, opset 20. */
  gelu(x: string): string {
    return this.op('Gelu', [x]);
  }
  cast(x: string, to: DType): string {
    return this.op('Cast', [x], { to: { int: OnnxDataType[to] } });
  }
}

function encodeDims(w: ProtoWriter, field: number, shape: Dim[]): void {
  const shapeMsg = new ProtoWriter();
  for (const d of shape) {
    const dim = new ProtoWriter();
    if (typeof d === 'number') dim.int(1, d);
    else dim.string(2, d);
    shapeMsg.message(1, dim);
  }
  w.message(field, shapeMsg);
}

function encodeValueInfo(v: ValueInfo): ProtoWriter {
  const tensorType = new ProtoWriter().int(1, OnnxDataType[v.dtype]);
  encodeDims(tensorType, 2, v.shape);
  const type = new ProtoWriter().message(1, tensorType);
  return new ProtoWriter().string(1, v.name).message(2, type);
}

function tensorBytes(t: TensorValue): Uint8Array {
  const d = t.data;
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

/** Where an initializer's bytes go when a model uses external data. */
export interface ExternalPlacement {
  location: string;
  offset: number;
  length: number;
}

function encodeTensor(name: string, t: TensorValue, external?: ExternalPlacement): ProtoWriter {
  const w = new ProtoWriter();
  for (const d of t.dims) w.int(1, d);
  w.int(2, OnnxDataType[t.dtype]);
  w.string(8, name);
  if (external) {
    const entry = (key: string, value: string) => new ProtoWriter().string(1, key).string(2, value);
    w.message(13, entry('location', external.location));
    w.message(13, entry('offset', String(external.offset)));
    w.message(13, entry('length', String(external.length)));
    w.int(14, 1);
  } else {
    w.bytes(9, tensorBytes(t));
  }
  return w;
}

function encodeAttribute(name: string, value: AttributeValue): ProtoWriter {
  const w = new ProtoWriter().string(1, name);
  if (typeof value === 'number') {
    w.float(2, value).int(20, 1);
  } else if (typeof value === 'string') {
    w.string(4, value).int(20, 3);
  } else if (Array.isArray(value)) {
    for (const v of value) w.int(8, v);
    w.int(20, 7);
  } else if ('int' in value) {
    w.int(3, value.int).int(20, 2);
  } else if ('ints' in value) {
    for (const v of value.ints) w.int(8, v);
    w.int(20, 7);
  } else {
    w.message(5, encodeTensor('', value)).int(20, 4);
  }
  return w;
}

function encodeNode(n: OnnxNode): ProtoWriter {
  const w = new ProtoWriter();
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  w.string(3, n.name).string(4, n.opType);
  for (const [k, v] of Object.entries(n.attributes)) w.message(5, encodeAttribute(k, v));
  if (n.domain) w.string(7, n.domain);
  return w;
}

export interface SerializeOptions {
  /**
   * Non-integer initializers of at least this many bytes go to an external data file named `location`
   * (placed at 64 KiB-aligned offsets so ORT can map them); their bytes are returned in order.
   */
  externalData?: { location: string; minBytes?: number };
}

export interface SerializedModel {
  /** ModelProto chunks; concatenate or write in order. */
  modelChunks: Uint8Array[];
  modelBytes: number;
  /** External data pieces with their file offsets (empty without externalData). */
  external: { offset: number; data: Uint8Array }[];
  externalBytes: number;
}

const EXTERNAL_ALIGN = 65536;

export function serializeModel(graph: Graph, options: SerializeOptions = {}): SerializedModel {
  const g = new ProtoWriter();
  for (const n of graph.nodes) g.message(1, encodeNode(n));
  g.string(2, graph.name);
  const external: { offset: number; data: Uint8Array }[] = [];
  let externalBytes = 0;
  const minBytes = options.externalData?.minBytes ?? 1024;
  for (const init of graph.initializers) {
    const bytes = tensorBytes(init);
    // Integer tensors stay inline: shape inference must read shape and index constants.
    const isInteger = init.dtype === 'int64' || init.dtype === 'int32';
    if (options.externalData && bytes.byteLength >= minBytes && !isInteger) {
      const offset = Math.ceil(externalBytes / EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
      external.push({ offset, data: bytes });
      externalBytes = offset + bytes.byteLength;
      g.message(
        5,
        encodeTensor(init.name, init, {
          location: options.externalData.location,
          offset,
          length: bytes.byteLength,
        }),
      );
    } else {
      g.message(5, encodeTensor(init.name, init));
    }
  }
  for (const v of graph.inputs) g.message(11, encodeValueInfo(v));
  for (const v of graph.outputs) g.message(12, encodeValueInfo(v));

  const model = new ProtoWriter().int(1, 10).string(2, 'internvl-ts');
  model.message(7, g);
  for (const [domain, version] of Object.entries(graph.opsets)) {
    const opset = new ProtoWriter();
    if (domain) opset.string(1, domain);
    opset.int(2, version);
    model.message(8, opset);
  }
  const modelChunks = model.finishChunks();
  return { modelChunks, modelBytes: model.length, external, externalBytes };
}

/** The whole model as one in-memory buffer (no external data). */
export function modelToBytes(graph: Graph): Uint8Array {
  const { modelChunks, modelBytes } = serializeModel(graph);
  const out = new Uint8Array(modelBytes);
  let offset = 0;
  for (const c of modelChunks) {
    out.set(c, offset);
    offset += c.byteLength;
  }
  return out;
}

export function elementCount(dims: number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

export function byteSize(dtype: DType, dims: number[]): number {
  return DTYPE_BYTES[dtype] * elementCount(dims);
}
