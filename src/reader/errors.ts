// Typed errors of the lazy read path (src/reader) and the rule that sorts fetch failures into transient
// (retried with backoff until the read deadline) and permanent (fail at once). Integrity and format errors
// of frames are not defined here: they are the chunktable's IntegrityError and SeekableFormatError, passed
// through unchanged (with the layer digest, chunk index and blob range in their message).
import type { ByteRange } from '../chunktable/index.js';

/** Where a failed fetch was going: which layer, which chunks, which blob bytes. */
export interface FetchSite {
  layerDigest: string;
  /** First and last chunk index covered by the request. */
  firstIndex: number;
  lastIndex: number;
  /** Blob range `[start, end)` requested. */
  range: ByteRange;
  /** Names the request instead of its chunk indices (e.g. "chunk table"). */
  what?: string;
}

/** Describes a fetch site for messages: "layer sha256:… chunks 3..5 blob range [100, 900)". */
export function describeSite(site: FetchSite): string {
  const chunks = site.what ?? (site.firstIndex === site.lastIndex ? `chunk ${site.firstIndex}` : `chunks ${site.firstIndex}..${site.lastIndex}`);
  return `layer ${site.layerDigest} ${chunks} blob range [${site.range.start}, ${site.range.end})`;
}

/** A read (or a fetch on behalf of reads) that did not finish within its deadline. `code` mirrors errno. */
export class ReadDeadlineError extends Error {
  override name = 'ReadDeadlineError';
  readonly code = 'ETIMEDOUT';
  constructor(
    message: string,
    readonly layerDigest: string,
    readonly deadlineMs: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** One range request that took longer than the per-request timeout (transient: it is retried). */
export class RequestTimeoutError extends Error {
  override name = 'RequestTimeoutError';
  readonly code = 'ETIMEDOUT';
  constructor(
    readonly site: FetchSite,
    readonly timeoutMs: number,
  ) {
    super(`${describeSite(site)}: range request timed out after ${timeoutMs} ms`);
  }
}

/** A fetcher that answered with a different number of bytes than requested (transient: retried). */
export class ShortFetchError extends Error {
  override name = 'ShortFetchError';
  constructor(
    readonly site: FetchSite,
    readonly received: number,
    readonly want: number = site.range.end - site.range.start,
  ) {
    super(`${describeSite(site)}: fetcher returned ${received} bytes, want ${want}`);
  }
}

/** A range fetch that failed for good: a permanent error, or retries that ran out (cause = last error). */
export class ChunkFetchError extends Error {
  override name = 'ChunkFetchError';
  constructor(
    message: string,
    readonly site: FetchSite,
    /** Range requests made for this fetch, including the failed ones. */
    readonly attempts: number,
    /** Whether the last error was transient (so a later read may well succeed). */
    readonly transient: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A read on a layer that was closed (unmounted). */
export class LayerClosedError extends Error {
  override name = 'LayerClosedError';
  constructor(readonly layerDigest: string) {
    super(`layer ${layerDigest}: closed`);
  }
}

/**
 * Network error codes (node, undici) after which a retry may succeed: refused/reset connections, timeouts,
 * unreachable hosts, transient DNS failures.
 */
export const TRANSIENT_ERROR_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'ENETRESET',
  'EAI_AGAIN',
  'ENOTFOUND',
  'EADDRNOTAVAIL',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);
/** HTTP statuses worth retrying besides 5xx: Request Timeout and Too Many Requests. */
export const TRANSIENT_HTTP_STATUSES: ReadonlySet<number> = new Set([408, 429]);
const SERVER_ERROR_MIN = 500;
const HTTP_STATUS_MAX = 599;
/** How deep the `cause` chain is searched. */
const MAX_CAUSE_DEPTH = 8;

/**
 * Whether a fetch error is worth retrying. The first error in the `cause` chain that carries an HTTP status
 * (`status`, e.g. RegistryError, or `statusCode`) decides: 408, 429 and 5xx are transient, any other status is
 * permanent (404, 401, 416…). Without a status, a network error code from TRANSIENT_ERROR_CODES, a request
 * timeout or a short answer is transient. Anything else (a closed client, a content verification error,
 * programming errors) is permanent.
 */
export function isTransientFetchError(err: unknown): boolean {
  let current: unknown = err;
  let transientCode = false;
  for (let depth = 0; depth < MAX_CAUSE_DEPTH && current !== undefined && current !== null; depth++) {
    if (current instanceof RequestTimeoutError || current instanceof ShortFetchError) return true;
    if (typeof current !== 'object') break;
    const record = current as { status?: unknown; statusCode?: unknown; code?: unknown; cause?: unknown };
    const status = typeof record.status === 'number' ? record.status : typeof record.statusCode === 'number' ? record.statusCode : undefined;
    if (status !== undefined && status >= 100 && status <= HTTP_STATUS_MAX) {
      return TRANSIENT_HTTP_STATUSES.has(status) || status >= SERVER_ERROR_MIN;
    }
    if (typeof record.code === 'string' && TRANSIENT_ERROR_CODES.has(record.code)) transientCode = true;
    current = record.cause;
  }
  return transientCode;
}
