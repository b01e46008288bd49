/** `internvl-ts/server`: the OpenAI-compatible HTTP server (`internvl serve`). */
export { createServer, InternVLServer, type ServerOptions } from './server.js';
