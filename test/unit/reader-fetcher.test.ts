// Tests of the fetch reliability pieces of src/reader: which errors are transient, the backoff schedule,
// the priority request semaphore, deadlines and the retry loop on its own.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ContentVerificationError, RegistryError } from '../../src/fetch/errors.js';
import {
  backoffDelay,
  ChunkFetchError,
  Deadline,
  fetchRangeWithRetry,
  isTransientFetchError,
  ReadDeadlineError,
  RequestSemaphore,
  RequestTimeoutError,
  ShortFetchError,
} from '../../src/reader/index.js';
import type { FetchHooks, FetchSite, RangeFetcher, RetryPolicy } from '../../src/reader/index.js';

const site: FetchSite = { layerDigest: 'sha256:abc', firstIndex: 1, lastIndex: 2, range: { start: 10, end: 30 } };

function registryError(status?: number, cause?: unknown): RegistryError {
  return new RegistryError({ operation: 'fetch range', url: 'http://registry.test/v2/a/blobs/x', ...(status === undefined ? {} : { status }) }, { cause });
}

function coded(code: string): Error {
  return Object.assign(new Error(code), { code });
}

describe('isTransientFetchError', () => {
  test('network codes, timeouts, 408/429/5xx are transient; other statuses and unknown errors are not', () => {
    for (const err of [
      coded('ECONNREFUSED'),
      coded('ECONNRESET'),
      coded('UND_ERR_HEADERS_TIMEOUT'),
      registryError(undefined, coded('ECONNREFUSED')),
      registryError(500),
      registryError(502),
      registryError(503),
      registryError(408),
      registryError(429),
      new RequestTimeoutError(site, 10),
      new ShortFetchError(site, 3),
      { status: 504 },
    ]) {
      assert.equal(isTransientFetchError(err), true, String((err as Error).message ?? JSON.stringify(err)));
    }
    for (const err of [
      registryError(404),
      registryError(401),
      registryError(403),
      registryError(416),
      registryError(400, coded('ECONNRESET')),
      new ContentVerificationError('bad range', 'sha256:abc', 'range'),
      new Error('registry client is closed'),
      new TypeError('bug'),
      undefined,
      'string',
    ]) {
      assert.equal(isTransientFetchError(err), false, String(err));
    }
  });
});

describe('backoffDelay', () => {
  const policy = (random: number): RetryPolicy => ({ requestTimeoutMs: 1000, retryInitialDelayMs: 100, retryMaxDelayMs: 1000, random: () => random });
  test('doubles per retry up to the maximum, with up to half taken off by jitter', () => {
    assert.equal(backoffDelay(0, policy(0)), 100);
    assert.equal(backoffDelay(1, policy(0)), 200);
    assert.equal(backoffDelay(3, policy(0)), 800);
    assert.equal(backoffDelay(4, policy(0)), 1000);
    assert.equal(backoffDelay(30, policy(0)), 1000);
    assert.equal(backoffDelay(0, policy(0.999999)) > 50, true);
    assert.equal(backoffDelay(0, policy(0.5)), 75);
  });
});

describe('RequestSemaphore', () => {
  test('never grants more than the limit; demand goes before prefetch; prefetch keeps a slot free', async () => {
    const sem = new RequestSemaphore(2, 1);
    const order: string[] = [];
    const r1 = await sem.acquire('demand');
    const p1 = sem.acquire('prefetch').then((release) => {
      order.push('prefetch');
      return release;
    });
    const r2 = await sem.acquire('demand');
    assert.equal(sem.active, 2);
    const d3 = sem.acquire('demand').then((release) => {
      order.push('demand');
      return release;
    });
    r1();
    r1(); // idempotent
    const r3 = await d3;
    assert.equal(sem.active, 2);
    r2();
    // A slot is free, but prefetch may only take one while fewer than prefetchLimit (1) slots are held.
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(order, ['demand']);
    r3();
    const rp = await p1;
    assert.deepEqual(order, ['demand', 'prefetch']);
    assert.equal(sem.active, 1);
    rp();
    assert.equal(sem.active, 0);
    assert.equal(sem.peak, 2);
  });

  test('an aborted wait gives up its place', async () => {
    const sem = new RequestSemaphore(1);
    const held = await sem.acquire('demand');
    const controller = new AbortController();
    const waiting = sem.acquire('demand', controller.signal);
    controller.abort(new Error('gone'));
    await assert.rejects(waiting, /gone/);
    assert.equal(sem.waiting, 0);
    held();
    assert.equal(sem.active, 0);
  });
});

describe('fetchRangeWithRetry', () => {
  const policy: RetryPolicy = { requestTimeoutMs: 1000, retryInitialDelayMs: 1, retryMaxDelayMs: 2, random: () => 0 };
  const hooks = (): FetchHooks & { requests: number; retries: number } => {
    const h = {
      requests: 0,
      retries: 0,
      onRequest: () => void h.requests++,
      onRetry: () => void h.retries++,
      onError: () => undefined,
    };
    return h;
  };

  test('retries transient errors, then returns the bytes', async () => {
    let calls = 0;
    const fetch: RangeFetcher = async (start, end) => {
      if (++calls <= 2) throw coded('ECONNRESET');
      return Buffer.alloc(end - start, 7);
    };
    const deadline = new Deadline(5000, () => new ReadDeadlineError('late', site.layerDigest, 5000));
    const h = hooks();
    const bytes = await fetchRangeWithRetry(fetch, site, policy, deadline, new RequestSemaphore(1), 'demand', h);
    deadline.dispose();
    assert.equal(bytes.length, 20);
    assert.equal(h.requests, 3);
    assert.equal(h.retries, 2);
  });

  test('a permanent error fails at once, naming layer, chunks and range', async () => {
    const fetch: RangeFetcher = async () => {
      throw registryError(404);
    };
    const deadline = new Deadline(5000, () => new ReadDeadlineError('late', site.layerDigest, 5000));
    const h = hooks();
    await assert.rejects(fetchRangeWithRetry(fetch, site, policy, deadline, new RequestSemaphore(1), 'demand', h), (err: unknown) => {
      assert.ok(err instanceof ChunkFetchError);
      assert.match(err.message, /layer sha256:abc chunks 1\.\.2 blob range \[10, 30\)/);
      return true;
    });
    deadline.dispose();
    assert.equal(h.requests, 1);
    assert.equal(h.retries, 0);
  });

  test('a fetcher that ignores its signal is cut off by the request timeout and then the deadline', async () => {
    const signals: AbortSignal[] = [];
    const fetch: RangeFetcher = (_s, _e, signal) => {
      signals.push(signal);
      return new Promise<Buffer>(() => undefined);
    };
    const deadline = new Deadline(200, () => new ReadDeadlineError('late', site.layerDigest, 200));
    const h = hooks();
    await assert.rejects(
      fetchRangeWithRetry(fetch, site, { ...policy, requestTimeoutMs: 40 }, deadline, new RequestSemaphore(1), 'demand', h),
      (err: unknown) => err instanceof ReadDeadlineError && err.cause instanceof RequestTimeoutError,
    );
    deadline.dispose();
    assert.ok(signals.length >= 2);
    assert.ok(signals.every((s) => s.aborted), 'every abandoned request was aborted');
  });
});
