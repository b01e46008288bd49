/** Request targets → handlers: the path of a target, and the 404 / 405 of a path or method not served. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { HttpError } from './errors.js';

export type Handler = (
  req: IncomingMessage,
  res: ServerResponse,
  signal: AbortSignal,
  started: number,
) => Promise<void>;

/** Handlers by path, then by method. */
export type RouteTable = Record<string, Record<string, Handler>>;

/** The path of a request target without trailing slashes; a target that is no URL path is '/invalid'. */
export function requestPath(target: string | undefined): string {
  let pathname: string;
  try {
    pathname = new URL(target ?? '/', 'http://localhost').pathname;
  } catch {
    return '/invalid';
  }
  return pathname.replace(/\/+$/, '') || '/';
}

/** The `{id}` of `/v1/models/{id}` (percent-decoded), or undefined for any other path. */
export function modelIdOfPath(pathname: string): string | undefined {
  if (!pathname.startsWith('/v1/models/')) return undefined;
  const part = pathname.slice('/v1/models/'.length);
  try {
    return decodeURIComponent(part);
  } catch {
    throw new HttpError(400, `the path part '${part.slice(0, 100)}' is not valid percent-encoding`, {
      openaiCode: 'invalid_url',
    });
  }
}

/** The handler of `method` on `pathname`; a 405 handler naming the allowed methods; undefined: no such path. */
export function findRoute(routes: RouteTable, method: string, pathname: string): Handler | undefined {
  const handlers = routes[pathname];
  if (!handlers) return undefined;
  const handler = handlers[method];
  if (handler) return handler;
  return async () => {
    throw new HttpError(
      405,
      `${method} is not allowed on ${pathname}; use ${Object.keys(handlers).join(', ')}`,
      { openaiCode: 'method_not_allowed' },
    );
  };
}
