/**
 * Token generation inside the engine thread, with continuous batching: every running request is one
 * sequence in the decoder's decode batch, and each scheduler step decodes one token for all of them
 * in a single graph run. A newcomer's image encoding (one tile per step) and prefill (one chunk per
 * step) are interleaved with those steps, so running streams stall for at most one tile or chunk.
 *
 * Chat sessions keep their KV cache between calls: a follow-up prompt that starts with the tokens
 * already cached prefills only what is new, and images whose tokens all lie in that prefix are not
 * encoded again. Image features are also cached by content key, bounded in bytes.
 */
import { InternVLError } from '../errors.js';
import { FeatureCache } from './feature-cache.js';
import { encodeNextTile, planImages, promptEmbeddings } from './generate-images.js';
import { commonPrefix, Job, type Session, yieldToEventLoop } from './generate-job.js';
import { checkGenerateRequest } from './generate-request.js';
import type {
  FinishReason,
  GenerateEvent,
  GenerateRequest,
  GenerateResult,
  GeneratorDeps,
} from './generate-types.js';
import { applyMask, onlyEndAllowed, type ResponseFormat } from './grammar-types.js';
import { PrefixCache, type PrefixCacheStats } from './prefix-cache.js';
import type { SampledToken } from './sampler.js';

export type * from './generate-types.js';

export class Generator {
  readonly features: FeatureCache;
  readonly #prefixes: PrefixCache | undefined;
  readonly #sessions = new Map<string, Session>();
  readonly #jobs: Job[] = [];
  readonly #maxBatch: number;
  readonly #prefillChunk: number;
  #running = false;

  constructor(private readonly deps: GeneratorDeps) {
    this.features = new FeatureCache(deps.featureCacheBytes ?? 512 * 1024 * 1024);
    this.#maxBatch = deps.maxBatchSize ?? 16;
    this.#prefillChunk = deps.prefillChunk ?? deps.decoder.prefillChunk;
    const prefixBytes = deps.prefixCacheBytes ?? 0;
    this.#prefixes =
      prefixBytes > 0 ? new PrefixCache(prefixBytes, deps.imgContextId, deps.tokensPerTile) : undefined;
  }

  /** What the cross-request prompt cache holds and has served; undefined when it is off. */
  get prefixCacheStats(): PrefixCacheStats | undefined {
    return this.#prefixes?.stats;
  }

  /** Stops a call before its next step (finishReason 'abort'); calls not started yet end at once. */
  abort(callId: number): void {
    const job = this.#jobs.find((j) => j.callId === callId);
    if (job) job.aborted = true;
  }

  releaseSession(sessionId: string): boolean {
    const session = this.#sessions.get(sessionId);
    if (session?.busy) return false;
    return this.#sessions.delete(sessionId);
  }

  generate(
    request: GenerateRequest,
    callId: number,
    onEvent: (event: GenerateEvent) => void,
  ): Promise<GenerateResult> {
    return new Promise((resolve, reject) => {
      try {
        checkGenerateRequest(request, this.deps);
        if (request.sessionId && this.#sessions.get(request.sessionId)?.busy) {
          throw new InternVLError('BAD_INPUT', `chat session ${request.sessionId} is already generating`);
        }
        this.#jobs.push(new Job(request, callId, onEvent, resolve, reject, this.deps.decoder.dims.vocabSize));
      } catch (err) {
        reject(err);
        return;
      }
      if (!this.#running) void this.#loop();
    });
  }

  async #loop(): Promise<void> {
    this.#running = true;
    try {
      while (this.#jobs.length > 0) {
        for (const job of this.#jobs.filter((j) => j.aborted)) this.#finish(job, 'abort');
        const batched = this.#jobs.filter((j) => j.next !== undefined);
        const newcomer = this.#jobs.find((j) => j.next === undefined);
        if (newcomer && batched.length < this.#maxBatch) {
          await this.#advance(newcomer).catch((err) => this.#fail(newcomer, err));
        }
        if (this.deps.decoder.batch.length > 0) await this.#decodeStep();
        // Let abort messages and new requests in between steps.
        await yieldToEventLoop();
      }
    } finally {
      this.#running = false;
    }
  }

  /** One unit of a newcomer's work: start, one tile of vision encoding, or one prefill chunk. */
  async #advance(job: Job): Promise<void> {
    const { decoder } = this.deps;
    const ids = job.request.inputIds;
    if (!job.started) {
      job.started = true;
      // First, so a bad format fails the request before it holds a session or a sequence.
      if (job.request.responseFormat) await this.#startGrammar(job, job.request.responseFormat);
      const sessionId = job.request.sessionId;
      job.session = sessionId ? this.#sessions.get(sessionId) : undefined;
      if (job.session?.busy) {
        // Two calls of one conversation were queued together; the second may not share the first's cache.
        job.session = undefined;
        throw new InternVLError('BAD_INPUT', `chat session ${sessionId} is already generating`);
      }
      if (job.session) {
        job.seq = job.session.seq;
        // At least the last prompt token is run, so there are logits to sample from.
        job.reused = Math.min(commonPrefix(job.session.tokens, ids), ids.length - 1);
        job.seq.truncate(job.reused);
      } else {
        const hit = this.#prefixes?.lookup(ids, job.request.images);
        job.reused = hit ? Math.min(hit.length, ids.length - 1) : 0;
        job.seq = hit ? decoder.fork(hit.seq, job.reused) : decoder.newSequence();
        if (hit) this.#prefixes?.recordHit(job.reused);
      }
      job.prefilled = job.reused;
      if (sessionId) {
        job.session = { seq: job.seq, tokens: ids.slice(0, job.reused), busy: true };
        this.#sessions.set(sessionId, job.session);
      }
      planImages(job, this.deps, this.features);
      return;
    }
    if (await encodeNextTile(job, this.deps, this.features)) return;
    if (!job.embeds) job.embeds = promptEmbeddings(job, this.deps);
    const d = decoder.dims.hiddenSize;
    const n = Math.min(this.#prefillChunk, ids.length - job.prefilled);
    const from = job.prefilled - job.reused;
    const chunk = job.embeds.subarray(from * d, (from + n) * d);
    const options = { ropeSeqLen: ids.length };
    const next = job.argmaxOnly
      ? await decoder.forwardArgmax(job.seq, chunk, n, options)
      : await decoder.forward(job.seq, chunk, n, options);
    job.prefilled += n;
    const total = ids.length - job.reused;
    if (total > this.#prefillChunk) job.onEvent({ type: 'prefill', done: job.prefilled - job.reused, total });
    if (job.prefilled < ids.length) return;
    job.embeds = undefined;
    job.features = [];
    if (this.#accept(job, typeof next === 'number' ? { id: next } : await this.#choose(job, next))) return;
    decoder.joinBatch(job.seq);
  }

  async #startGrammar(job: Job, format: ResponseFormat): Promise<void> {
    if (!this.deps.grammar) {
      throw new InternVLError('UNSUPPORTED', 'this engine has no grammar engine for response formats');
    }
    job.matcher = await this.deps.grammar.matcher(format, job.request.endTokenIds);
  }

  async #decodeStep(): Promise<void> {
    const { decoder } = this.deps;
    const bySeq = new Map(this.#jobs.filter((j) => j.next !== undefined).map((j) => [j.seq, j]));
    const members = decoder.batch.map((seq) => bySeq.get(seq)!);
    const ids = members.map((j) => j.next!);
    // When every sequence decodes greedily the graph's argmax is enough; otherwise fetch the logits.
    const argmaxOnly = members.every((j) => j.argmaxOnly);
    let result: Float32Array | number[];
    try {
      result = argmaxOnly ? await decoder.decodeBatchArgmax(ids) : await decoder.decodeBatch(ids);
    } catch (err) {
      for (const job of members) this.#fail(job, err);
      return;
    }
    const vocab = decoder.dims.vocabSize;
    for (const [b, job] of members.entries()) {
      job.cached.push(job.next!);
      if (job.aborted) continue;
      const token =
        result instanceof Float32Array
          ? await this.#choose(job, result.subarray(b * vocab, (b + 1) * vocab))
          : { id: result[b] };
      this.#accept(job, token);
    }
  }

  /**
   * The next token from logits. With a grammar the logits are masked first, and the matcher takes
   * the token; one it refuses (a dead end) is masked out and the draw repeated.
   */
  async #choose(job: Job, logits: Float32Array): Promise<SampledToken | undefined> {
    for (;;) {
      const token = this.#draw(job, logits);
      if (!token || !job.matcher || job.end.has(token.id)) return token;
      try {
        if (await job.matcher.accept(token.id)) return token;
      } catch (err) {
        this.#fail(job, err);
        return undefined;
      }
      logits[token.id] = -Infinity;
      if (!logits.some((v) => v > -Infinity)) {
        this.#fail(
          job,
          new InternVLError(
            'BAD_INPUT',
            'the response format allows no token here that keeps the text valid UTF-8 (XGrammar reads a ' +
              'non-ASCII character inside a regex or EBNF character class as a single byte: write such ' +
              'characters as literal strings, e.g. (a|é) instead of [aé])',
          ),
        );
        return undefined;
      }
    }
  }

  /** Samples the next token from logits; undefined when sampling failed (the job has then failed). */
  #draw(job: Job, logits: Float32Array): SampledToken | undefined {
    try {
      if (job.matcher) applyMask(logits, job.matcher.mask());
      return job.sampler.next(logits, job.history);
    } catch (err) {
      this.#fail(job, err);
      return undefined;
    }
  }

  /**
   * Records the chosen token; true when the job has finished (or failed). With a grammar whose mask
   * now allows only end tokens the text is complete, and the job stops here without another step.
   */
  #accept(job: Job, token: SampledToken | undefined): boolean {
    if (!token) return true;
    const complete =
      job.matcher !== undefined &&
      !job.end.has(token.id) &&
      onlyEndAllowed(job.matcher.mask(), job.end, this.deps.decoder.dims.vocabSize);
    job.tokens.push(token);
    job.history.push(token.id);
    job.onEvent({ type: 'token', token });
    if (job.end.has(token.id) || complete) this.#finish(job, 'stop');
    else if (job.tokens.length >= job.request.maxNewTokens) this.#finish(job, 'length');
    else {
      job.next = token.id;
      return false;
    }
    return true;
  }

  #remove(job: Job, completed: boolean): void {
    job.matcher?.dispose();
    job.matcher = undefined;
    const i = this.#jobs.indexOf(job);
    if (i >= 0) this.#jobs.splice(i, 1);
    // A session keeps its cache for the next turn; a completed prompt goes to the prefix cache.
    const ids = job.request.inputIds;
    const keepPrompt =
      completed && !job.session && this.#prefixes !== undefined && job.prefilled === ids.length;
    if (job.seq?.slot !== undefined) {
      this.deps.decoder.leaveBatch(job.seq, { keepCache: job.session !== undefined || keepPrompt });
    }
    if (job.session) {
      job.session.busy = false;
      job.session.tokens = job.cached.slice(0, job.seq.length);
    } else if (keepPrompt) {
      job.seq.truncate(ids.length);
      const images = job.request.images.map(({ key, numTiles }) => ({ key, numTiles }));
      this.#prefixes?.store(job.seq, ids, images, this.deps.decoder.sequenceBytes(job.seq));
    }
  }

  #finish(job: Job, finishReason: FinishReason): void {
    this.#remove(job, finishReason !== 'abort');
    job.resolve({
      tokens: job.tokens,
      finishReason,
      stats: {
        promptTokens: job.request.inputIds.length,
        reusedTokens: job.reused,
        encodedTiles: job.encodedTiles,
      },
    });
  }

  #fail(job: Job, err: unknown): void {
    this.#remove(job, false);
    if (job.session && job.request.sessionId) this.#sessions.delete(job.request.sessionId);
    job.reject(err);
  }
}
