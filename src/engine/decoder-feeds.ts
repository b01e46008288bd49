/**
 * The inputs of one decoder graph run (contract in models/decoder.ts): a prefill chunk of one sequence,
 * or one decode step of every sequence in the batch, with their rotary rows and KV pasts.
 */
import { DECODER_IO, type DecoderDims } from '../models/decoder.js';
import { type RopeParams, rotaryTables } from '../models/rope.js';
import type { Sequence } from './kv-cache.js';
import * as ort from './ort.js';

export interface RunInputs {
  feeds: Record<string, ort.Tensor>;
  fetches: string[];
}

/** A float32 array ORT can wrap without copying a wrong region (subarrays are copied). */
function ownBuffer(data: Float32Array): Float32Array {
  return data.byteOffset === 0 && data.byteLength === data.buffer.byteLength ? data : data.slice();
}

const indices = (n: number) => BigInt64Array.from({ length: n }, (_, i) => BigInt(i));

/**
 * `n` embeddings [n, D] appended after `seq`'s cached tokens: logits (or the argmax) of `logitsRows`,
 * the chunk's keys and values, and with `withHidden` every layer's hidden states and the final norm.
 */
export function chunkInputs(
  dims: DecoderDims,
  rope: RopeParams,
  seq: Sequence,
  embeds: Float32Array,
  n: number,
  logitsRows: number[],
  ropeSeqLen: number,
  options: { withHidden: boolean; argmaxOnly: boolean },
): RunInputs {
  const { hiddenSize: d, numLayers, headDim: hd } = dims;
  const total = seq.length + n;
  const { cos, sin } = rotaryTables(rope, seq.length, n, ropeSeqLen);
  const feeds: Record<string, ort.Tensor> = {
    [DECODER_IO.inputsEmbeds]: new ort.Tensor('float32', ownBuffer(embeds), [1, n, d]),
    [DECODER_IO.ropeCos]: new ort.Tensor('float32', cos, [n, hd / 2]),
    [DECODER_IO.ropeSin]: new ort.Tensor('float32', sin, [n, hd / 2]),
    [DECODER_IO.ropeIndex]: new ort.Tensor('int64', indices(n), [1, n]),
    [DECODER_IO.seqlensK]: new ort.Tensor('int32', Int32Array.of(total - 1), [1]),
    [DECODER_IO.totalSequenceLength]: new ort.Tensor('int32', Int32Array.of(total), []),
    [DECODER_IO.logitsRows]: new ort.Tensor('int64', BigInt64Array.from(logitsRows, BigInt), [
      logitsRows.length,
    ]),
  };
  const fetches: string[] = [options.argmaxOnly ? DECODER_IO.nextToken : DECODER_IO.logits];
  for (let i = 0; i < numLayers; i++) {
    feeds[DECODER_IO.pastKey(i)] = seq.pastTensors[i].key;
    feeds[DECODER_IO.pastValue(i)] = seq.pastTensors[i].value;
    fetches.push(DECODER_IO.key(i), DECODER_IO.value(i));
    if (options.withHidden) fetches.push(DECODER_IO.hidden(i));
  }
  if (options.withHidden) fetches.push(DECODER_IO.finalNorm);
  return { feeds, fetches };
}

/**
 * One decode step of the batch `members`: `embeds` [members.length, D] (one token each) after each
 * member's cached tokens, over the pool's pasts (`past(layer)`), fetching `fetch` and the new keys/values.
 */
export function batchStepInputs(
  dims: DecoderDims,
  rope: RopeParams,
  members: readonly Sequence[],
  embeds: Float32Array,
  past: (layer: number) => { key: ort.Tensor; value: ort.Tensor },
  fetch: string,
): RunInputs {
  const n = members.length;
  const { hiddenSize: d, numLayers, headDim: hd } = dims;
  const longest = Math.max(...members.map((s) => s.length));
  const half = hd / 2;
  const cos = new Float32Array(n * half);
  const sin = new Float32Array(n * half);
  members.forEach((seq, b) => {
    const row = rotaryTables(rope, seq.length, 1, seq.length + 1);
    cos.set(row.cos, b * half);
    sin.set(row.sin, b * half);
  });
  const feeds: Record<string, ort.Tensor> = {
    [DECODER_IO.inputsEmbeds]: new ort.Tensor('float32', embeds, [n, 1, d]),
    [DECODER_IO.ropeCos]: new ort.Tensor('float32', cos, [n, half]),
    [DECODER_IO.ropeSin]: new ort.Tensor('float32', sin, [n, half]),
    [DECODER_IO.ropeIndex]: new ort.Tensor('int64', indices(n), [n, 1]),
    [DECODER_IO.seqlensK]: new ort.Tensor(
      'int32',
      Int32Array.from(members, (s) => s.length),
      [n],
    ),
    [DECODER_IO.totalSequenceLength]: new ort.Tensor('int32', Int32Array.of(longest + 1), []),
    [DECODER_IO.logitsRows]: new ort.Tensor('int64', indices(n), [n]),
  };
  const fetches: string[] = [fetch];
  for (let i = 0; i < numLayers; i++) {
    const layerPast = past(i);
    feeds[DECODER_IO.pastKey(i)] = layerPast.key;
    feeds[DECODER_IO.pastValue(i)] = layerPast.value;
    fetches.push(DECODER_IO.key(i), DECODER_IO.value(i));
  }
  return { feeds, fetches };
}
