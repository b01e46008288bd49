/**
 * Inputs → a checked engine request: the generation config resolved, tools compiled into the response
 * format, the text bounds checked before media are fetched or text tokenized, media prepared, the
 * prompt rendered and encoded, and the context guard (prompt + maxNewTokens ≤ sessionLen).
 */
import type { GenerationConfigFile } from '../config/generation-config.js';
import { numImageTokens } from '../config/model-config.js';
import type { GenerateRequest, ImageRef } from '../engine/generate.js';
import type { InternVLModel } from '../engine/model.js';
import { samplingParams } from '../engine/sampler.js';
import { InternVLError } from '../errors.js';
import { expandImagePlaceholders } from '../text/prompt.js';
import { renderConversation, type Template } from '../text/templates.js';
import type { ToolFormat } from '../text/tool-prompts.js';
import type { Tokenizer } from '../text/types.js';
import { type Media, renderTurns, type Turn } from './conversation.js';
import {
  type GenerationConfigInput,
  type ResolvedGenerationConfig,
  resolveGenerationConfig,
} from './generation-config.js';
import type { MediaPreparer, PreparedMedia } from './media-loader.js';
import type { OffThreadTokenizer } from './off-thread-tokenizer.js';
import type { PromptBounds } from './prompt-bounds.js';
import type { PreparedRequest } from './run-request.js';
import { compileToolFormat, parseToolOptions, toolCallFormat } from './tool-calls.js';

/** What preparing a request reads from a loaded pipeline. */
export interface RequestContext {
  model: InternVLModel;
  tokenizer: Tokenizer;
  template: Template;
  generationFile: GenerationConfigFile;
  bounds: PromptBounds;
  sessionLen: number;
  toolFormat: ToolFormat;
  media: MediaPreparer;
  encoder: OffThreadTokenizer;
}

/** The request's generation config over the checkpoint's generation_config.json and template. */
export function resolveConfig(
  context: Pick<RequestContext, 'generationFile' | 'template' | 'tokenizer'>,
  gen: GenerationConfigInput | undefined,
): ResolvedGenerationConfig {
  return resolveGenerationConfig(gen, {
    fileConfig: context.generationFile,
    template: context.template,
    tokenizer: context.tokenizer,
  });
}

/** Each turn's text must fit (characters, words) before media are fetched or anything is tokenized. */
export function checkTurnTexts(bounds: PromptBounds, turns: Turn[], maxNewTokens: number): void {
  turns.forEach((turn, i) => {
    const texts = turn.parts.filter((p): p is string => typeof p === 'string');
    const what = `messages[${i}]`;
    bounds.checkLength(
      texts.reduce((n, t) => n + t.length, 0),
      what,
      maxNewTokens,
    );
    for (const text of texts) bounds.checkWords(text, what);
  });
}

/** The context guard: prompt + maxNewTokens must fit in sessionLen. */
export function checkContext(
  sessionLen: number,
  promptTokens: number,
  imageTokens: number,
  maxNewTokens: number,
): void {
  if (promptTokens + maxNewTokens > sessionLen) {
    throw new InternVLError(
      'CONTEXT_OVERFLOW',
      `the prompt has ${promptTokens} tokens (${imageTokens} of them for images) and maxNewTokens is ` +
        `${maxNewTokens}: ${promptTokens + maxNewTokens} > sessionLen ${sessionLen}`,
    );
  }
}

/** The engine's request for encoded prompt tokens, their images and a resolved config. */
export function engineRequest(
  inputIds: number[],
  images: ImageRef[],
  config: ResolvedGenerationConfig,
  sessionId?: string,
): GenerateRequest {
  return {
    inputIds,
    images,
    sessionId,
    sampling: samplingParams(config),
    maxNewTokens: config.maxNewTokens,
    endTokenIds: config.endTokenIds,
    ...(config.responseFormat ? { responseFormat: config.responseFormat } : {}),
  };
}

/** A chat's turns (with media and tools) → a checked engine request in the chat template. */
export async function prepareChatRequest(
  context: RequestContext,
  turns: Turn[],
  gen: GenerationConfigInput | undefined,
  sessionId?: string,
): Promise<PreparedRequest> {
  const config = resolveConfig(context, gen);
  const tools = gen && parseToolOptions(gen);
  const { toolFormat, model } = context;
  const toolGrammar = tools && toolCallFormat(toolFormat, tools);
  if (toolGrammar) {
    if (config.responseFormat) {
      throw new InternVLError(
        'BAD_INPUT',
        'responseFormat and tools (unless toolChoice is none) exclude each other',
      );
    }
    // Compiled here (cached) so that a schema XGrammar cannot read is an error naming its tool.
    await compileToolFormat(toolFormat, tools, (f) => model.compileGrammar(f));
    config.responseFormat = toolGrammar;
    // Tool-call markers may be special tokens (InternLM2's): they stay in the text to be read.
    config.skipSpecialTokens = false;
  }
  checkTurnTexts(context.bounds, turns, config.maxNewTokens);
  // Media are decoded and tiled first: a video's frame count and each image's tiles shape the prompt.
  const prepared = new Map<Media, PreparedMedia>();
  await Promise.all(
    turns.map((turn) => {
      const media = turn.parts.filter((p): p is Media => typeof p !== 'string');
      const images = media.filter((m) => m.kind === 'image').length;
      return Promise.all(media.map(async (m) => prepared.set(m, await context.media.prepare(m, images))));
    }),
  );
  const systemTurn = turns[0]?.role === 'system' ? turns[0] : undefined;
  const { chatTurns, media } = renderTurns(
    systemTurn ? turns.slice(1) : turns,
    (video) => prepared.get(video)!.refs.length,
  );
  const rendered = toolFormat.render(
    chatTurns,
    systemTurn ? systemTurn.parts.join('') : context.template.systemMessage,
    tools && tools.choice !== 'none' ? tools.tools : [],
  );
  const prompt = renderConversation(context.template, rendered.turns, {
    systemMessage: rendered.systemMessage,
    openAssistant: true,
  });
  context.bounds.checkLength(prompt.length, 'the prompt', config.maxNewTokens);
  const images = media.flatMap((m) => prepared.get(m)!.refs);
  const tokensPerTile = numImageTokens(model.config);
  const expanded = expandImagePlaceholders(
    prompt,
    images.map((r) => r.numTiles),
    tokensPerTile,
  );
  const inputIds = await context.encoder.encode(expanded);
  const imageTokens = images.reduce((n, r) => n + r.numTiles * tokensPerTile, 0);
  checkContext(context.sessionLen, inputIds.length, imageTokens, config.maxNewTokens);
  const request = engineRequest(inputIds, images, config, sessionId);
  return { request, config, imageTokens, ...(toolGrammar ? { toolFormat } : {}) };
}

/** A raw prompt, continued as given (no template, no images) → a checked engine request. */
export async function prepareCompletionRequest(
  context: RequestContext,
  prompt: string,
  gen: GenerationConfigInput | undefined,
): Promise<PreparedRequest> {
  const config = resolveConfig(context, gen);
  if (prompt.length === 0) throw new InternVLError('BAD_INPUT', 'prompt must not be empty');
  context.bounds.checkLength(prompt.length, 'the prompt', config.maxNewTokens);
  context.bounds.checkWords(prompt, 'the prompt');
  const inputIds = await context.encoder.encode(prompt);
  const imageContext = context.tokenizer.tokenToId('<IMG_CONTEXT>');
  if (imageContext !== undefined && inputIds.includes(imageContext)) {
    throw new InternVLError('BAD_INPUT', 'prompt contains <IMG_CONTEXT>, which only image features may fill');
  }
  if (inputIds.length === 0) throw new InternVLError('BAD_INPUT', 'prompt encodes to no tokens');
  checkContext(context.sessionLen, inputIds.length, 0, config.maxNewTokens);
  return { request: engineRequest(inputIds, [], config), config, imageTokens: 0 };
}
