// HTTP transport of the registry client: one keep-alive undici Pool per origin with bounded connections,
// timeouts, scheme choice (HTTPS unless plain HTTP is asked for or the host is loopback), Basic and bearer-token
// auth on 401 (with credentials from a CredentialProvider, refreshed once after a refusal; tokens renewed
// before they expire), redirect following for blob reads (Authorization only to the registry's own origin),
// bounded retries of idempotent requests (Retry-After on 429/503, backoff with jitter on 5xx/408 and
// connection errors), AbortSignal support,
// counters and events (retries, redirects, registries ignoring Range), and errors that name the host but no
// secrets. A request may carry endpoint settings (hosts.toml): TLS options (own pool per origin and TLS
// configuration) and extra headers, both applied to the request's own origin only. TLS failures (server
// certificate not verified, client certificate refused) are one-line errors saying so, and not retried.
import { isIP } from 'node:net';
import type { Readable } from 'node:stream';
import { createRequire } from 'node:module';
import type { buildConnector as UndiciBuildConnector, Dispatcher, Pool as UndiciPool } from 'undici';
import { basicAuthorization, hasPassword, OAUTH_CLIENT_ID, parseAuthChallenges, RegistryAuthError, TokenCache, type AuthChallenge } from './auth.js';
import type { CredentialProvider, RegistryCredentials } from './credentials.js';
import { RegistryError, redactUrl } from './errors.js';

/** What this module uses of undici: its Pool, its connector, and the request API. */
interface UndiciParts {
  Pool: typeof UndiciPool;
  buildConnector: typeof UndiciBuildConnector;
  request: (this: Dispatcher, options: Dispatcher.RequestOptions) => Promise<Dispatcher.ResponseData>;
}

/** undici's own modules for UndiciParts (undici 7's layout), relative to its package directory. */
const UNDICI_POOL_MODULE = 'undici/lib/dispatcher/pool.js';
const UNDICI_CONNECT_MODULE = 'undici/lib/core/connect.js';
const UNDICI_REQUEST_MODULE = 'undici/lib/api/api-request.js';

/**
 * Loads only the parts of undici used here, from their own modules: the package's entry point also loads every
 * other dispatcher, the mock and cache layers and fetch (about 10 MiB more resident in every process that talks
 * to a registry, the long-lived mount process included). Falls back to the entry point if a later undici moves
 * those modules.
 */
function loadUndici(): UndiciParts {
  const require = createRequire(import.meta.url);
  try {
    const Pool = require(UNDICI_POOL_MODULE) as UndiciParts['Pool'];
    const buildConnector = require(UNDICI_CONNECT_MODULE) as UndiciParts['buildConnector'];
    const request = require(UNDICI_REQUEST_MODULE) as UndiciParts['request'];
    if (typeof Pool === 'function' && typeof buildConnector === 'function' && typeof request === 'function') return { Pool, buildConnector, request };
  } catch {
    // Fall through to the entry point.
  }
  const undici = require('undici') as { Pool: UndiciParts['Pool']; buildConnector: UndiciParts['buildConnector'] };
  return { Pool: undici.Pool, buildConnector: undici.buildConnector, request: undici.Pool.prototype.request as UndiciParts['request'] };
}

const undici = loadUndici();
type Pool = UndiciPool;

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
/**
 * Retries of one idempotent request (GET/HEAD, including its body read for blob reads) after a transient
 * failure. Small on purpose: the lazy reader retries above this within its own deadline.
 */
export const MAX_RETRIES = 2;
/** Backoff before the first retry; multiplied by RETRY_BACKOFF_FACTOR per retry up to RETRY_MAX_DELAY_MS. */
export const RETRY_INITIAL_DELAY_MS = 200;
export const RETRY_MAX_DELAY_MS = 2_000;
export const RETRY_BACKOFF_FACTOR = 2;
/** Random share of each backoff delay ("equal jitter"): the wait is drawn from [delay × (1 − RETRY_JITTER), delay]. */
export const RETRY_JITTER = 0.5;
/** Longest Retry-After (429/503) waited for; a longer one is cut to this. */
export const MAX_RETRY_AFTER_MS = 10_000;

/** Network error codes meaning "nobody answers at that address". */
const UNREACHABLE_CODES: ReadonlySet<string> = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL']);
const TIMEOUT_CODES: ReadonlySet<string> = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);
/** Errors after which an idempotent request is tried once more (a kept-alive socket closed by the server). */
const STALE_SOCKET_CODES: ReadonlySet<string> = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET']);
/** Server certificates that failed verification (Node's names of OpenSSL's X509_V_ERR_* codes, and the name check). */
const CERT_VERIFY_CODES: ReadonlySet<string> = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED',
  'CERT_REJECTED', 'CERT_REVOKED', 'INVALID_CA', 'INVALID_PURPOSE', 'HOSTNAME_MISMATCH', 'ERR_TLS_CERT_ALTNAME_INVALID',
]);
/** TLS alerts of a server that wants a client certificate it did not get, or does not accept the one it got. */
const CLIENT_CERT_ALERT_CODES: ReadonlySet<string> = new Set([
  'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN',
  'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED', 'ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE',
  'ERR_SSL_TLSV1_ALERT_ACCESS_DENIED',
]);

const REDIRECT_STATUSES: ReadonlySet<number> = new Set([301, 302, 303, 307, 308]);
/** Statuses whose Retry-After header is honoured. */
const RETRY_AFTER_STATUSES: ReadonlySet<number> = new Set([429, 503]);
/** 5xx statuses that will not change on a retry. */
const PERMANENT_SERVER_STATUSES: ReadonlySet<number> = new Set([501, 505]);

function isTlsErrorCode(code: string | undefined): code is string {
  return code !== undefined && (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_') || CERT_VERIFY_CODES.has(code));
}

/**
 * A one-line reason for a TLS failure talking to `host` (undefined for other errors): certificate
 * verification, a refused client certificate, or another handshake error (plain HTTP spoken back, …).
 */
function tlsFailureReason(err: unknown, code: string | undefined, host: string): string | undefined {
  if (!isTlsErrorCode(code)) return undefined;
  let cause: unknown = err;
  for (let depth = 0; depth < 4 && cause instanceof Error && (cause as NodeJS.ErrnoException).code !== code; depth++) cause = cause.cause;
  const opensslReason = (cause as { reason?: unknown }).reason;
  const detail = typeof opensslReason === 'string' ? opensslReason : ((cause instanceof Error ? cause.message : String(cause)).split('\n')[0] ?? '');
  if (CERT_VERIFY_CODES.has(code)) return `TLS certificate of ${host} failed verification: ${detail} (${code}); trust its CA with "ca" in hosts.toml, or set skip_verify`;
  if (CLIENT_CERT_ALERT_CODES.has(code)) return `TLS handshake with ${host} refused by the server: ${detail} (${code}); it wants a client certificate it accepts ("client" in hosts.toml)`;
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER') return `TLS handshake with ${host} failed: ${detail} (${code}); does it serve plain HTTP?`;
  return `TLS handshake with ${host} failed: ${detail} (${code})`;
}

/**
 * undici's connector, except that a TLS error on an established connection destroys the socket with that
 * error. A TLS 1.3 server refuses a missing client certificate with an alert after the handshake; undici
 * would then report its own "other side closed" (on the end of the stream) instead of the alert.
 */
function tlsErrorPreservingConnector(options: UndiciBuildConnector.BuildOptions): UndiciBuildConnector.connector {
  const connect = undici.buildConnector(options);
  return (opts, callback) => {
    connect(opts, (...args) => {
      const socket = args[1];
      if (socket) {
        socket.on('error', (err: NodeJS.ErrnoException) => {
          if (isTlsErrorCode(err.code) && !socket.destroyed) socket.destroy(err);
        });
      }
      callback(...args);
    });
  };
}

/** Retry tuning of a RegistryClient (defaults: the MAX_RETRIES, RETRY_* and MAX_RETRY_AFTER_MS constants). */
export interface RetryPolicy {
  maxRetries: number;
  initialDelayMs: number;
  maxDelayMs: number;
  maxRetryAfterMs: number;
  /** Random source in [0, 1) for jitter (tests may pin it). */
  random: () => number;
}

/** Counters of one RegistryClient, for stats. */
export interface RegistryClientStats {
  /** Requests (or body reads) tried again after a transient failure. */
  retries: number;
  /** 3xx answers followed. */
  redirectsFollowed: number;
  /** Blob reads sent straight to a remembered redirect target. */
  redirectTargetHits: number;
  /** Range requests answered with the whole blob (200). */
  rangeIgnored: number;
  /** Requests given up on one endpoint (a hosts.toml mirror) for the next. */
  endpointFallbacks: number;
  /** Requests whose credentials or token were refused and renewed (expired tokens, rotated credentials). */
  authRefreshes: number;
  /** Bytes read from such whole-blob answers before they were cut. */
  rangeIgnoredBytes: number;
  /** Multi-range requests refused (400/416), answered again with single ranges. */
  multiRangeRefused: number;
  /** Requests that found their cached bearer token expired and renewed it first, instead of being refused (concurrent ones share one issuer request). */
  tokenRenewals: number;
}

/** Something worth logging that the client did; URLs are redacted (no credentials, no query). */
export type RegistryClientEvent =
  | { kind: 'retry'; operation: string; url: string; status: number | undefined; reason: string; delayMs: number; retry: number }
  | { kind: 'redirect'; operation: string; from: string; to: string; status: number }
  | { kind: 'redirect-target-dropped'; operation: string; url: string; reason: string }
  | { kind: 'range-ignored'; operation: string; host: string; firstForHost: boolean }
  | { kind: 'multirange-refused'; operation: string; host: string; status: number }
  | { kind: 'token-renewed'; operation: string; host: string }
  | { kind: 'auth-refresh'; operation: string; host: string; status: number; credentialsReread: boolean };

/** Retries left for one logical request; shared by its HTTP exchanges and body reads so the total stays bounded. */
export class RetryBudget {
  used = 0;
  constructor(readonly max: number) {}
  /** Takes one retry; false when none is left. */
  take(): boolean {
    if (this.used >= this.max) return false;
    this.used++;
    return true;
  }
}

/** Network failures (as RegistryErrors) that an idempotent request may be retried after. */
const retryableNetworkErrors = new WeakSet<Error>();

/** True for a RegistryError from a connection failure or a cut body (not a timeout, not an HTTP status). */
export function isRetryableNetworkError(err: unknown): boolean {
  return err instanceof Error && retryableNetworkErrors.has(err);
}

/** True for statuses worth another try: 408, 429 and 5xx other than 501/505. */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status <= 599 && !PERMANENT_SERVER_STATUSES.has(status));
}

/** Milliseconds a Retry-After value (delta-seconds or an HTTP date) asks for; undefined if absent or malformed. */
export function parseRetryAfter(value: string | undefined, now: number = Date.now()): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}

/** Waits `ms`, rejecting with the signal's reason as soon as it aborts. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

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
  /** Overrides of the retry defaults (MAX_RETRIES, RETRY_*, MAX_RETRY_AFTER_MS). */
  retry?: Partial<RetryPolicy>;
  /** Called for retries, redirects and registries that ignore Range (e.g. to log them); must not throw. */
  onEvent?: (event: RegistryClientEvent) => void;
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
  /** Aborts the request (and its body, and any retry wait); the promise then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Retry a GET/HEAD after a transient failure (default true; never for other methods). */
  retry?: boolean;
  /** Shared retry budget (e.g. with the caller's body-read retries); a fresh one per call when absent. */
  retryBudget?: RetryBudget;
  /** Send registry auth and answer 401 challenges (default true); false for a remembered storage URL. */
  auth?: boolean;
  /** Settings of the request's origin (a hosts.toml endpoint); not applied to redirect targets on other origins. */
  endpoint?: EndpointSettings;
}

/** TLS options of one endpoint, as given to the undici connector. */
export interface EndpointTls {
  ca?: string[];
  cert?: string[];
  key?: string[];
  rejectUnauthorized: boolean;
  /** Identifies the configuration: requests with equal origin and id share a connection pool. */
  id: string;
}

/** Per-endpoint settings of a request. */
export interface EndpointSettings {
  tls?: EndpointTls | undefined;
  /** Extra headers (hosts.toml `header`), sent to the endpoint's origin only. */
  headers?: Readonly<Record<string, string>>;
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

/**
 * Reads a body of a known length into one buffer of exactly that size, allocated up front: each piece is copied
 * once as it arrives and dropped (no list of pieces held until a final concatenation), and the result owns its
 * memory, so the lazy reader can move it to a worker thread without copying it. More than `length` bytes is
 * an error (the body is destroyed); fewer gives what came (the caller checks the length).
 */
export async function readBodyExact(body: Readable, length: number, what: string): Promise<Buffer> {
  const out = Buffer.allocUnsafeSlow(length);
  let total = 0;
  for await (const chunk of body) {
    const buffer = chunk as Buffer;
    if (total + buffer.length > length) {
      cutBody(body);
      throw new RangeError(`${what} is larger than ${length} bytes`);
    }
    out.set(buffer, total);
    total += buffer.length;
  }
  return total === length ? out : out.subarray(0, total);
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
  /**
   * Last bearer challenge per host: to get a new token after a 403 (which carries no challenge), and to renew
   * an expired token before a request instead of after the registry refused it.
   */
  private readonly bearerChallenges = new Map<string, AuthChallenge>();
  /** Scopes of the last token obtained per token-cache key (a challenge may have added some), for renewals. */
  private readonly tokenScopes = new Map<string, string[]>();
  readonly timeouts: HttpTimeouts;
  readonly retryPolicy: RetryPolicy;
  private readonly counters: RegistryClientStats = { retries: 0, redirectsFollowed: 0, redirectTargetHits: 0, rangeIgnored: 0, rangeIgnoredBytes: 0, endpointFallbacks: 0, authRefreshes: 0, multiRangeRefused: 0, tokenRenewals: 0 };
  /** Hosts seen answering a Range request with the whole blob. */
  private readonly rangeIgnoringHosts = new Set<string>();
  private readonly multiRangeRefusingHosts = new Set<string>();
  private readonly onEvent: ((event: RegistryClientEvent) => void) | undefined;
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
    this.retryPolicy = {
      maxRetries: options.retry?.maxRetries ?? MAX_RETRIES,
      initialDelayMs: options.retry?.initialDelayMs ?? RETRY_INITIAL_DELAY_MS,
      maxDelayMs: options.retry?.maxDelayMs ?? RETRY_MAX_DELAY_MS,
      maxRetryAfterMs: options.retry?.maxRetryAfterMs ?? MAX_RETRY_AFTER_MS,
      random: options.retry?.random ?? Math.random,
    };
    this.onEvent = options.onEvent;
  }

  /** A snapshot of the client's counters. */
  get stats(): RegistryClientStats {
    return { ...this.counters };
  }

  /** Hosts known to ignore Range (they answer with the whole blob). */
  get rangeIgnoredHosts(): readonly string[] {
    return [...this.rangeIgnoringHosts];
  }

  /** Whether `host` ("name:port") has been seen ignoring Range. */
  ignoresRange(host: string): boolean {
    return this.rangeIgnoringHosts.has(host);
  }

  private emit(event: RegistryClientEvent): void {
    try {
      this.onEvent?.(event);
    } catch {
      // An event sink must not break requests.
    }
  }

  /** A fresh retry budget of retryPolicy.maxRetries. */
  newRetryBudget(): RetryBudget {
    return new RetryBudget(this.retryPolicy.maxRetries);
  }

  /** Records a Range request answered with the whole blob, of which `bytesRead` bytes were read. */
  noteRangeIgnored(url: URL, operation: string, bytesRead: number): void {
    const firstForHost = !this.rangeIgnoringHosts.has(url.host);
    this.rangeIgnoringHosts.add(url.host);
    this.counters.rangeIgnored++;
    this.counters.rangeIgnoredBytes += bytesRead;
    this.emit({ kind: 'range-ignored', operation, host: url.host, firstForHost });
  }

  /** Whether `host` ("name:port") has refused a multi-range request (so single ranges are used from now on). */
  refusesMultiRange(host: string): boolean {
    return this.multiRangeRefusingHosts.has(host);
  }

  /** Records a multi-range request refused with `status`; later requests to that host use single ranges. */
  noteMultiRangeRefused(url: URL, operation: string, status: number): void {
    this.multiRangeRefusingHosts.add(url.host);
    this.counters.multiRangeRefused++;
    this.emit({ kind: 'multirange-refused', operation, host: url.host, status });
  }

  /** Records auth that was sent and refused, and is being renewed (a new token, or re-read credentials). */
  noteAuthRefresh(host: string, operation: string, status: number, credentialsReread: boolean): void {
    this.counters.authRefreshes++;
    this.emit({ kind: 'auth-refresh', operation, host, status, credentialsReread });
  }

  /** Records a request given up on an endpoint (mirror) for the next one. */
  noteEndpointFallback(): void {
    this.counters.endpointFallbacks++;
  }

  /** Records a blob read sent straight to a remembered redirect target. */
  noteRedirectTargetHit(): void {
    this.counters.redirectTargetHits++;
  }

  /** Records that a remembered redirect target was given up (it failed, or its time passed). */
  noteRedirectTargetDropped(url: URL, operation: string, reason: string): void {
    this.emit({ kind: 'redirect-target-dropped', operation, url: redactUrl(url), reason });
  }

  /**
   * Before retrying after a transient failure: takes a retry from `budget` (false when none is left, the
   * caller then fails), records it and waits the backoff, or `retryAfterMs` (capped by maxRetryAfterMs) when
   * given. The wait rejects with the signal's reason when it aborts.
   */
  async pauseBeforeRetry(
    budget: RetryBudget,
    info: { operation: string; url: URL | string; status?: number; reason: string; retryAfterMs?: number },
    signal?: AbortSignal,
  ): Promise<boolean> {
    if (signal?.aborted) throw signal.reason;
    if (!budget.take()) return false;
    const policy = this.retryPolicy;
    let delayMs: number;
    if (info.retryAfterMs !== undefined) {
      delayMs = Math.min(info.retryAfterMs, policy.maxRetryAfterMs);
    } else {
      const base = Math.min(policy.maxDelayMs, policy.initialDelayMs * RETRY_BACKOFF_FACTOR ** (budget.used - 1));
      delayMs = base * (1 - RETRY_JITTER * policy.random());
    }
    this.counters.retries++;
    this.emit({ kind: 'retry', operation: info.operation, url: redactUrl(info.url), status: info.status, reason: info.reason, delayMs, retry: budget.used });
    await pause(delayMs, signal);
    return true;
  }

  /** A RegistryError for a body read that failed (connection cut, body timeout); cut bodies are retryable. */
  bodyError(err: unknown, operation: string, url: URL): RegistryError {
    const wrapped = this.networkError(err, operation, url);
    const code = errorCode(err);
    if (code === undefined || !TIMEOUT_CODES.has(code)) retryableNetworkErrors.add(wrapped);
    return wrapped;
  }

  private pool(origin: string, tls?: EndpointTls): Pool {
    if (this.closed) throw new Error('registry client is closed');
    const key = tls === undefined ? origin : `${origin} ${tls.id}`;
    let pool = this.pools.get(key);
    if (!pool) {
      const connect = {
        timeout: this.timeouts.connectMs,
        rejectUnauthorized: tls?.rejectUnauthorized ?? true,
        ...(tls?.ca !== undefined ? { ca: tls.ca } : {}),
        ...(tls?.cert !== undefined ? { cert: tls.cert } : {}),
        ...(tls?.key !== undefined ? { key: tls.key } : {}),
      };
      pool = new undici.Pool(origin, {
        connections: this.maxConnections,
        keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
        headersTimeout: this.timeouts.headersMs,
        bodyTimeout: this.timeouts.bodyMs,
        connect: tlsErrorPreservingConnector(connect),
      });
      this.pools.set(key, pool);
    }
    return pool;
  }

  private networkError(err: unknown, operation: string, url: URL): RegistryError {
    const code = errorCode(err);
    const tlsReason = tlsFailureReason(err, code, url.host);
    let reason: string;
    if (tlsReason !== undefined) reason = tlsReason;
    else if (code !== undefined && UNREACHABLE_CODES.has(code)) reason = `registry ${url.host} is unreachable (${code})`;
    else if (code !== undefined && TIMEOUT_CODES.has(code)) reason = `registry ${url.host} timed out (${code})`;
    else reason = `network error talking to ${url.host}: ${err instanceof Error ? err.message : String(err)}`;
    const wrapped = new RegistryError({ operation, url, reason }, { cause: err });
    // A timeout already cost its full time: the caller (whose deadline bounds it) decides about another one.
    // A TLS failure (certificate, handshake) is a matter of configuration: another try gives the same.
    if (tlsReason === undefined && (code === undefined || !TIMEOUT_CODES.has(code))) retryableNetworkErrors.add(wrapped);
    return wrapped;
  }

  /** One HTTP exchange, without auth or redirects. */
  private async exchange(
    method: HttpMethod,
    url: URL,
    headers: Record<string, string>,
    body: Buffer | undefined,
    operation: string,
    signal?: AbortSignal,
    tls?: EndpointTls,
  ): Promise<HttpResponse> {
    const idempotent = method === 'GET' || method === 'HEAD';
    for (let attempt = 0; ; attempt++) {
      signal?.throwIfAborted();
      try {
        const res = await undici.request.call(this.pool(url.origin, tls), { method, path: `${url.pathname}${url.search}`, headers, body, ...(signal !== undefined ? { signal } : {}) });
        return { status: res.statusCode, headers: res.headers, body: res.body, url };
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
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
  private async requestToken(realm: URL, operation: string, host: string, creds: RegistryCredentials | undefined, tls?: EndpointTls): Promise<unknown> {
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
      res = await this.exchange('POST', target, { accept: 'application/json', 'content-type': 'application/x-www-form-urlencoded' }, Buffer.from(form.toString(), 'utf8'), tokenOperation, undefined, tls);
    } else {
      const headers: Record<string, string> = { accept: 'application/json' };
      if (hasPassword(creds)) headers['authorization'] = basicAuthorization(creds.username ?? '', creds.password ?? '');
      res = await this.exchange('GET', realm, headers, undefined, tokenOperation, undefined, tls);
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
   * a "needs credentials" error). A cached token that has (nearly) expired is renewed with the host's last
   * bearer challenge before the request is sent. When an answer refuses auth that was sent (401, or 403 with credentials),
   * the credentials are re-read once (rotation) and the request is tried again; a further refusal is a
   * RegistryAuthError when credentials were used, else the answer is returned. Returns any other answer as
   * is (the caller checks the status and consumes or discards the body). A GET/HEAD (unless `retry` is false)
   * is tried again within its retry budget after a connection error (not a timeout) or a 408/429/5xx answer
   * (501/505 excepted), waiting Retry-After on 429/503 (capped) or a jittered backoff; the answer of the last
   * try is returned. An aborted `signal` rejects with its reason, also during a wait.
   */
  async send(req: HttpRequest): Promise<HttpResponse> {
    const retrying = req.retry !== false && (req.method === 'GET' || req.method === 'HEAD');
    const budget = req.retryBudget ?? this.newRetryBudget();
    for (;;) {
      let res: HttpResponse;
      try {
        res = await this.sendOnce(req);
      } catch (err) {
        if (req.signal?.aborted) throw req.signal.reason;
        if (!retrying || !isRetryableNetworkError(err)) throw err;
        if (!(await this.pauseBeforeRetry(budget, { operation: req.operation, url: req.url, reason: (err as Error).message }, req.signal))) throw err;
        continue;
      }
      if (!retrying || !isRetryableStatus(res.status) || budget.used >= budget.max) return res;
      const retryAfterMs = RETRY_AFTER_STATUSES.has(res.status) ? parseRetryAfter(getHeader(res, 'retry-after')) : undefined;
      await discardBody(res);
      const info = { operation: req.operation, url: res.url, status: res.status, reason: `HTTP ${res.status}`, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) };
      await this.pauseBeforeRetry(budget, info, req.signal);
    }
  }

  /**
   * A new token for `tokenKey` from `challenge`'s realm, with the host's current credentials (returned
   * too). Concurrent calls for the same key share one issuer request.
   */
  private async obtainToken(
    tokenKey: string,
    challenge: AuthChallenge,
    scopes: readonly string[],
    req: HttpRequest,
    url: URL,
  ): Promise<{ token: string; creds: RegistryCredentials | undefined }> {
    const host = req.url.host;
    const creds = await this.lookupCredentials(host, req.operation, url);
    try {
      const token = await this.tokens.obtain(tokenKey, challenge, scopes, (realm) =>
        this.requestToken(realm, req.operation, host, creds, realm.origin === req.url.origin ? req.endpoint?.tls : undefined),
      );
      this.tokenScopes.set(tokenKey, [...scopes]);
      return { token, creds };
    } catch (err) {
      if (err instanceof RegistryError) throw err;
      throw new RegistryError({ operation: req.operation, url, status: 401, reason: (err as Error).message }, { cause: err });
    }
  }

  /** One round of send(): auth and redirects, no retries. */
  private async sendOnce(req: HttpRequest): Promise<HttpResponse> {
    const origin = req.url.origin;
    const host = req.url.host;
    let url = req.url;
    let redirects = 0;
    let authRounds = 0;
    let refreshed = false;
    let usedCreds: RegistryCredentials | undefined;
    let tokenKey = req.scopes ? TokenCache.key(host, req.scopes) : undefined;
    let scopes: string[] = [...(req.scopes ?? [])];
    let renewedAhead = false;
    for (;;) {
      const endpointHeaders = url.origin === origin ? req.endpoint?.headers : undefined;
      const headers: Record<string, string> = { ...endpointHeaders, ...req.headers };
      const sameOrigin = req.auth !== false && url.origin === origin;
      let sentAuth = false;
      let sentToken: string | undefined;
      if (sameOrigin) {
        let token = tokenKey !== undefined ? this.tokens.get(tokenKey) : undefined;
        const basic = this.basicAuth.get(host);
        const known = this.bearerChallenges.get(host);
        // The cached token expired (or is about to): renew it now with the host's challenge, rather than
        // send the request without one and be refused first (concurrent requests share one renewal).
        if (token === undefined && tokenKey !== undefined && basic === undefined && known !== undefined && authRounds === 0 && !renewedAhead) {
          renewedAhead = true;
          try {
            const renewal = await this.obtainToken(tokenKey, known, this.tokenScopes.get(tokenKey) ?? scopes, req, url);
            token = renewal.token;
            this.counters.tokenRenewals++;
            this.emit({ kind: 'token-renewed', operation: req.operation, host });
            if (renewal.creds !== undefined) usedCreds = renewal.creds;
          } catch {
            // Renewal from the remembered challenge failed: send without a token; the registry's own
            // challenge (which may have changed) then drives the usual flow and its errors.
          }
        }
        if (token !== undefined) {
          headers['authorization'] = `Bearer ${token}`;
          sentAuth = true;
          sentToken = token;
        } else if (basic !== undefined) {
          headers['authorization'] = basic.header;
          usedCreds = basic.creds;
          sentAuth = true;
        }
      }
      const res = await this.exchange(req.method, url, headers, req.body, req.operation, req.signal, url.origin === origin ? req.endpoint?.tls : undefined);

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
        if (sentAuth) this.noteAuthRefresh(host, req.operation, res.status, canRefresh);
        const challenges = parseAuthChallenges(res.headers['www-authenticate']);
        const bearer = challenges.find((c) => c.scheme === 'bearer') ?? (res.status === 403 ? this.bearerChallenges.get(host) : undefined);
        if (bearer) {
          await discardBody(res);
          this.bearerChallenges.set(host, bearer);
          const challengeScopes = bearer.params['scope'] ? bearer.params['scope'].split(' ').filter((s) => s !== '') : [];
          scopes = [...new Set([...scopes, ...challengeScopes])];
          tokenKey ??= TokenCache.key(host, scopes);
          // A concurrent request may already have replaced the refused token: use that one, do not drop it.
          const current = this.tokens.get(tokenKey);
          if (current !== undefined && current !== sentToken) continue;
          this.tokens.invalidate(tokenKey);
          const renewal = await this.obtainToken(tokenKey, bearer, scopes, req, url);
          if (renewal.creds !== undefined) usedCreds = renewal.creds;
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
        const from = url;
        url = new URL(location, url);
        if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new RegistryError({ operation: req.operation, url: req.url, reason: 'redirect to a non-HTTP URL' });
        // Headers (Range included) are rebuilt from req.headers each round; Authorization only for `origin`.
        this.counters.redirectsFollowed++;
        this.emit({ kind: 'redirect', operation: req.operation, from: redactUrl(from), to: redactUrl(url), status: res.status });
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
