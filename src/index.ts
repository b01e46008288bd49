/**
 * `internvl-ts`: the pipeline, preprocessing, the engine and errors. Beside it: `internvl-ts/server`,
 * `internvl-ts/train`, `internvl-ts/web` (the browser library) and `internvl-ts/tools`.
 */
// Checkpoint → config → image/video → tiles → pixel values → text → engine.
export {
  type GenerationConfigFile,
  loadGenerationConfig,
  parseGenerationConfig,
} from './config/generation-config.js';
export {
  imageSize,
  type LlmConfig,
  type ModelConfig,
  numImageTokens,
  type VisionConfig,
} from './config/model-config.js';
export type { EngineOptions } from './engine/core.js';
export type { ResponseFormat } from './engine/grammar-types.js';
export { type ImageOptions, InternVLModel, type LoadOptions } from './engine/model.js';
export { type ErrorCode, InternVLError } from './errors.js';
export { type ResolveModelOptions, resolveModel } from './io/hub.js';
export { type ImageSource, type LoadImageOptions, loadImage } from './io/image.js';
export { createTaskProgress, type TaskProgress } from './io/progress.js';
export { Checkpoint } from './io/safetensors.js';
export type { TensorInfo } from './io/safetensors-format.js';
export { writeSafetensors } from './io/safetensors-write.js';
export { loadTokenizer } from './io/tokenizer-files.js';
export { loadModelConfig, parseModelConfig, SUPPORTED_LLM_ARCHITECTURES } from './models/model-config.js';
export {
  type ChatMessage,
  type ContentPart,
  IMAGE_TOKEN,
  type ImageLike,
  type Input,
  type PromptInput,
  type VideoInput,
} from './pipeline/conversation.js';
export type { GenerationConfig, GenerationConfigInput } from './pipeline/generation-config.js';
export {
  DEFAULT_MODEL,
  type FinishReason,
  Pipeline,
  type PipelineOptions,
  pipeline,
  type Response,
  type RunOptions,
  Session,
  type StreamChunk,
  type TokenLogprobInfo,
  type Usage,
} from './pipeline/pipeline.js';
export type {
  ToolCall,
  ToolCallDelta,
  ToolChoice,
  ToolDefinition,
  ToolOptions,
} from './pipeline/tool-calls.js';
export { type LoadedVideo, type LoadVideoOptions, loadVideo } from './pipeline/video-load.js';
export type { RgbImage } from './preprocess/image.js';
export { IMAGENET_MEAN, IMAGENET_STD, toPixelValues } from './preprocess/pixels.js';
export { resizeBicubic } from './preprocess/resize.js';
export { type DynamicPreprocessResult, dynamicPreprocess } from './preprocess/tiles.js';
export { planTiles, type TilePlan, type TilingOptions } from './preprocess/tiling.js';
export { videoFrameIndices, videoToTiles } from './preprocess/video.js';
export {
  buildBatchChatPrompts,
  buildChatPrompt,
  expandImagePlaceholders,
  frameLabels,
  imageLabels,
  postprocessResponse,
} from './text/prompt.js';
export { StreamDecoder } from './text/stream-decoder.js';
export {
  type ChatTurn,
  getTemplate,
  renderConversation,
  TEMPLATE_NAMES,
  type Template,
} from './text/templates.js';
export { createTokenizer } from './text/tokenizer.js';
export type { DecodeOptions, EncodeOptions, Tokenizer } from './text/types.js';
