// HTTP transport of the registry client: one keep-alive undici Pool per origin with bounded connections,
// timeouts, scheme choice (HTTPS unless plain HTTP is asked for or the host is loopback), Basic and bearer-token
// auth on 401 (with credentials from a CredentialProvider, refreshed once after a refusal), redirect following
// for blob reads, and errors that name the host but no secrets.
import { isIP } from 'node:net';
import type { Readable } from 'node:stream';
import { Pool } from 'undici';
import { basicAuthorization, hasPassword, OAUTH_CLIENT_ID, parseAuthChallenges, RegistryAuthError, TokenCache, type AuthChallenge } from './auth.js';
import type { CredentialProvider, RegistryCredentials } from './credentials.js';
import { RegistryError } from './errors.js';

/** Concurrent connections per registry origin. */
export const MAX_CONNECTIONS_PER_HOST = 8;
/** Time to establish a TCP (and TLS) connection. */
export const CONNECT_TIMEOUT_MS = 10_000;
/** Time from sending a request to receiving the answer's headers. */
export const HEADERS_TIMEOUT_MS = 30_000;
/** Longest pause between two pieces of an answer body. */
export const BODY_TIMEOUT_MS = 60_000;
/** How long an idle keep-alive connection stays open. */
export const KEEP_ALIVE_TIMEOUT_MS = 10_000;
/** Redirects followed for one request (blob storage usually redirects once). */
export const MAX_REDIRECTS = 5;
/** Largest error body read to find the registry's error code and message. */
export const MAX_ERROR_BODY_BYTES = 64 * 1024;
/** How long close() waits for requests in flight before cutting connections. */
export const CLOSE_GRACE_MS = 1_000;
/** Largest token-issuer answer read. */
export const MAX_TOKEN_BODY_BYTES = 1024 * 1024;

/** Network error codes meaning "nobody answers at that address". */
const UNREACHABLE_CODES: ReadonlySet<string> = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL']);
const TIMEOUT_CODES: ReadonlySet<string> = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);
/** Errors after which an idempotent request is tried once more (a kept-alive socket closed by the server). */
const STALE_SOCKET_CODES: ReadonlySet<string> = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET']);
const REDIRECT_STATUSES: ReadonlySet<number> = new Set([301, 302, 303, 307, 308]);

export interface HttpTimeouts {
  connectMs: number;
  headersMs: number;
  bodyMs: number;
}

export interface RegistryClientOptions {
  /** Concurrent connections per origin; default MAX_CONNECTIONS_PER_HOST. */
  maxConnectionsPerHost?: number;
  /** Overrides of CONNECT_TIMEOUT_MS, HEADERS_TIMEOUT_MS, BODY_TIMEOUT_MS. */
  timeouts?: Partial<HttpTimeouts>;
  /** Clock for token expiry (tests). */
  now?: () => number;
  /** Registry credentials (e.g. a DockerCredentialStore); without it only anonymous access is tried. */
  credentials?: CredentialProvider;
}

/** Auth attempts (challenge answered, token fetched) for one request: the first, and one after a refresh. */
export const MAX_AUTH_ROUNDS = 2;

export type HttpMethod = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export interface HttpRequest {
  /** What the request is for, used in errors: "fetch blob", "resolve manifest", … */
  operation: string;
  method: HttpMethod;
  url: URL;
  headers?: Record<string, string>;
  body?: Buffer;
  /** Token scopes this request needs, e.g. ["repository:a/b:pull"]; enables the bearer flow. */
  scopes?: readonly string[];
  /** Follow 3xx answers (GET/HEAD of blobs, which registries may serve from other storage). */
  followRedirects?: boolean;
}

export interface HttpResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable & { dump(opts?: { limit: number }): Promise<void> };
  /** The URL that answered (after redirects). */
  url: URL;
}

/** True for localhost, 127.0.0.0/8 and ::1 (with or without a port or brackets). */
export function isLoopbackHost(host: string): boolean {
  let name = host;
  if (name.startsWith('[')) name = name.slice(1, name.indexOf(']') >= 0 ? name.indexOf(']') : undefined);
  else if (name.includes(':') && isIP(name) !== 6) name = name.slice(0, name.lastIndexOf(':'));
  name = name.toLowerCase();
  if (name === 'localhost' || name.endsWith('.localhost')) return true;
  if (isIP(name) === 4) return name.startsWith('127.');
  if (isIP(name) === 6) return name === '::1' || name === '0:0:0:0:0:0:0:1';
  return false;
}

/** "https" unless plain HTTP is requested or the host is a loopback address. */
export function registryScheme(host: string, plainHttp = false): 'http' | 'https' {
  return plainHttp || isLoopbackHost(host) ? 'http' : 'https';
}

function headerValue(headers: HttpResponse['headers'], name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

export function getHeader(res: HttpResponse, name: string): string | undefined {
  return headerValue(res.headers, name.toLowerCase());
}

function errorCode(err: unknown): string | undefined {
  for (let current: unknown = err, depth = 0; current && depth < 4; depth++) {
    const candidate = current as { code?: unknown; errors?: unknown[]; cause?: unknown };
    if (typeof candidate.code === 'string') return candidate.code;
    if (Array.isArray(candidate.errors) && candidate.errors.length > 0) current = candidate.errors[0];
    else current = candidate.cause;
  }
  return undefined;
}

/** Reads a body up to `max` bytes; more than that is an error (the body is destroyed). */
export async function readBodyCapped(body: Readable, max: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of body) {
    const buffer = chunk as Buffer;
    total += buffer.length;
    if (total > max) {
      cutBody(body);
      throw new RangeError(`${what} is larger than ${max} bytes`);
    }
    chunks.push(buffer);
  }
  return Buffer.concat(chunks, total);
}

/** Drops an unread answer body cheaply: small ones are drained (keeping the connection), others cut. */
export async function discardBody(res: HttpResponse): Promise<void> {
  await res.body.dump({ limit: MAX_ERROR_BODY_BYTES }).catch(() => undefined);
}

/** Destroys a body stream, swallowing the abort error undici then emits; its connection is closed. */
export function cutBody(body: Readable): void {
  body.on('error', () => undefined);
  body.destroy();
}

/** Cuts an answer body without reading it (e.g. a 416 whose Content-Length is wrong); the socket closes. */
export function abandonBody(res: HttpResponse): void {
  cutBody(res.body);
}

/**
 * Builds a RegistryError from an unexpected answer, reading the JSON error body
 * (`{"errors":[{"code","message"}]}`) except for HEAD and 416 answers, whose bodies are not read.
 */
export async function responseError(res: HttpResponse, operation: string, method: HttpMethod, reason?: string): Promise<RegistryError> {
  let code: string | undefined;
  let registryMessage: string | undefined;
  if (method === 'HEAD' || res.status === 416) {
    abandonBody(res);
  } else {
    try {
      const bytes = await readBodyCapped(res.body, MAX_ERROR_BODY_BYTES, 'error body');
      const doc = JSON.parse(bytes.toString('utf8')) as { errors?: Array<{ code?: unknown; message?: unknown }> };
      const first = Array.isArray(doc.errors) ? doc.errors[0] : undefined;
      if (first && typeof first.code === 'string') code = first.code;
      if (first && typeof first.message === 'string') registryMessage = first.message;
    } catch {
      cutBody(res.body);
    }
  }
  const details: ConstructorParameters<typeof RegistryError>[0] = { operation, url: res.url, status: res.status };
  if (code !== undefined) details.code = code;
  if (registryMessage !== undefined) details.registryMessage = registryMessage;
  if (reason !== undefined) details.reason = reason;
  return new RegistryError(details);
}

/** Connections, timeouts and token cache shared by the registry stores that use it. */
export class RegistryClient {
  private readonly pools = new Map<string, Pool>();
  private readonly tokens: TokenCache;
  private readonly maxConnections: number;
  private readonly credentials: CredentialProvider | undefined;
  /** Basic Authorization per host that answered a Basic challenge, sent up front afterwards. */
  private readonly basicAuth = new Map<string, { header: string; creds: RegistryCredentials }>();
  /** Last bearer challenge per host, to get a new token after a 403 (which carries no challenge). */
  private readonly bearerChallenges = new Map<string, AuthChallenge>();
  readonly timeouts: HttpTimeouts;
  private closed = false;

  constructor(options: RegistryClientOptions = {}) {
    this.maxConnections = options.maxConnectionsPerHost ?? MAX_CONNECTIONS_PER_HOST;
    this.timeouts = {
      connectMs: options.timeouts?.connectMs ?? CONNECT_TIMEOUT_MS,
      headersMs: options.timeouts?.headersMs ?? HEADERS_TIMEOUT_MS,
      bodyMs: options.timeouts?.bodyMs ?? BODY_TIMEOUT_MS,
    };
    this.tokens = new TokenCache(options.now);
    this.credentials = options.credentials;
  }

  private pool(origin: string): Pool {
    if (this.closed) throw new Error('registry client is closed');
    let pool = this.pools.get(origin);
    if (!pool) {
      pool = new Pool(origin, {
        connections: this.maxConnections,
        keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
        headersTimeout: this.timeouts.headersMs,
        bodyTimeout: this.timeouts.bodyMs,
        connect: { timeout: this.timeouts.connectMs, rejectUnauthorized: true },
      });
      this.pools.set(origin, pool);
    }
    return pool;
  }

  private networkError(err: unknown, operation: string, url: URL): RegistryError {
    const code = errorCode(err);
    let reason: string;
    if (code !== undefined && UNREACHABLE_CODES.has(code)) reason = `registry ${url.host} is unreachable (${code})`;
    else if (code !== undefined && TIMEOUT_CODES.has(code)) reason = `registry ${url.host} timed out (${code})`;
    else reason = `network error talking to ${url.host}: ${err instanceof Error ? err.message : String(err)}`;
    return new RegistryError({ operation, url, reason }, { cause: err });
  }

  /** One HTTP exchange, without auth or redirects. */
  private async exchange(method: HttpMethod, url: URL, headers: Record<string, string>, body: Buffer | undefined, operation: string): Promise<HttpResponse> {
    const idempotent = method === 'GET' || method === 'HEAD';
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await this.pool(url.origin).request({ method, path: `${url.pathname}${url.search}`, headers, body });
        return { status: res.statusCode, headers: res.headers, body: res.body, url };
      } catch (err) {
        const code = errorCode(err);
        if (idempotent && attempt === 0 && code !== undefined && STALE_SOCKET_CODES.has(code)) continue;
        throw this.networkError(err, operation, url);
      }
    }
  }

  /** Credentials for `host`, as a RegistryError (no secrets) when the provider fails. */
  private async lookupCredentials(host: string, operation: string, url: URL): Promise<RegistryCredentials | undefined> {
    if (!this.credentials) return undefined;
    try {
      return await this.credentials.get(host);
    } catch (err) {
      throw new RegistryError({ operation, url, reason: `no credentials for ${host}: ${(err as Error).message}` }, { cause: err });
    }
  }

  /**
   * Asks the token issuer for a token: an OAuth2 POST (grant_type=refresh_token) with an identity token,
   * a GET with Basic auth with username/password, an anonymous GET otherwise. A refusal of credentials
   * is a RegistryAuthError.
   */
  private async requestToken(realm: URL, operation: string, host: string, creds: RegistryCredentials | undefined): Promise<unknown> {
    const tokenOperation = `${operation} (token)`;
    let res: HttpResponse;
    if (creds?.identityToken !== undefined) {
      const form = new URLSearchParams();
      form.set('grant_type', 'refresh_token');
      form.set('refresh_token', creds.identityToken);
      form.set('client_id', OAUTH_CLIENT_ID);
      const service = realm.searchParams.get('service');
      if (service) form.set('service', service);
      const scopes = realm.searchParams.getAll('scope');
      if (scopes.length > 0) form.set('scope', scopes.join(' '));
      const target = new URL(realm.href);
      target.search = '';
      res = await this.exchange('POST', target, { accept: 'application/json', 'content-type': 'application/x-www-form-urlencoded' }, Buffer.from(form.toString(), 'utf8'), tokenOperation);
    } else {
      const headers: Record<string, string> = { accept: 'application/json' };
      if (hasPassword(creds)) headers['authorization'] = basicAuthorization(creds.username ?? '', creds.password ?? '');
      res = await this.exchange('GET', realm, headers, undefined, tokenOperation);
    }
    if (creds !== undefined && (res.status === 401 || res.status === 403)) {
      await discardBody(res);
      throw new RegistryAuthError({ operation: tokenOperation, url: res.url, status: res.status, host, source: creds.source });
    }
    if (res.status !== 200) {
      throw await responseError(res, tokenOperation, 'GET', creds === undefined ? 'token issuer refused an anonymous token' : 'token issuer refused the request');
    }
    const bytes = await readBodyCapped(res.body, MAX_TOKEN_BODY_BYTES, 'token answer');
    try {
      return JSON.parse(bytes.toString('utf8')) as unknown;
    } catch {
      throw new RegistryError({ operation: tokenOperation, url: realm, status: res.status, reason: 'token answer is not JSON' });
    }
  }

  /**
   * Sends a request. On 401 it answers the challenge and retries: Bearer → a token for the request's scopes
   * (plus the challenge's), anonymous or with the host's credentials; Basic → the host's credentials (none:
   * a "needs credentials" error). When an answer refuses auth that was sent (401, or 403 with credentials),
   * the credentials are re-read once (rotation) and the request is tried again; a further refusal is a
   * RegistryAuthError when credentials were used, else the answer is returned. Returns any other answer as
   * is (the caller checks the status and consumes or discards the body).
   */
  async send(req: HttpRequest): Promise<HttpResponse> {
    const origin = req.url.origin;
    const host = req.url.host;
    let url = req.url;
    let redirects = 0;
    let authRounds = 0;
    let refreshed = false;
    let usedCreds: RegistryCredentials | undefined;
    let tokenKey = req.scopes ? TokenCache.key(host, req.scopes) : undefined;
    let scopes: string[] = [...(req.scopes ?? [])];
    for (;;) {
      const headers: Record<string, string> = { ...req.headers };
      const sameOrigin = url.origin === origin;
      let sentAuth = false;
      if (sameOrigin) {
        const token = tokenKey !== undefined ? this.tokens.get(tokenKey) : undefined;
        const basic = this.basicAuth.get(host);
        if (token !== undefined) {
          headers['authorization'] = `Bearer ${token}`;
          sentAuth = true;
        } else if (basic !== undefined) {
          headers['authorization'] = basic.header;
          usedCreds = basic.creds;
          sentAuth = true;
        }
      }
      const res = await this.exchange(req.method, url, headers, req.body, req.operation);

      // A 403 to auth we sent may come from revoked or rotated credentials: worth one refresh too.
      const refused = res.status === 401 || (res.status === 403 && sentAuth && (usedCreds !== undefined || this.credentials !== undefined));
      if (refused && sameOrigin) {
        const canRefresh = sentAuth && !refreshed && this.credentials !== undefined;
        if (authRounds >= MAX_AUTH_ROUNDS || (sentAuth && !canRefresh && authRounds > 0)) {
          if (usedCreds === undefined) return res;
          await discardBody(res);
          throw new RegistryAuthError({ operation: req.operation, url, status: res.status, host, source: usedCreds.source });
        }
        if (sentAuth && !canRefresh && authRounds === 0 && res.status === 403) return res;
        authRounds++;
        if (canRefresh) {
          refreshed = true;
          this.credentials?.refresh();
          this.basicAuth.delete(host);
        }
        const challenges = parseAuthChallenges(res.headers['www-authenticate']);
        const bearer = challenges.find((c) => c.scheme === 'bearer') ?? (res.status === 403 ? this.bearerChallenges.get(host) : undefined);
        if (bearer) {
          await discardBody(res);
          this.bearerChallenges.set(host, bearer);
          const challengeScopes = bearer.params['scope'] ? bearer.params['scope'].split(' ').filter((s) => s !== '') : [];
          scopes = [...new Set([...scopes, ...challengeScopes])];
          tokenKey ??= TokenCache.key(host, scopes);
          this.tokens.invalidate(tokenKey);
          const creds = await this.lookupCredentials(host, req.operation, url);
          if (creds !== undefined) usedCreds = creds;
          try {
            await this.tokens.obtain(tokenKey, bearer, scopes, (realm) => this.requestToken(realm, req.operation, host, creds));
          } catch (err) {
            if (err instanceof RegistryError) throw err;
            throw new RegistryError({ operation: req.operation, url, status: 401, reason: (err as Error).message }, { cause: err });
          }
          continue;
        }
        if (challenges.some((c) => c.scheme === 'basic') || (res.status === 403 && usedCreds !== undefined)) {
          await discardBody(res);
          const creds = await this.lookupCredentials(host, req.operation, url);
          if (!hasPassword(creds)) {
            if (usedCreds !== undefined) throw new RegistryAuthError({ operation: req.operation, url, status: res.status, host, source: usedCreds.source });
            throw new RegistryError({
              operation: req.operation,
              url,
              status: 401,
              reason: `registry ${host} needs credentials (Basic authentication); none are configured`,
            });
          }
          usedCreds = creds;
          this.basicAuth.set(host, { header: basicAuthorization(creds.username ?? '', creds.password ?? ''), creds });
          continue;
        }
        if (usedCreds !== undefined) {
          await discardBody(res);
          throw new RegistryAuthError({ operation: req.operation, url, status: res.status, host, source: usedCreds.source });
        }
        return res;
      }

      if (REDIRECT_STATUSES.has(res.status) && req.followRedirects) {
        const location = getHeader(res, 'location');
        await discardBody(res);
        if (!location) throw new RegistryError({ operation: req.operation, url, status: res.status, reason: 'redirect without a Location' });
        if (++redirects > MAX_REDIRECTS) throw new RegistryError({ operation: req.operation, url, status: res.status, reason: `more than ${MAX_REDIRECTS} redirects` });
        url = new URL(location, url);
        if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new RegistryError({ operation: req.operation, url: req.url, reason: 'redirect to a non-HTTP URL' });
        continue;
      }
      return res;
    }
  }

  /** Closes every connection; the client cannot be used afterwards. */
  async close(): Promise<void> {
    this.closed = true;
    const pools = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(
      pools.map(async (pool) => {
        let timer: NodeJS.Timeout | undefined;
        const graceful = pool.close().then(
          () => true,
          () => false,
        );
        const timedOut = new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(false), CLOSE_GRACE_MS);
        });
        const closedCleanly = await Promise.race([graceful, timedOut]);
        clearTimeout(timer);
        if (!closedCleanly) await pool.destroy().catch(() => undefined);
      }),
    );
  }
}
