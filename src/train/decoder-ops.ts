/**
 * The training backend of DecoderLayerOps: an architecture's layers (models/*.ts, the same code the
 * engine builds its inference graph from) over a packed sequence [T, D] in primitive ops — rotate-half
 * rotary, softmax attention under a block-diagonal causal mask (attention stays within each packed
 * sample, positions restart at 0 per sample), torch Linears with their LoRA adapters.
 */
import type { DecoderArchitecture, DecoderDims, DecoderLayerOps, LinearSpec } from '../models/decoder.js';
import { BATCH_INPUTS, type ParamGraph } from './param-graph.js';

const NEG_LARGE = -1e30;

class PrimitiveDecoderOps implements DecoderLayerOps {
  x: string;
  readonly #mask: string;
  readonly #cos: string;
  readonly #sin: string;

  constructor(
    private readonly m: ParamGraph,
    readonly dims: DecoderDims,
    input: string,
    private readonly T: number,
  ) {
    const { g } = m;
    this.x = input;
    const seg = g.input(BATCH_INPUTS.segmentIds, 'int64', [T]);
    const pos = g.input(BATCH_INPUTS.positionIds, 'int64', [T]);
    this.#cos = g.input(BATCH_INPUTS.ropeCos, 'float32', [T, dims.headDim]);
    this.#sin = g.input(BATCH_INPUTS.ropeSin, 'float32', [T, dims.headDim]);
    const column = (t: string) => g.op('Unsqueeze', [t, g.constI64([1])]);
    const row = (t: string) => g.op('Unsqueeze', [t, g.constI64([0])]);
    const visible = g.op('And', [
      g.op('Equal', [column(seg), row(seg)]),
      g.op('LessOrEqual', [row(pos), column(pos)]),
    ]);
    this.#mask = g.op('Where', [visible, g.scalarF32(0), g.scalarF32(NEG_LARGE)]);
  }

  async norm(name: string): Promise<string> {
    return this.m.rmsNorm(this.x, name, this.dims.rmsNormEps);
  }

  addResidual(delta: string): void {
    this.x = this.m.g.add(this.x, delta);
  }

  async linear(x: string, _inFeatures: number, spec: LinearSpec): Promise<string> {
    return this.m.linear(x, `${spec.name}.weight`, spec.bias ? `${spec.name}.bias` : undefined);
  }

  async linears(x: string, inFeatures: number, _fusedName: string, specs: LinearSpec[]): Promise<string[]> {
    const out: string[] = [];
    for (const spec of specs) out.push(await this.linear(x, inFeatures, spec));
    return out;
  }

  async packedQkv(x: string, spec: Omit<LinearSpec, 'outFeatures'>): Promise<[string, string, string]> {
    const { g } = this.m;
    const { T } = this;
    const { numHeads: H, numKvHeads: KV, headDim: d } = this.dims;
    const rep = H / KV;
    const packed = this.m.linear(x, `${spec.name}.weight`, spec.bias ? `${spec.name}.bias` : undefined);
    const grouped = g.reshape(packed, [T, KV, rep + 2, d]);
    const rows = (from: number, to: number, heads: number) =>
      g.reshape(g.slice(grouped, [from], [to], [2]), [T, heads * d]);
    return [rows(0, rep, H), rows(rep, rep + 1, KV), rows(rep + 1, rep + 2, KV)];
  }

  async headNorm(x: string, heads: number, name: string): Promise<string> {
    const { g } = this.m;
    const d = this.dims.headDim;
    return g.reshape(this.m.rmsNorm(g.reshape(x, [this.T, heads, d]), name, this.dims.rmsNormEps), [
      this.T,
      heads * d,
    ]);
  }

  attention(_layer: number, q: string, k: string, v: string): string {
    const { g } = this.m;
    const { T } = this;
    const { numHeads: H, numKvHeads: KV, headDim: d } = this.dims;
    // [T, n·d] → [KV, n / KV, T, d]: each KV head's query heads together.
    const grouped = (t: string, n: number) => g.transpose(g.reshape(t, [T, KV, n / KV, d]), [1, 2, 0, 3]);
    const rope = (t: string) => {
      const half = d / 2;
      const x1 = g.slice(t, [0], [half], [-1]);
      const x2 = g.slice(t, [half], [d], [-1]);
      return g.add(g.mul(t, this.#cos), g.mul(g.concat([g.op('Neg', [x2]), x1], -1), this.#sin));
    };
    const scores = g.matMul(rope(grouped(q, H)), g.transpose(rope(grouped(k, KV)), [0, 1, 3, 2]));
    const probs = g.softmax(g.add(g.mul(scores, g.scalarF32(d ** -0.5)), this.#mask), -1);
    return g.reshape(g.transpose(g.matMul(probs, grouped(v, KV)), [2, 0, 1, 3]), [T, H * d]);
  }

  swiGlu(gate: string, up: string): string {
    return this.m.g.mul(this.m.silu(gate), up);
  }
}

/** The decoder layers and final norm of `arch` over the packed sequence `input` [T, D]. */
export async function trainingDecoder(
  m: ParamGraph,
  arch: DecoderArchitecture,
  dims: DecoderDims,
  input: string,
  T: number,
): Promise<string> {
  const ops = new PrimitiveDecoderOps(m, dims, input, T);
  for (let i = 0; i < dims.numLayers; i++) await m.g.within(`llm${i}`, () => arch.layer(ops, i));
  return m.rmsNorm(ops.x, arch.finalNormName, dims.rmsNormEps);
}
