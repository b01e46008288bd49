/**
 * A Graph as an ONNX ModelProto: in one buffer (small graphs, handed to ONNX Runtime in memory), or as
 * chunks with the weights in an external data file (the graph cache). Initializers a builder already
 * wrote to its WeightSink are referenced where they went; the graph holds no bytes of them.
 */
import {
  type AttributeValue,
  type Dim,
  EXTERNAL_MIN_BYTES,
  type ExternalInitializer,
  type Graph,
  isExternalCandidate,
  type OnnxNode,
  type TensorValue,
  type ValueInfo,
  type WeightSink,
} from './graph.js';
import { OnnxDataType, ProtoWriter } from './proto.js';

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

/** Where an initializer's bytes are when a model uses external data. */
interface ExternalPlacement {
  location: string;
  offset: number;
  length: number;
}

function tensorHeader(name: string, dtype: TensorValue['dtype'], dims: number[]): ProtoWriter {
  const w = new ProtoWriter();
  for (const d of dims) w.int(1, d);
  w.int(2, OnnxDataType[dtype]);
  w.string(8, name);
  return w;
}

function encodeTensor(name: string, t: TensorValue): ProtoWriter {
  return tensorHeader(name, t.dtype, t.dims).bytes(9, tensorBytes(t));
}

function encodeExternalTensor(
  t: Pick<ExternalInitializer, 'name' | 'dtype' | 'dims'>,
  where: ExternalPlacement,
): ProtoWriter {
  const w = tensorHeader(t.name, t.dtype, t.dims);
  const entry = (key: string, value: string) => new ProtoWriter().string(1, key).string(2, value);
  w.message(13, entry('location', where.location));
  w.message(13, entry('offset', String(where.offset)));
  w.message(13, entry('length', String(where.length)));
  return w.int(14, 1);
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
   * Non-integer initializers of at least `minBytes` (default 1024) go to an external data file named
   * `location` (placed at 64 KiB-aligned offsets so ORT can map them); their bytes are returned in order.
   */
  externalData?: { location: string; minBytes?: number };
  /**
   * The external data file itself (instead of `externalData`): in-memory initializers are written to
   * it too, and initializers the builder already wrote to it are referenced.
   */
  sink?: WeightSink;
}

export interface SerializedModel {
  /** ModelProto chunks; concatenate or write in order. */
  modelChunks: Uint8Array[];
  modelBytes: number;
  /** External data pieces with their file offsets (empty without externalData). */
  external: { offset: number; data: Uint8Array }[];
  externalBytes: number;
}

export const EXTERNAL_ALIGN = 65536;

export function serializeModel(graph: Graph, options: SerializeOptions = {}): SerializedModel {
  const { sink } = options;
  if (graph.external && graph.external.sink !== sink) {
    throw new Error(
      `graph ${graph.name}: its weights were written to ${graph.external.sink.location} while it was built; ` +
        'serialise it with that sink (or build it without one)',
    );
  }
  const g = new ProtoWriter();
  for (const n of graph.nodes) g.message(1, encodeNode(n));
  g.string(2, graph.name);
  const external: { offset: number; data: Uint8Array }[] = [];
  let externalBytes = 0;
  const location = sink?.location ?? options.externalData?.location;
  const minBytes = options.externalData?.minBytes ?? EXTERNAL_MIN_BYTES;
  const place = (bytes: Uint8Array): number => {
    if (sink) return sink.write(bytes);
    const offset = Math.ceil(externalBytes / EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
    external.push({ offset, data: bytes });
    externalBytes = offset + bytes.byteLength;
    return offset;
  };
  for (const init of graph.initializers) {
    const bytes = tensorBytes(init);
    if (location !== undefined && isExternalCandidate(init.dtype, bytes.byteLength, minBytes)) {
      const offset = place(bytes);
      g.message(5, encodeExternalTensor(init, { location, offset, length: bytes.byteLength }));
    } else {
      g.message(5, encodeTensor(init.name, init));
    }
  }
  for (const init of graph.external?.initializers ?? []) {
    const { offset, length } = init;
    g.message(5, encodeExternalTensor(init, { location: graph.external!.sink.location, offset, length }));
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
