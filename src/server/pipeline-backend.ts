/** A loaded `Pipeline` as the server's backend. */
import path from 'node:path';
import { InternVLError } from '../errors.js';
import type { Pipeline, StreamChunk } from '../pipeline/pipeline.js';
import type { ServerBackend } from './backend.js';

export function pipelineBackend(pipe: Pipeline): ServerBackend {
  return {
    modelId: path.basename(pipe.model.dir),
    get defaultImageTiles() {
      return pipe.options.maxTiles ?? pipe.config.max_dynamic_patch;
    },
    async chat(messages, gen, { signal, onChunk }) {
      // The stream's last chunk says how it ended; the others carry the text.
      let last: StreamChunk | undefined;
      for await (const chunk of pipe.stream(messages, gen, { signal })) {
        if (chunk.finishReason) last = chunk;
        else onChunk(chunk);
      }
      if (!last?.finishReason || !last.usage)
        throw new InternVLError('INTERNAL', 'the stream ended without its final chunk');
      return { finishReason: last.finishReason, usage: last.usage };
    },
    complete: (prompt, gen, run) => pipe.complete(prompt, gen, run),
    compileResponseFormat: (format) => pipe.compileResponseFormat(format),
    compileTools: (options) => pipe.compileTools(options),
    close: () => pipe.close(),
  };
}
