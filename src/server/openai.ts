/**
 * The OpenAI wire format of Chat Completions and legacy Completions, in three parts: request bodies
 * validated (`openai-schemas.ts`), their parameters mapped to a generation config
 * (`openai-generation.ts`) and their messages turned into pipeline messages (`openai-messages.ts`).
 * Replies, chunks and logprobs are shaped in `openai-responses.ts`. The semantics worth knowing are in
 * each module's comment and the README's server section.
 */
export {
  COMPLETIONS_DEFAULT_MAX_TOKENS,
  chatGeneration,
  choiceConfigs,
  completionGeneration,
} from './openai-generation.js';
export {
  DETAIL_TILES,
  imageTileBudget,
  type MediaLimits,
  type PreparedMessages,
  prepareMessages,
} from './openai-messages.js';
export {
  type ChatCompletionRequest,
  type CompletionRequest,
  chatCompletionRequestSchema,
  completionRequestSchema,
  formatPath,
  MAX_CONTENT_PARTS,
  MAX_MESSAGES,
  MAX_PROMPTS,
  parseRequest,
} from './openai-schemas.js';
