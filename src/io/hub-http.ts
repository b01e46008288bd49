/**
 * The hub's HTTP layer: one request with an idle timeout (the token only to the hub's own origin),
 * redirects followed by hand, retries with backoff after a dropped connection or a 5xx/429 answer,
 * and the hub's error answers (gated, missing repository or revision) as InternVLErrors.
 */
import { InternVLError } from '../errors.js';
import { describe, type HubSettings } from './hub-snapshot.js';

export const MAX_REDIRECTS = 10;

export function isRedirect(status: number): boolean {
  return status === 301 || status === 302 || status === 303 || status === 307 || status === 308;
}

/** Failures worth another attempt: a dropped or refused connection, a timeout, a 5xx or 429 answer. */
export class RetryableError extends Error {}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class HubHttp {
  readonly #s: HubSettings;
  readonly #authOrigin: string;

  constructor(settings: HubSettings) {
    this.#s = settings;
    this.#authOrigin = new URL(settings.endpoint).origin;
  }

  /** The error to report once retries are over: ABORTED, DOWNLOAD naming the attempts, or `err` itself. */
  finalError(err: unknown, url: string): unknown {
    if (this.#s.signal?.aborted)
      return new InternVLError('ABORTED', `download of ${url} was aborted`, { cause: err });
    if (err instanceof RetryableError) {
      return new InternVLError(
        'DOWNLOAD',
        `download failed: ${err.message} (gave up after ${this.#s.maxRetries + 1} attempts)`,
        { cause: err },
      );
    }
    return err;
  }

  /** Runs `attempt` again after retryable failures; a 5xx/429 answer counts as one. */
  async withRetries<T>(url: string, attempt: () => Promise<T>): Promise<T> {
    for (let i = 0; ; i++) {
      try {
        return await attempt();
      } catch (err) {
        if (!(err instanceof RetryableError) || i >= this.#s.maxRetries) throw this.finalError(err, url);
        await sleep(Math.min(200 * 2 ** i, 4000));
      }
    }
  }

  /** One fetch with a timeout until the answer's headers; the Authorization header only goes to the hub. */
  async fetchOnce(url: string, method: string, headers: Record<string, string>): Promise<Response> {
    const { response, done } = await this.start(url, method, headers);
    done();
    if (response.status === 429 || response.status >= 500) {
      await response.body?.cancel();
      throw new RetryableError(`${url}: server answered ${response.status}`);
    }
    return response;
  }

  /** Starts one request (no redirects followed); the caller must call `done`, and `resetIdle` as data comes. */
  async start(url: string, method: string, headers: Record<string, string>) {
    const s = this.#s;
    const controller = new AbortController();
    const onAbort = () => controller.abort(s.signal?.reason);
    s.signal?.addEventListener('abort', onAbort, { once: true });
    let timer: NodeJS.Timeout | undefined;
    const resetIdle = () => {
      clearTimeout(timer);
      timer = setTimeout(() => controller.abort(new Error(`no data for ${s.timeoutMs} ms`)), s.timeoutMs);
    };
    const done = () => {
      clearTimeout(timer);
      s.signal?.removeEventListener('abort', onAbort);
    };
    resetIdle();
    // identity encoding keeps Content-Length equal to the file size (as huggingface_hub asks).
    const sent: Record<string, string> = {
      ...headers,
      'user-agent': 'internvl-ts',
      'accept-encoding': 'identity',
    };
    if (s.token && new URL(url).origin === this.#authOrigin) sent.authorization = `Bearer ${s.token}`;
    try {
      if (s.signal?.aborted) throw s.signal.reason;
      const response = await fetch(url, {
        method,
        headers: sent,
        redirect: 'manual',
        signal: controller.signal,
      });
      return { response, controller, resetIdle, done };
    } catch (err) {
      done();
      if (s.signal?.aborted)
        throw new InternVLError('ABORTED', `request to ${url} was aborted`, { cause: err });
      const reason = (err as { cause?: { message?: string } }).cause?.message ?? (err as Error).message;
      throw new RetryableError(`${url}: ${reason}`, { cause: err });
    }
  }

  /** A request following redirects; the caller reads the body and must call `done`. */
  async request(url: string, method: string, headers: Record<string, string>) {
    let current = url;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const started = await this.start(current, method, headers);
      const { response } = started;
      if (isRedirect(response.status)) {
        started.done();
        await response.body?.cancel();
        const location = response.headers.get('location');
        if (!location) throw new InternVLError('DOWNLOAD', `${current}: redirect without a Location header`);
        current = new URL(location, current).href;
        continue;
      }
      if (response.status === 429 || response.status >= 500) {
        started.done();
        await response.body?.cancel();
        throw new RetryableError(`${current}: server answered ${response.status}`);
      }
      return started;
    }
    throw new InternVLError('DOWNLOAD', `${url}: more than ${MAX_REDIRECTS} redirects`);
  }

  /** The InternVLError of a hub answer that is not OK (gated, missing repository, revision or file). */
  async httpError(res: Response, url: string, file: string | undefined): Promise<InternVLError> {
    const s = this.#s;
    const code = res.headers.get('x-error-code');
    const text = await res.text().catch(() => '');
    const detail = (res.headers.get('x-error-message') ?? text.slice(0, 200)).trim();
    const what = file ? `${file} of ${describe(s)}` : describe(s);
    const suffix = detail ? ` (${detail})` : '';
    if (code === 'GatedRepo' || (res.status === 401 && code !== 'RepoNotFound') || res.status === 403) {
      return new InternVLError(
        'UNAUTHORIZED',
        `${res.status} for ${what} at ${url}: access denied; set HF_TOKEN (or pass a token) with access to ${s.repoId}${suffix}`,
      );
    }
    if (code === 'RevisionNotFound') {
      return new InternVLError(
        'NOT_FOUND',
        `revision "${s.revision}" of model ${s.repoId} was not found${suffix}`,
      );
    }
    if (code === 'RepoNotFound' || (res.status === 404 && !file)) {
      return new InternVLError(
        'NOT_FOUND',
        `model ${s.repoId} was not found on ${s.endpoint}; check the id (if it is private or gated, set HF_TOKEN)${suffix}`,
      );
    }
    if (res.status === 404) return new InternVLError('NOT_FOUND', `${what} was not found at ${url}${suffix}`);
    return new InternVLError('DOWNLOAD', `${url}: server answered ${res.status}${suffix}`);
  }
}
