/**
 * The project's graph IR and builder. A graph is plain data (inputs, nodes, initializers, outputs),
 * so later passes (autodiff for training, quantisation, the browser target) can walk and rewrite it;
 * `serializeModel` (serialize.ts) turns it into an ONNX ModelProto.
 *
 * A builder given a WeightSink (an external data file, engine/external-data.ts) hands every large weight
 * to it as the weight is added and keeps only where it went, so a graph converted from a checkpoint
 * never holds its weights in memory all at once.
 */
import { DTYPE_BYTES, type DType, OnnxDataType } from './proto.js';

export type { DType } from './proto.js';

/** Initializers of at least this many bytes go to external data (when a model has it). */
export const EXTERNAL_MIN_BYTES = 1024;

/**
 * Whether an initializer goes to external data: large enough and not an integer tensor (shape
 * inference must read shape and index constants, so int64/int32 stay inline).
 */
export function isExternalCandidate(
  dtype: DType,
  byteLength: number,
  minBytes = EXTERNAL_MIN_BYTES,
): boolean {
  return byteLength >= minBytes && dtype !== 'int64' && dtype !== 'int32';
}

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

/** An initializer whose bytes were written to an external data file while the graph was built. */
export interface ExternalInitializer {
  name: string;
  dtype: DType;
  dims: number[];
  offset: number;
  length: number;
}

/** Takes initializer bytes while a graph is built (an external data file beside the model). */
export interface WeightSink {
  /** The file's name as the model refers to it (beside model.onnx). */
  readonly location: string;
  /** Stores the bytes; returns their offset in the file. */
  write(bytes: Uint8Array): number;
}

export interface Graph {
  name: string;
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  nodes: OnnxNode[];
  /** Initializers held in memory. */
  initializers: Initializer[];
  /** Initializers already written to `sink` (only for a builder given a sink). */
  external?: { sink: WeightSink; initializers: ExternalInitializer[] };
  /** Opset versions by domain ('' = ai.onnx). */
  opsets: Record<string, number>;
}

/** Bytes of all initializers of a graph, in memory and external. */
export function initializerBytes(graph: Graph): number {
  const inline = graph.initializers.reduce((n, i) => n + i.data.byteLength, 0);
  return inline + (graph.external?.initializers.reduce((n, i) => n + i.length, 0) ?? 0);
}

let ambientSink: () => WeightSink | undefined = () => undefined;

/**
 * Where a builder constructed without an explicit sink asks for one (engine/external-data.ts sets this
 * in Node, so graphs built inside `withWeightSink` stream their weights; the browser never sets it).
 */
export function setAmbientWeightSink(provider: () => WeightSink | undefined): void {
  ambientSink = provider;
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

  /**
   * `sink`: where large weights go as they are added (default: the one `withWeightSink` offers, if any;
   * null for none).
   */
  constructor(
    name: string,
    opsets: Record<string, number> = { '': 21, [MS_DOMAIN]: 1 },
    sink: WeightSink | null = ambientSink() ?? null,
  ) {
    this.graph = { name, inputs: [], outputs: [], nodes: [], initializers: [], opsets: { ...opsets } };
    if (sink) this.graph.external = { sink, initializers: [] };
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
    const external = this.graph.external;
    if (external && isExternalCandidate(dtype, data.byteLength)) {
      // Written now; the caller's array is no longer referenced by the graph.
      const offset = external.sink.write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      external.initializers.push({ name, dtype, dims, offset, length: data.byteLength });
    } else {
      this.graph.initializers.push({ name, dtype, dims, data });
    }
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

export function elementCount(dims: number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

export function byteSize(dtype: DType, dims: number[]): number {
  return DTYPE_BYTES[dtype] * elementCount(dims);
}
