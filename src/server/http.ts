/** The HTTP plumbing of the server: JSON and SSE replies, and a size- and time-bounded body reader. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { HttpError } from './errors.js';

export const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  connection: 'keep-alive',
  'x-accel-buffering': 'no',
};

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

export function sseData(res: ServerResponse, payload: unknown): void {
  res.write(`data: ${typeof payload === 'string' ? payload : JSON.stringify(payload)}\n\n`);
}

export function readBody(req: IncomingMessage, limit: number, timeoutMs: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (declared > limit) {
    // The body is read and dropped (up to the server's request timeout): closing on a client that is
    // still sending makes its kernel see a reset, and the client would lose the 413.
    req.resume();
    return Promise.reject(
      new HttpError(413, `the request body is ${declared} bytes, above the limit of ${limit}`, {
        openaiCode: 'request_too_large',
      }),
    );
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    const finish = (err?: unknown) => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      if (err) {
        // Discard the rest without buffering it; the connection closes after the reply.
        req.resume();
        reject(err);
      } else resolve(Buffer.concat(chunks));
    };
    const timer = setTimeout(
      () =>
        finish(
          new HttpError(408, `the request body did not arrive within ${timeoutMs} ms`, {
            openaiCode: 'request_timeout',
          }),
        ),
      timeoutMs,
    );
    const onData = (chunk: Buffer) => {
      total += chunk.length;
      if (total > limit) {
        finish(
          new HttpError(413, `the request body is larger than the limit of ${limit} bytes`, {
            openaiCode: 'request_too_large',
          }),
        );
      } else chunks.push(chunk);
    };
    const onEnd = () => finish();
    const onError = (err: Error) => finish(err);
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
  });
}

export function parseJson(body: Buffer): unknown {
  if (body.length === 0) throw new HttpError(400, 'the request body is empty; expected a JSON object');
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, `the request body is not valid JSON: ${(err as Error).message}`, {
      openaiCode: 'invalid_json',
    });
  }
}
