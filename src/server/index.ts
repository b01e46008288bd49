/** `internvl-ts/server`: the OpenAI-compatible HTTP server (`internvl serve`). */
export type { BackendResult, BackendRun, ServerBackend } from './backend.js';
export { pipelineBackend } from './pipeline-backend.js';
export { createServer, InternVLServer, type ServerOptions } from './server.js';
