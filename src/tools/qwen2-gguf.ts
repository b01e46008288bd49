/**
 * The LLM of an InternVL checkpoint with a Qwen2 decoder (InternVL2_5-1B, 4B, 38B, 78B shapes), written
 * as a GGUF file llama.cpp loads (architecture `qwen2`), so llama.cpp can run the same weights at the
 * same shape as this engine: for `npm run bench:compare`. Linear weights and the embedding/output
 * tables are Q4_0, F16 or F32; norms and biases F32 (as llama.cpp's converter keeps them). The output
 * head is written in the chosen type too (llama-quantize would pick Q6_K for it; its `--pure` keeps
 * the one type), so the Q4_0 file streams what the int4 graph with an int4 lm_head streams.
 *
 * The vocabulary is synthetic: a GPT-2 byte-level BPE vocabulary of the checkpoint's size (the 256
 * byte symbols, then `tok<id>`), no merges, with the config's BOS/EOS ids as control tokens. Benchmarks
 * feed token ids, so the text side does not matter; it only has to load.
 */

import { InternVLError } from '../errors.js';
import { float32ToFloat16 } from '../io/float-formats.js';
import { quantizeQ4_0 } from '../io/ggml-quant.js';
import { type GgmlType, type GgufTensor, type GgufValue, gguf, writeGguf } from '../io/gguf.js';
import { Checkpoint } from '../io/safetensors.js';
import type { DecoderDims } from '../models/decoder.js';
import { loadModelConfig } from '../models/model-config.js';
import { decoderDimsFromConfig } from '../models/registry.js';

export type GgufWeightType = 'Q4_0' | 'F16' | 'F32';

/** llama_ftype of a file whose weights are all of one type. */
const FILE_TYPE: Record<GgufWeightType, number> = { F32: 0, F16: 1, Q4_0: 2 };

/** GPT-2's byte-to-symbol map: printable Latin-1 bytes stand for themselves, the rest for U+0100 on. */
export function gpt2ByteSymbols(): string[] {
  const printable = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = [];
  let next = 256;
  for (let b = 0; b < 256; b++) out.push(String.fromCodePoint(printable(b) ? b : next++));
  return out;
}

/** tokenizer.ggml.* metadata of a synthetic GPT-2-style vocabulary of `size` tokens. */
export function syntheticVocabMetadata(
  size: number,
  special: { bos: number; eos: number },
): Record<string, GgufValue> {
  if (size < 256 || special.bos >= size || special.eos >= size) {
    throw new InternVLError(
      'BAD_INPUT',
      `a synthetic vocabulary needs at least 256 tokens and the BOS/EOS ids below its size (size ${size}, bos ${special.bos}, eos ${special.eos})`,
    );
  }
  const tokens = gpt2ByteSymbols();
  for (let i = 256; i < size; i++) tokens.push(`tok${i}`);
  const types = new Array<number>(size).fill(1); // NORMAL
  tokens[special.bos] = '<|endoftext|>';
  tokens[special.eos] = special.eos === special.bos ? tokens[special.bos] : '<|im_end|>';
  types[special.bos] = 3; // CONTROL
  types[special.eos] = 3;
  return {
    'tokenizer.ggml.model': gguf.str('gpt2'),
    'tokenizer.ggml.pre': gguf.str('qwen2'),
    'tokenizer.ggml.tokens': gguf.array('string', tokens),
    'tokenizer.ggml.token_type': gguf.array('int32', types),
    'tokenizer.ggml.merges': gguf.array('string', []),
    'tokenizer.ggml.bos_token_id': gguf.u32(special.bos),
    'tokenizer.ggml.eos_token_id': gguf.u32(special.eos),
    'tokenizer.ggml.add_bos_token': gguf.bool(false),
  };
}

/** Rows converted per chunk (bounded memory for the 151k-row tables). */
const CHUNK_VALUES = 1 << 22;

/** A row-major [rows, cols] fp32 matrix as `type` bytes, a chunk of whole rows at a time. */
export function* encodeRows(values: Float32Array, cols: number, type: GgmlType): Generator<Uint8Array> {
  const rowsPerChunk = Math.max(1, Math.floor(CHUNK_VALUES / cols));
  for (let start = 0; start < values.length; start += rowsPerChunk * cols) {
    const part = values.subarray(start, Math.min(values.length, start + rowsPerChunk * cols));
    if (type === 'F32') yield new Uint8Array(part.buffer, part.byteOffset, part.byteLength);
    else if (type === 'F16') yield new Uint8Array(float32ToFloat16(part).buffer);
    else yield quantizeQ4_0(part);
  }
}

/** GGUF tensor name → (checkpoint tensor, weight or norm/bias) for the Qwen2 decoder of `dims`. */
function tensorMap(dims: DecoderDims): [string, string, 'weight' | 'f32'][] {
  const lm = 'language_model.';
  const map: [string, string, 'weight' | 'f32'][] = [
    ['token_embd.weight', `${lm}model.embed_tokens.weight`, 'weight'],
  ];
  for (let i = 0; i < dims.numLayers; i++) {
    const p = `${lm}model.layers.${i}.`;
    const b = `blk.${i}.`;
    map.push(
      [`${b}attn_norm.weight`, `${p}input_layernorm.weight`, 'f32'],
      [`${b}attn_q.weight`, `${p}self_attn.q_proj.weight`, 'weight'],
      [`${b}attn_q.bias`, `${p}self_attn.q_proj.bias`, 'f32'],
      [`${b}attn_k.weight`, `${p}self_attn.k_proj.weight`, 'weight'],
      [`${b}attn_k.bias`, `${p}self_attn.k_proj.bias`, 'f32'],
      [`${b}attn_v.weight`, `${p}self_attn.v_proj.weight`, 'weight'],
      [`${b}attn_v.bias`, `${p}self_attn.v_proj.bias`, 'f32'],
      [`${b}attn_output.weight`, `${p}self_attn.o_proj.weight`, 'weight'],
      [`${b}ffn_norm.weight`, `${p}post_attention_layernorm.weight`, 'f32'],
      [`${b}ffn_gate.weight`, `${p}mlp.gate_proj.weight`, 'weight'],
      [`${b}ffn_up.weight`, `${p}mlp.up_proj.weight`, 'weight'],
      [`${b}ffn_down.weight`, `${p}mlp.down_proj.weight`, 'weight'],
    );
  }
  map.push(['output_norm.weight', `${lm}model.norm.weight`, 'f32']);
  // Tied embeddings: llama.cpp uses token_embd for the output when output.weight is absent.
  if (!dims.tieWordEmbeddings) map.push(['output.weight', `${lm}lm_head.weight`, 'weight']);
  return map;
}

/** Writes the Qwen2 LLM of the InternVL checkpoint in `modelDir` to `out` as GGUF. */
export async function writeQwen2Gguf(
  modelDir: string,
  out: string,
  weightType: GgufWeightType,
): Promise<{ bytes: number; tensors: number }> {
  const config = await loadModelConfig(modelDir);
  const dims = decoderDimsFromConfig(config);
  if (dims.arch !== 'qwen2') {
    throw new InternVLError(
      'UNSUPPORTED',
      `${modelDir}: GGUF export covers Qwen2 LLMs, this one is ${dims.arch}`,
    );
  }
  const llm = config.llm_config as { bos_token_id?: number; eos_token_id?: number | number[] };
  const eos = Array.isArray(llm.eos_token_id) ? llm.eos_token_id[0] : llm.eos_token_id;
  const checkpoint = await Checkpoint.open(modelDir);
  try {
    const tensors: GgufTensor[] = tensorMap(dims).map(([name, source, kind]) => {
      if (!checkpoint.has(source)) {
        throw new InternVLError('BAD_CHECKPOINT', `${checkpoint.source}: no tensor ${source} (for ${name})`);
      }
      const shape = checkpoint.info(source).shape;
      const type: GgmlType = kind === 'f32' ? 'F32' : weightType;
      const cols = shape[shape.length - 1];
      return {
        name,
        type,
        dims: [...shape].reverse(),
        data: async function* () {
          yield* encodeRows(await checkpoint.readFloat32(source), cols, type);
        },
      };
    });
    const metadata: Record<string, GgufValue> = {
      'general.architecture': gguf.str('qwen2'),
      'general.name': gguf.str(`${config.llm_config.model_type} of ${modelDir}`),
      'general.file_type': gguf.u32(FILE_TYPE[weightType]),
      'general.quantization_version': gguf.u32(2),
      'qwen2.context_length': gguf.u32(dims.maxPositionEmbeddings),
      'qwen2.embedding_length': gguf.u32(dims.hiddenSize),
      'qwen2.block_count': gguf.u32(dims.numLayers),
      'qwen2.feed_forward_length': gguf.u32(dims.intermediateSize),
      'qwen2.attention.head_count': gguf.u32(dims.numHeads),
      'qwen2.attention.head_count_kv': gguf.u32(dims.numKvHeads),
      'qwen2.attention.key_length': gguf.u32(dims.headDim),
      'qwen2.attention.value_length': gguf.u32(dims.headDim),
      'qwen2.rope.freq_base': gguf.f32(dims.ropeTheta),
      'qwen2.attention.layer_norm_rms_epsilon': gguf.f32(dims.rmsNormEps),
      ...syntheticVocabMetadata(dims.vocabSize, { bos: llm.bos_token_id ?? 0, eos: eos ?? 0 }),
    };
    const { bytes } = await writeGguf(out, metadata, tensors);
    return { bytes, tensors: tensors.length };
  } finally {
    await checkpoint.close();
  }
}
