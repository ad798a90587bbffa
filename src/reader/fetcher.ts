// One blob range, fetched reliably enough for a read: each attempt holds a request slot, has its own timeout
// and is raced against it (a fetcher that ignores its AbortSignal still cannot hang us); transient failures
// are retried with exponential backoff and jitter until the caller's deadline; permanent ones fail at once.
import { raceSignal, sleep } from './deadline.js';
import type { RegistryHealth } from './health.js';
import type { Deadline } from './deadline.js';
import {
  ChunkFetchError,
  describeSite,
  isTransientFetchError,
  ReadDeadlineError,
  RequestTimeoutError,
  ShortFetchError,
} from './errors.js';
import type { FetchSite } from './errors.js';
import type { RequestPriority, RequestSemaphore } from './semaphore.js';
import type { MultiRangeFetcher, RangeFetcher, RangesFetcher } from './types.js';
import type { ByteRange } from '../oci/store.js';
import type { ImageStore } from '../oci/store.js';
import type { Descriptor } from '../oci/types.js';
import { errorMessage } from '../util/errors.js';

/** Longest a single range request may take before it is abandoned and retried. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
/** Backoff before the first retry; doubles (RETRY_BACKOFF_FACTOR) per retry up to the maximum. */
export const DEFAULT_RETRY_INITIAL_DELAY_MS = 100;
export const DEFAULT_RETRY_MAX_DELAY_MS = 2_000;
export const RETRY_BACKOFF_FACTOR = 2;
/**
 * Share of each backoff delay that is random ("equal jitter"): the wait is uniformly drawn from
 * [delay × (1 − RETRY_JITTER), delay], so that many readers do not retry in lock step.
 */
export const RETRY_JITTER = 0.5;

export interface RetryPolicy {
  requestTimeoutMs: number;
  retryInitialDelayMs: number;
  retryMaxDelayMs: number;
  /** Random source in [0, 1) for jitter (tests may pin it). */
  random: () => number;
}

export interface FetchHooks {
  /** A range request is about to be sent. */
  onRequest(): void;
  /** A transient failure is being retried, after waiting `delayMs`. */
  onRetry(err: unknown, delayMs: number): void;
  /** The last error seen (so a deadline error can name it as its cause). */
  onError(err: unknown): void;
}

/** Backoff before retry number `retry` (0-based), with jitter. */
export function backoffDelay(retry: number, policy: RetryPolicy): number {
  const base = Math.min(policy.retryMaxDelayMs, policy.retryInitialDelayMs * RETRY_BACKOFF_FACTOR ** retry);
  return base * (1 - RETRY_JITTER * policy.random());
}

/** Everything one range fetch needs, passed down from fetchRangeWithRetry to its attempts. */
interface RangeFetchJob {
  /** One request for all of `ranges`, answering one buffer per range. */
  request: (signal: AbortSignal) => Promise<Buffer[]>;
  ranges: readonly ByteRange[];
  site: FetchSite;
  policy: RetryPolicy;
  deadline: Deadline;
  semaphore: RequestSemaphore;
  priority: RequestPriority;
  hooks: FetchHooks;
}

/** One attempt: a slot, a timeout, the fetch raced against both the timeout and the deadline. */
async function attempt({ request, ranges, site, policy, deadline, semaphore, priority, hooks }: RangeFetchJob): Promise<Buffer[]> {
  const release = await semaphore.acquire(priority, deadline.signal);
  const controller = new AbortController();
  const timeoutMs = Math.max(1, Math.min(policy.requestTimeoutMs, Math.ceil(deadline.remaining())));
  const timer = setTimeout(() => controller.abort(new RequestTimeoutError(site, timeoutMs)), timeoutMs);
  const onDeadline = (): void => controller.abort(deadline.signal.reason);
  deadline.signal.addEventListener('abort', onDeadline, { once: true });
  try {
    hooks.onRequest();
    let pending: Promise<Buffer[]>;
    try {
      pending = request(controller.signal);
    } catch (err) {
      pending = Promise.reject(err);
    }
    const buffers = await raceSignal(pending, controller.signal);
    const want = ranges.reduce((sum, r) => sum + (r.end - r.start), 0);
    if (buffers.length !== ranges.length || buffers.some((b, k) => b.length !== ranges[k]!.end - ranges[k]!.start)) {
      throw new ShortFetchError(site, buffers.reduce((sum, b) => sum + b.length, 0), want);
    }
    return buffers;
  } finally {
    clearTimeout(timer);
    deadline.signal.removeEventListener('abort', onDeadline);
    release();
  }
}

/**
 * Fetches `site.range` with retries. Rejects with ChunkFetchError (permanent error: at once), or with a
 * ReadDeadlineError when the deadline passes (cause: the last fetch error), or with the deadline signal's
 * reason when it was aborted from outside (e.g. LayerClosedError).
 */
export async function fetchRangeWithRetry(
  fetch: RangeFetcher,
  site: FetchSite,
  policy: RetryPolicy,
  deadline: Deadline,
  semaphore: RequestSemaphore,
  priority: RequestPriority,
  hooks: FetchHooks,
  health?: RegistryHealth,
): Promise<Buffer> {
  const request = async (signal: AbortSignal): Promise<Buffer[]> => [await fetch(site.range.start, site.range.end, signal)];
  const [bytes] = await runWithRetries({ request, ranges: [site.range], site, policy, deadline, semaphore, priority, hooks }, health);
  return bytes!;
}

/**
 * Fetches several sorted, disjoint ranges of one blob in one request per attempt (a multi-range request),
 * with the same retries, deadline and health rules as fetchRangeWithRetry; `site` names them all in errors.
 */
export async function fetchRangesWithRetry(
  fetch: RangesFetcher,
  ranges: readonly ByteRange[],
  site: FetchSite,
  policy: RetryPolicy,
  deadline: Deadline,
  semaphore: RequestSemaphore,
  priority: RequestPriority,
  hooks: FetchHooks,
  health?: RegistryHealth,
): Promise<Buffer[]> {
  return runWithRetries({ request: (signal) => fetch(ranges, signal), ranges, site, policy, deadline, semaphore, priority, hooks }, health);
}

async function runWithRetries(job: RangeFetchJob, health: RegistryHealth | undefined): Promise<Buffer[]> {
  const { site, deadline } = job;
  if (!health) return fetchWithRetries(job, false);
  const admission = await health.admit(describeSite(site), deadline.signal);
  try {
    const bytes = await fetchWithRetries(job, admission === 'probe');
    health.markUp();
    return bytes;
  } catch (err) {
    // Only a registry that keeps failing transiently is "down"; a 404 or a closed layer says nothing of it.
    if (admission === 'probe' || err instanceof ReadDeadlineError || isTransientFetchError(err)) {
      health.markDown(err);
    }
    throw err;
  }
}

async function fetchWithRetries(job: RangeFetchJob, singleAttempt: boolean): Promise<Buffer[]> {
  const { site, deadline, hooks } = job;
  let attempts = 0;
  let lastError: unknown;
  const expired = (): Error => {
    const reason: unknown = deadline.signal.reason;
    if (reason instanceof ReadDeadlineError) {
      return new ReadDeadlineError(
        `${describeSite(site)}: not fetched within ${deadline.ms} ms (${attempts} request${attempts === 1 ? '' : 's'}${lastError === undefined ? '' : `, last error: ${errorMessage(lastError)}`})`,
        site.layerDigest,
        deadline.ms,
        { cause: lastError ?? reason },
      );
    }
    return reason instanceof Error ? reason : new Error(String(reason));
  };
  for (let retry = 0; ; retry++) {
    try {
      attempts++;
      return await attempt(job);
    } catch (err) {
      if (deadline.expired) {
        // The deadline (or a close) ended the attempt; keep the attempt's own error if it was a real one.
        if (err !== deadline.signal.reason) {
          lastError = err;
          hooks.onError(err);
        }
        throw expired();
      }
      lastError = err;
      hooks.onError(err);
      if (!isTransientFetchError(err) || singleAttempt) {
        throw new ChunkFetchError(`${describeSite(site)}: fetch failed: ${errorMessage(err)}`, site, attempts, isTransientFetchError(err), { cause: err });
      }
      const delay = backoffDelay(retry, job.policy);
      try {
        await sleep(delay, deadline.signal);
      } catch {
        throw expired();
      }
      hooks.onRetry(err, delay);
    }
  }
}


/**
 * A RangeFetcher over an ImageStore's fetchRange for one layer; the attempt's AbortSignal is passed on, so an
 * abandoned request (timeout, deadline, close) frees its connection at once.
 */
export function rangeFetcherFromStore(store: Pick<ImageStore, 'fetchRange'>, desc: Descriptor): RangeFetcher {
  return (start, end, signal) => store.fetchRange(desc, start, end, { signal });
}

/** Multi-range requests over a store that offers fetchRanges; undefined for one that does not. */
export function multiRangeFetcherFromStore(store: Pick<ImageStore, 'fetchRanges' | 'multiRangeEnabled'>, desc: Descriptor): MultiRangeFetcher | undefined {
  const fetchRanges = store.fetchRanges?.bind(store);
  if (!fetchRanges) return undefined;
  return { fetch: (ranges, signal) => fetchRanges(desc, ranges, { signal }), enabled: () => store.multiRangeEnabled !== false };
}
