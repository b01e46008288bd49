/**
 * Constrained decoding with XGrammar in the engine thread: a response format (JSON object, JSON Schema,
 * regex, EBNF) is compiled against the model's vocabulary into a grammar whose matcher gives each step's
 * allowed-token bitmask.
 *
 * The same engine runs in Node and in browsers; only XGrammar's loader differs (xgrammar.ts, and
 * xgrammar-web.ts in the browser bundle).
 *
 * Two XGrammar instances: a bad format aborts the instance that reads it (see xgrammar-instance.ts), so each new
 * format is first parsed into a grammar (cheap, no vocabulary) on a throwaway "checking" instance,
 * replaced after an abort; only formats that parse there are compiled on the serving instance, whose
 * compiled grammars and matchers running requests use. Compiled grammars are cached by format (the
 * vocabulary is the engine's one tokenizer).
 */
import type { CompiledGrammar, Grammar, GrammarCompiler, TokenizerInfo } from '@mlc-ai/web-xgrammar';
import { InternVLError } from '../errors.js';
import type { GrammarProvider, ResponseFormat, TokenMatcher } from './grammar-types.js';
import type { GrammarVocab } from './grammar-vocab.js';
import { Utf8Guard } from './utf8-guard.js';
import { loadXGrammarFactory } from './xgrammar.js';
import { type XGrammarFactory, XGrammarInstance, type XGrammarModule } from './xgrammar-instance.js';

/** How XGrammar writes JSON here: compact, one line, no free whitespace (fewer tokens, no runaway spaces). */
const JSON_LAYOUT = { anyWhitespace: false, indent: -1, separators: [',', ':'] as [string, string] };

function schemaText(format: ResponseFormat & { type: 'json_schema' | 'json_object' }): string {
  return format.type === 'json_object' ? '{"type":"object"}' : JSON.stringify(format.jsonSchema);
}

function strictMode(format: ResponseFormat): boolean {
  return format.type === 'json_schema' ? (format.strict ?? true) : false;
}

function regexTag(pattern: string) {
  return { type: 'structural_tag' as const, format: { type: 'regex' as const, pattern } };
}

/** How structural tags' JSON parts are written: as `json.dumps` (and chat templates' `tojson`) writes it. */
const TAG_JSON_SEPARATORS: [string, string] = [', ', ': '];

/**
 * A structural tag with each `json_schema` part replaced by its grammar (XGrammar's own would admit
 * any whitespace between tokens, without bound).
 */
async function tagWithJsonGrammars(xg: XGrammarModule, node: unknown): Promise<unknown> {
  if (Array.isArray(node)) return Promise.all(node.map((item) => tagWithJsonGrammars(xg, item)));
  if (node === null || typeof node !== 'object') return node;
  const record = node as Record<string, unknown>;
  if (record.type === 'json_schema' && 'json_schema' in record) {
    const schema = JSON.stringify(record.json_schema);
    const grammar = await xg.Testings._jsonSchemaToEBNF(schema, false, -1, TAG_JSON_SEPARATORS, true);
    return { type: 'grammar', grammar };
  }
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(record)) out[key] = await tagWithJsonGrammars(xg, value);
  return out;
}

/** XGrammar's structural tag around a format object (checked by XGrammar itself). */
function structuralTagOf(format: Record<string, unknown>): Record<string, unknown> {
  return { type: 'structural_tag', format };
}

/**
 * Parses a format into a grammar without a vocabulary (throws on a bad format); returns the format to
 * compile (a structural tag with its JSON parts as grammars).
 */
async function checkFormat(xg: XGrammarModule, format: ResponseFormat): Promise<ResponseFormat> {
  const { anyWhitespace, indent, separators } = JSON_LAYOUT;
  let checked = format;
  let grammar: Grammar;
  if (format.type === 'structural_tag') {
    const structuralTag = (await tagWithJsonGrammars(xg, format.structuralTag)) as Record<string, unknown>;
    checked = { type: 'structural_tag', structuralTag };
    grammar = await xg.Grammar.fromStructuralTag(structuralTagOf(structuralTag));
  } else if (format.type === 'grammar') grammar = await xg.Grammar.fromEBNF(format.ebnf);
  else if (format.type === 'regex') grammar = await xg.Grammar.fromStructuralTag(regexTag(format.pattern));
  else {
    grammar = await xg.Grammar.fromJSONSchema(
      schemaText(format),
      anyWhitespace,
      indent,
      separators,
      strictMode(format),
    );
  }
  grammar.dispose();
  return checked;
}

function compileOn(compiler: GrammarCompiler, format: ResponseFormat): Promise<CompiledGrammar> {
  const { anyWhitespace, indent, separators } = JSON_LAYOUT;
  if (format.type === 'grammar') return compiler.compileGrammar(format.ebnf);
  if (format.type === 'regex') return compiler.compileStructuralTag(regexTag(format.pattern));
  if (format.type === 'structural_tag') {
    return compiler.compileStructuralTag(structuralTagOf(format.structuralTag));
  }
  return compiler.compileJSONSchema(
    schemaText(format),
    anyWhitespace,
    indent,
    separators,
    strictMode(format),
  );
}

/** A format's cache key: its type and content. */
export function formatKey(format: ResponseFormat): string {
  return JSON.stringify(format);
}

function formatName(format: ResponseFormat): string {
  if (format.type === 'json_schema') return 'invalid JSON schema';
  if (format.type === 'regex') return 'invalid regex';
  if (format.type === 'grammar') return 'invalid EBNF grammar';
  if (format.type === 'structural_tag') return 'invalid structural tag';
  return 'invalid response format';
}

interface Serving {
  controlIds: number[];
  controlIdsButNewline: number[];
  utf8: Utf8Guard;
  instance: XGrammarInstance;
  info: TokenizerInfo;
  compiler: GrammarCompiler;
}

export interface GrammarEngineOptions {
  /** Compiled grammars kept (least recently used dropped first); default 64. */
  cacheSize?: number;
  /**
   * Where XGrammar's bundle (`@mlc-ai/web-xgrammar/lib/index.js`) is: in a browser, the URL the page
   * serves it at (needed there); in Node, a file path (default: the installed package).
   */
  xgrammarSource?: string;
}

export class GrammarEngine implements GrammarProvider {
  #serving: Promise<Serving> | undefined;
  #servingInstanceLoaded: XGrammarInstance | undefined;
  #checker: XGrammarInstance | undefined;
  readonly #compiled = new Map<string, Promise<CompiledGrammar>>();
  readonly #cacheSize: number;
  readonly #source: string | undefined;
  #factory: Promise<XGrammarFactory> | undefined;
  /** Milliseconds each compile took (parse check + compile), latest last; for benchmarks. */
  readonly compileTimes: number[] = [];

  constructor(
    private readonly vocab: () => Promise<GrammarVocab>,
    options: GrammarEngineOptions = {},
  ) {
    this.#cacheSize = options.cacheSize ?? 64;
    this.#source = options.xgrammarSource;
  }

  /** A new XGrammar instance (the bundle is read once, on the first). */
  async #newInstance(): Promise<XGrammarInstance> {
    this.#factory ??= loadXGrammarFactory(this.#source);
    this.#factory.catch(() => {
      this.#factory = undefined;
    });
    return new XGrammarInstance(await this.#factory);
  }

  #servingInstance(): Promise<Serving> {
    this.#serving ??= (async () => {
      const { encodedVocab, vocabType, prependSpace, controlIds, controlIdsButNewline, bytes } =
        await this.vocab();
      const utf8 = new Utf8Guard(bytes);
      const instance = await this.#newInstance();
      return instance.run('loading the vocabulary into XGrammar', 'INTERNAL', async (xg) => {
        const info = await xg.TokenizerInfo.createTokenizerInfo(
          encodedVocab,
          vocabType,
          prependSpace,
          encodedVocab.length,
        );
        const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
        this.#servingInstanceLoaded = instance;
        return { instance, info, compiler, controlIds, controlIdsButNewline, utf8 };
      });
    })();
    this.#serving.catch(() => {
      this.#serving = undefined;
    });
    return this.#serving;
  }

  /** Checks and compiles `format` (cached); throws BAD_INPUT naming the problem. */
  compile(format: ResponseFormat): Promise<CompiledGrammar> {
    if (this.#servingInstanceLoaded?.aborted) {
      // It should never abort (formats are checked first); if it did, start over with a new one.
      this.#serving = undefined;
      this.#servingInstanceLoaded = undefined;
      this.#compiled.clear();
    }
    const key = formatKey(format);
    const hit = this.#compiled.get(key);
    if (hit) {
      this.#compiled.delete(key);
      this.#compiled.set(key, hit);
      return hit;
    }
    const compiled = this.#compileNew(format);
    this.#compiled.set(key, compiled);
    compiled.catch(() => this.#compiled.delete(key));
    while (this.#compiled.size > this.#cacheSize) {
      const [oldest, entry] = this.#compiled.entries().next().value as [string, Promise<CompiledGrammar>];
      this.#compiled.delete(oldest);
      // Matchers made from it keep the grammar alive inside XGrammar.
      entry.then((g) => g.dispose()).catch(() => {});
    }
    return compiled;
  }

  /** Compiles `format` as compile() does; returns how long it took (0 when it was cached). */
  async compileTimed(format: ResponseFormat): Promise<{ compileMs: number }> {
    const before = this.compileTimes.length;
    await this.compile(format);
    const times = this.compileTimes;
    return { compileMs: times.length > before ? times[times.length - 1] : 0 };
  }

  async #compileNew(format: ResponseFormat): Promise<CompiledGrammar> {
    const started = performance.now();
    if (!this.#checker || this.#checker.aborted) this.#checker = await this.#newInstance();
    const checked = await this.#checker.run(formatName(format), 'BAD_INPUT', (xg) => checkFormat(xg, format));
    const serving = await this.#servingInstance();
    const compiled = await serving.instance.run(`compiling ${format.type}`, 'INTERNAL', () =>
      compileOn(serving.compiler, checked),
    );
    this.compileTimes.push(performance.now() - started);
    if (this.compileTimes.length > 100) this.compileTimes.shift();
    return compiled;
  }

  async matcher(format: ResponseFormat, endTokenIds: readonly number[]): Promise<TokenMatcher> {
    if (endTokenIds.length === 0) {
      throw new InternVLError(
        'BAD_INPUT',
        'a response format needs an end token to finish on (ignoreEos without stopTokenIds leaves none)',
      );
    }
    const compiled = await this.compile(format);
    const { instance, controlIds, controlIdsButNewline, utf8 } = await this.#servingInstance();
    const m = await instance.run('creating a grammar matcher', 'INTERNAL', (xg) =>
      xg.GrammarMatcher.createGrammarMatcher(compiled, [...endTokenIds]),
    );
    // XGrammar's JSON strings admit raw control characters, which JSON.parse (RFC 8259) rejects.
    // In a structural tag's JSON parts too (XGrammar's length-bounded strings admit them); its text
    // parts keep newlines, which tool-call syntax needs and JSON strings exclude.
    const banned =
      format.type === 'json_schema' || format.type === 'json_object'
        ? controlIds
        : format.type === 'structural_tag'
          ? controlIdsButNewline
          : [];
    let utf8State = 0;
    const maskFor = async (state: number) => {
      const mask = await m.getNextTokenBitmask();
      for (const id of banned) mask[id >> 5] &= ~(1 << (id & 31));
      utf8.restrict(mask, state);
      return mask;
    };
    let mask = await maskFor(utf8State);
    return {
      mask: () => mask,
      accept: async (id) => {
        const state = utf8.next(utf8State, id);
        if (state < 0 || !m.acceptToken(id)) return false;
        const next = await maskFor(state);
        // A dead end: the grammar and well-formed UTF-8 agree on no next token (XGrammar reads a
        // non-ASCII character in a character class as a byte, so the two can part ways).
        if (next.every((word) => word === 0)) {
          m.rollBack(1);
          return false;
        }
        utf8State = state;
        mask = next;
        return true;
      },
      dispose: () => m.dispose(),
    };
  }
}
