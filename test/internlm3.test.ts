/**
 * InternLM3 (InternVL3-9B's LLM): a tiny random decoder through the engine against a plain-JS forward of
 * the same weights written here from modeling_internlm3.py (RMSNorm, q/k/v projections with qkv_bias,
 * rotate-half RoPE over head_dim, grouped causal attention, o_proj, SwiGLU MLP, final norm, lm_head).
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { EngineCore } from '../src/engine/core.js';
import { DecoderRunner } from '../src/engine/decoder.js';
import { InternVLError } from '../src/errors.js';
import { Checkpoint } from '../src/io/safetensors.js';
import { parseModelConfig } from '../src/models/model-config.js';
import { decoderDimsFromConfig, decoderTensorSpecs } from '../src/models/registry.js';
import { memoryWeights } from '../src/models/weights.js';
import { Trainer } from '../src/train/trainer.js';
import { topLevel } from './config-fixture.js';
import { GOLDEN_DIR, goldenModelDir, maxAbsDiff } from './helpers.js';

// head_dim 16 with hidden 48 and 4 heads: head_dim is not hidden / heads, as the config allows.
const LLM = {
  architectures: ['InternLM3ForCausalLM'],
  model_type: 'internlm3',
  hidden_size: 48,
  intermediate_size: 96,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 16,
  vocab_size: 40,
  rms_norm_eps: 1e-5,
  rope_theta: 50000000,
  rope_scaling: null,
  qkv_bias: true,
  bias: false,
  tie_word_embeddings: false,
  max_position_embeddings: 32768,
};
const config = (llm: object) =>
  parseModelConfig({ ...topLevel, vision_config: {}, llm_config: { ...LLM, ...llm } }, 'x/config.json');

function seeded(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

type Tensors = Map<string, { shape: number[]; data: Float32Array }>;

/** x [n, in] · Wᵀ (W [out, in]) + b. */
function linear(x: Float32Array, n: number, w: Float32Array, out: number, b?: Float32Array): Float32Array {
  const inF = w.length / out;
  const y = new Float32Array(n * out);
  for (let t = 0; t < n; t++) {
    for (let o = 0; o < out; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inF; i++) s += x[t * inF + i] * w[o * inF + i];
      y[t * out + o] = s;
    }
  }
  return y;
}

function rmsNorm(x: Float32Array, n: number, w: Float32Array, eps: number): Float32Array {
  const d = w.length;
  const y = new Float32Array(x.length);
  for (let t = 0; t < n; t++) {
    let ms = 0;
    for (let i = 0; i < d; i++) ms += x[t * d + i] ** 2;
    const r = 1 / Math.sqrt(ms / d + eps);
    for (let i = 0; i < d; i++) y[t * d + i] = x[t * d + i] * r * w[i];
  }
  return y;
}

/** Rotate-half RoPE in place on [n, heads·hd]. */
function rope(x: Float32Array, n: number, heads: number, hd: number, theta: number): void {
  const half = hd / 2;
  for (let t = 0; t < n; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * hd;
      for (let j = 0; j < half; j++) {
        const angle = t / theta ** ((2 * j) / hd);
        const [c, s] = [Math.cos(angle), Math.sin(angle)];
        const [a, b] = [x[base + j], x[base + j + half]];
        x[base + j] = a * c - b * s;
        x[base + j + half] = b * c + a * s;
      }
    }
  }
}

/** Logits [n, vocab] of the tokens `ids`. */
function referenceForward(tensors: Tensors, ids: number[]): Float32Array {
  const get = (name: string) => tensors.get(`language_model.${name}`)?.data as Float32Array;
  const { hidden_size: d, num_attention_heads: H, num_key_value_heads: KV, head_dim: hd } = LLM;
  const n = ids.length;
  const eps = LLM.rms_norm_eps;
  let x = new Float32Array(n * d);
  const embed = get('model.embed_tokens.weight');
  for (const [t, id] of ids.entries()) x.set(embed.subarray(id * d, (id + 1) * d), t * d);
  for (let l = 0; l < LLM.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const h = rmsNorm(x, n, get(`${p}input_layernorm.weight`), eps);
    const proj = (name: string, out: number) =>
      linear(h, n, get(`${p}self_attn.${name}.weight`), out, get(`${p}self_attn.${name}.bias`));
    const q = proj('q_proj', H * hd);
    const k = proj('k_proj', KV * hd);
    const v = proj('v_proj', KV * hd);
    rope(q, n, H, hd, LLM.rope_theta);
    rope(k, n, KV, hd, LLM.rope_theta);
    const attn = new Float32Array(n * H * hd);
    for (let head = 0; head < H; head++) {
      const kvHead = Math.floor(head / (H / KV));
      for (let t = 0; t < n; t++) {
        const scores = [];
        for (let u = 0; u <= t; u++) {
          let s = 0;
          for (let j = 0; j < hd; j++) s += q[(t * H + head) * hd + j] * k[(u * KV + kvHead) * hd + j];
          scores.push(s / Math.sqrt(hd));
        }
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j < hd; j++) {
          let s = 0;
          for (let u = 0; u <= t; u++) s += (e[u] / z) * v[(u * KV + kvHead) * hd + j];
          attn[(t * H + head) * hd + j] = s;
        }
      }
    }
    const o = linear(attn, n, get(`${p}self_attn.o_proj.weight`), d);
    x = x.map((xi, i) => xi + o[i]);
    const h2 = rmsNorm(x, n, get(`${p}post_attention_layernorm.weight`), eps);
    const ff = LLM.intermediate_size;
    const gate = linear(h2, n, get(`${p}mlp.gate_proj.weight`), ff);
    const up = linear(h2, n, get(`${p}mlp.up_proj.weight`), ff);
    const act = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]);
    const down = linear(act, n, get(`${p}mlp.down_proj.weight`), d);
    x = x.map((xi, i) => xi + down[i]);
  }
  const final = rmsNorm(x, n, get('model.norm.weight'), eps);
  return linear(final, n, get('lm_head.weight'), LLM.vocab_size);
}

describe('InternLM3 decoder', () => {
  test('the engine gives the logits of a plain-JS forward of the same random weights', async () => {
    const dims = decoderDimsFromConfig(config({}));
    assert.equal(dims.arch, 'internlm3');
    assert.equal(dims.headDim, 16);
    const random = seeded(7);
    const tensors: Tensors = new Map();
    for (const { name, shape } of decoderTensorSpecs(dims)) {
      const size = shape.reduce((a, b) => a * b, 1);
      const isNorm = /norm\.weight$/.test(name);
      const data = Float32Array.from({ length: size }, () => (isNorm ? 1 + 0.2 * random() : 0.4 * random()));
      tensors.set(name, { shape, data });
    }
    assert.ok(tensors.has('language_model.model.layers.1.self_attn.k_proj.bias'));
    assert.ok(!tensors.has('language_model.model.layers.1.self_attn.o_proj.bias'));
    const ids = [3, 17, 5, 39, 0, 22, 11];
    const expected = referenceForward(tensors, ids);
    const runner = await DecoderRunner.create(dims, memoryWeights(tensors), { threads: 1 });
    try {
      const seq = runner.newSequence();
      const logits = await runner.forward(seq, runner.embed(ids), ids.length, { allLogits: true });
      const scale = expected.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      const diff = maxAbsDiff(logits, expected);
      assert.ok(diff < 1e-4 * scale, `max abs diff ${diff}, largest logit ${scale}`);
    } finally {
      await runner.release();
    }
  });

  test('the InternVL3-9B llm_config parses (dynamic rope, no biases); bias true is refused by name', () => {
    const dims = decoderDimsFromConfig(
      config({
        hidden_size: 4096,
        intermediate_size: 10240,
        num_hidden_layers: 48,
        num_attention_heads: 32,
        num_key_value_heads: 2,
        head_dim: 128,
        vocab_size: 128512,
        qkv_bias: false,
        rope_scaling: { factor: 6.0, rope_type: 'dynamic' },
      }),
    );
    assert.deepEqual([dims.arch, dims.headDim, dims.attentionBias], ['internlm3', 128, false]);
    assert.deepEqual(dims.ropeScaling, { type: 'dynamic', factor: 6 });
    assert.throws(
      () => decoderDimsFromConfig(config({ bias: true })),
      (e: unknown) =>
        e instanceof InternVLError && e.code === 'UNSUPPORTED' && /llm_config.bias: true/.test(e.message),
    );
  });
});

describe('the Qwen2 golden model relabelled as InternLM3', () => {
  // InternLM3 with qkv_bias and without `bias` is the Qwen2 block under the same names, so the golden
  // tiny-internvl2_5-qwen2 weights under an InternLM3 llm_config must give its reference logits.
  const golden = 'tiny-internvl2_5-qwen2';
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ivl-internlm3-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const config = JSON.parse(readFileSync(path.join(goldenModelDir(golden), 'config.json'), 'utf8'));
  const { use_sliding_window, sliding_window, max_window_layers, ...llm } = config.llm_config;
  config.llm_config = {
    ...llm,
    architectures: ['InternLM3ForCausalLM'],
    model_type: 'internlm3',
    head_dim: llm.hidden_size / llm.num_attention_heads,
    qkv_bias: true,
    bias: false,
  };
  for (const f of readdirSync(goldenModelDir(golden)))
    copyFileSync(path.join(goldenModelDir(golden), f), path.join(dir, f));
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));

  async function goldenCase() {
    const c = await Checkpoint.open(path.join(GOLDEN_DIR, 'cases', golden, 'text.safetensors'));
    try {
      return {
        ids: Array.from(await c.readInt64('input_ids'), Number),
        logits: await c.readFloat32('logits_all'),
      };
    } finally {
      await c.close();
    }
  }

  test('the engine gives the golden reference logits and greedy tokens (text case)', async () => {
    const { ids, logits } = await goldenCase();
    const engine = await EngineCore.load(dir, { cacheDir: false, threads: 1 });
    try {
      const diff = maxAbsDiff(await engine.forwardLogits(ids), logits);
      assert.ok(diff < 2e-4, `engine vs reference logits: ${diff}`);
      const original = await EngineCore.load(goldenModelDir(golden), { cacheDir: false, threads: 1 });
      try {
        assert.deepEqual(await engine.generateGreedy(ids, 8), await original.generateGreedy(ids, 8));
      } finally {
        await original.close();
      }
    } finally {
      await engine.close();
    }
  });

  test('the training graph gives the same reference logits', async () => {
    const { ids, logits } = await goldenCase();
    const trainer = await Trainer.create({ model: dir, stage: 2, optimizer: { lr: 1e-3 } });
    try {
      const out = await trainer.logits({ inputIds: ids, cuSeqlens: [0, ids.length] });
      const diff = maxAbsDiff(out, logits);
      assert.ok(diff < 2e-4, `trainer vs reference logits: ${diff}`);
    } finally {
      await trainer.close();
    }
  });
});
