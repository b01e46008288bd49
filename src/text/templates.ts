import { InternVLError } from '../errors.js';

/** Conversation templates of `internvl_chat/internvl/conversation.py` used by InternVL 2.5 / 2.0 / 1.5 checkpoints. */
export const TEMPLATE_NAMES = ['internvl2_5', 'Hermes-2', 'internlm2-chat', 'phi3-chat'] as const;
export type TemplateName = (typeof TEMPLATE_NAMES)[number];

/** A conversation template, MPT separator style (every template InternVL 2.x uses). */
export interface Template {
  readonly name: TemplateName;
  /** Contains `{system_message}` once, as in conversation.py. */
  readonly systemTemplate: string;
  readonly systemMessage: string;
  readonly userRole: string;
  readonly assistantRole: string;
  /** Appended after the system prompt and after every non-empty message. */
  readonly sep: string;
  /** conversation.py's `stop_str` (only Hermes-2 sets one; `chat()` never uses it). */
  readonly stopStr: string | null;
  /** `sep.strip()`: the token whose id ends generation, and where the decoded response is cut. */
  readonly eosToken: string;
}

const INTERNVL2_5_SYSTEM_MESSAGE =
  '你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。';
const INTERNVL2_SYSTEM_MESSAGE =
  '你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。';

const CHATML_SYSTEM_TEMPLATE = '<|im_start|>system\n{system_message}';
const CHATML_USER = '<|im_start|>user\n';
const CHATML_ASSISTANT = '<|im_start|>assistant\n';

type TemplateFields = Omit<Template, 'name' | 'eosToken'>;

const TEMPLATE_FIELDS: Record<TemplateName, TemplateFields> = {
  internvl2_5: {
    systemTemplate: CHATML_SYSTEM_TEMPLATE,
    systemMessage: INTERNVL2_5_SYSTEM_MESSAGE,
    userRole: CHATML_USER,
    assistantRole: CHATML_ASSISTANT,
    sep: '<|im_end|>\n',
    stopStr: null,
  },
  'Hermes-2': {
    systemTemplate: CHATML_SYSTEM_TEMPLATE,
    systemMessage: INTERNVL2_SYSTEM_MESSAGE,
    userRole: CHATML_USER,
    assistantRole: CHATML_ASSISTANT,
    sep: '<|im_end|>',
    stopStr: '<|endoftext|>',
  },
  'internlm2-chat': {
    systemTemplate: CHATML_SYSTEM_TEMPLATE,
    systemMessage: INTERNVL2_SYSTEM_MESSAGE,
    userRole: CHATML_USER,
    assistantRole: CHATML_ASSISTANT,
    sep: '<|im_end|>',
    stopStr: null,
  },
  'phi3-chat': {
    systemTemplate: '<|system|>\n{system_message}',
    systemMessage: INTERNVL2_SYSTEM_MESSAGE,
    userRole: '<|user|>\n',
    assistantRole: '<|assistant|>\n',
    sep: '<|end|>',
    stopStr: null,
  },
};

// Python's str.isspace() set, which differs from JS trim() at U+001C..U+001F, U+0085 and U+FEFF.
const PY_WHITESPACE =
  '[\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const PY_STRIP_RE = new RegExp(`^${PY_WHITESPACE}+|${PY_WHITESPACE}+$`, 'g');

/** Python's `str.strip()` with no argument. */
export function pythonStrip(text: string): string {
  return text.replace(PY_STRIP_RE, '');
}

export function isTemplateName(name: string): name is TemplateName {
  return (TEMPLATE_NAMES as readonly string[]).includes(name);
}

/**
 * The template a checkpoint config names (`config.template`). `systemMessage` replaces the template's
 * default, as `config.system_message` does in the official model.
 */
export function getTemplate(name: string, options: { systemMessage?: string } = {}): Template {
  if (!isTemplateName(name)) {
    throw new InternVLError(
      'UNSUPPORTED',
      `unknown conversation template '${name}'; known templates: ${TEMPLATE_NAMES.join(', ')}`,
    );
  }
  const fields = TEMPLATE_FIELDS[name];
  return {
    name,
    ...fields,
    systemMessage: options.systemMessage ?? fields.systemMessage,
    eosToken: pythonStrip(fields.sep),
  };
}

/** The same template with another default system message. */
export function withSystemMessage(template: Template, systemMessage: string): Template {
  return { ...template, systemMessage };
}

/** `system_template.format(system_message=...)`; braces inside the message are not interpreted. */
export function renderSystemPrompt(
  template: Template,
  systemMessage: string = template.systemMessage,
): string {
  return template.systemTemplate.split('{system_message}').join(systemMessage);
}

export interface ChatTurn {
  role: 'system' | 'user' | 'assistant';
  content: string;
  /**
   * Opens the turn in place of the template's role string, for turns the template has no role for
   * (InternLM2's `<|im_start|>environment name=<|plugin|>\n`); such a turn may be a later system turn.
   */
  header?: string;
}

export interface RenderOptions {
  /** Overrides the template's system message (a leading `system` turn overrides both). */
  systemMessage?: string;
  /** Append the assistant role with no message, the turn the model completes (default true). */
  openAssistant?: boolean;
}

/**
 * conversation.py `get_prompt()` for SeparatorStyle.MPT: the system prompt + sep, then `role + content + sep`
 * per turn, where an empty content renders the role alone. Only a single leading `system` turn is accepted.
 */
export function renderConversation(
  template: Template,
  turns: readonly ChatTurn[],
  options: RenderOptions = {},
): string {
  let systemMessage = options.systemMessage ?? template.systemMessage;
  const parts: string[] = [];
  for (let i = 0; i < turns.length; i++) {
    const turn = turns[i];
    if (turn === null || typeof turn !== 'object' || typeof turn.content !== 'string') {
      throw new InternVLError('BAD_PROMPT', `chat turn ${i} must be an object with a string 'content'`);
    }
    if (turn.header !== undefined) {
      parts.push(turn.header + turn.content + template.sep);
      continue;
    }
    if (turn.role === 'system') {
      if (i !== 0) {
        throw new InternVLError(
          'BAD_PROMPT',
          `chat turn ${i}: a system message is only allowed as the first turn`,
        );
      }
      systemMessage = turn.content;
      continue;
    }
    let role: string;
    if (turn.role === 'user') role = template.userRole;
    else if (turn.role === 'assistant') role = template.assistantRole;
    else {
      throw new InternVLError(
        'BAD_PROMPT',
        `chat turn ${i} has role '${String(turn.role)}'; expected 'system', 'user' or 'assistant'`,
      );
    }
    parts.push(turn.content ? role + turn.content + template.sep : role);
  }
  if (options.openAssistant ?? true) parts.push(template.assistantRole);
  return renderSystemPrompt(template, systemMessage) + template.sep + parts.join('');
}
