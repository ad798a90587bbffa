// The registry store against the real distribution registry behind the fault-injecting proxy: ranged and
// whole-blob reads stay exact (or fail cleanly) through a cross-origin 307 redirect (no Authorization to the
// storage host, the redirect target reused for the next range), a registry that ignores Range (recorded, the
// transfer cut), 429/503 with Retry-After, a 500 burst, a body dropped mid-way, flipped bytes (digest
// error, never wrong bytes), a stalled registry (fails within the headers timeout) and an aborted signal.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test, type TestContext } from 'node:test';
import { StaticCredentials } from '../../src/fetch/credentials.js';
import { ContentVerificationError, RegistryError } from '../../src/fetch/errors.js';
import { openImageStore, type OpenImageStoreOptions } from '../../src/fetch/open.js';
import type { RegistryClientEvent } from '../../src/fetch/http.js';
import { RegistryStore } from '../../src/fetch/registry.js';
import { rangeFetcherFromStore } from '../../src/reader/fetcher.js';
import type { Descriptor } from '../../src/oci/types.js';
import { sha256Digest } from '../../src/util/digest.js';
import { startFaultProxy, type FaultProxy } from '../helpers/faultproxy.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';

const REPO = 'faults/blob';
const BLOB_SIZE = 8 * 1024 * 1024;
const BLOB = randomBytes(BLOB_SIZE);
const DESC: Descriptor = { mediaType: 'application/octet-stream', digest: sha256Digest(BLOB), size: BLOB_SIZE };
const BLOB_PATH = `/v2/${REPO}/blobs/${DESC.digest}`;
const BLOBS_RE = /^\/v2\/.+\/blobs\/sha256:/;
/** Headers timeout of the store in the stall test. */
const STALL_HEADERS_TIMEOUT_MS = 500;
/** Slack allowed over an expected wait on a loaded test machine. */
const SLACK_MS = 1_500;

let registry: TestRegistry;
let proxy: FaultProxy;

function storeFor(t: TestContext, options: OpenImageStoreOptions = {}): RegistryStore {
  const store = openImageStore(`${proxy.host}/${REPO}:v1`, { credentials: 'none', ...options });
  assert.ok(store instanceof RegistryStore);
  t.after(() => store.close());
  return store;
}

function blobGets(): number {
  return proxy.log.filter((r) => r.method === 'GET' && r.url.startsWith(BLOB_PATH)).length;
}

/** A loopback HTTP server answering with `handler`, closed after the test. */
async function serve(t: TestContext, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const server: Server = createServer(handler);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** Answers a single-range GET of BLOB with 206. */
function answerRange(req: IncomingMessage, res: ServerResponse): void {
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  if (!m) return void res.writeHead(400).end();
  const start = Number(m[1]);
  const end = Number(m[2]) + 1;
  res.writeHead(206, { 'content-length': String(end - start), 'content-range': `bytes ${start}-${end - 1}/${BLOB_SIZE}` });
  res.end(BLOB.subarray(start, end));
}

before(async () => {
  registry = await startRegistry();
  const direct = openImageStore(`${registry.host}/${REPO}:v1`, { credentials: 'none' });
  try {
    await direct.pushBlob(DESC, { bytes: BLOB });
  } finally {
    await direct.close();
  }
  proxy = await startFaultProxy({ upstream: registry.host });
});

after(async () => {
  await proxy?.close();
  await registry?.stop();
});

test('307 to another origin: exact bytes, no Authorization at the storage host, the target reused for the next range', async (t) => {
  proxy.resetCounters();
  // The first blob GET asks for Basic auth, so the client sends Authorization to the registry from then on.
  proxy.setFaults([
    { kind: 'status', method: 'GET', path: BLOBS_RE, count: 1, status: 401, headers: { 'www-authenticate': 'Basic realm="faults"' } },
    { kind: 'redirect', method: 'GET', path: BLOBS_RE },
  ]);
  const store = storeFor(t, { credentials: new StaticCredentials({ [proxy.host]: { username: 'u', password: 'secret-pw' } }) });
  assert.deepEqual(await store.fetchRange(DESC, 1000, 70_000), BLOB.subarray(1000, 70_000));
  assert.deepEqual(await store.fetchRange(DESC, 3_000_000, 3_100_000), BLOB.subarray(3_000_000, 3_100_000));
  assert.equal(blobGets(), 2, 'the registry saw the 401 round and the redirected GET only');
  assert.ok(proxy.authorizationHeadersSeen >= 1, 'Authorization was sent to the registry');
  assert.equal(proxy.storage.requests, 2, 'both ranges were read from the storage host');
  assert.equal(proxy.storage.authorizationHeadersSeen, 0, 'no Authorization reached the storage host');
  assert.deepEqual(proxy.storage.rangeHeaders, ['bytes=1000-69999', 'bytes=3000000-3099999'], 'Range kept across the redirect');
  assert.equal(store.stats.redirectsFollowed, 1);
  assert.equal(store.stats.redirectTargetHits, 1);
});

test('a remembered redirect target is dropped when it answers 410 or its TTL passes, then resolved again', async (t) => {
  let storageFails = 0;
  let storageGets = 0;
  const storageHost = await serve(t, (req, res) => {
    storageGets++;
    if (storageFails > 0) {
      storageFails--;
      return void res.writeHead(410, { 'content-length': '0' }).end();
    }
    answerRange(req, res);
  });
  let registryGets = 0;
  const fakeRegistry = await serve(t, (req, res) => {
    if (req.url === BLOB_PATH) {
      registryGets++;
      return void res.writeHead(307, { location: `http://${storageHost}/signed${BLOB_PATH}?sig=s3cr3t&n=${registryGets}`, 'content-length': '0' }).end();
    }
    res.writeHead(404, { 'content-length': '0' }).end();
  });
  let clock = 1_000_000;
  const events: RegistryClientEvent[] = [];
  const store = openImageStore(`${fakeRegistry}/${REPO}:v1`, { credentials: 'none', registry: { now: () => clock, redirectTargetTtlMs: 60_000, onEvent: (e) => events.push(e) } });
  assert.ok(store instanceof RegistryStore);
  t.after(() => store.close());
  const read = async (start: number, end: number): Promise<void> => assert.deepEqual(await store.fetchRange(DESC, start, end), BLOB.subarray(start, end));

  await read(0, 100);
  await read(100, 200);
  assert.deepEqual([registryGets, storageGets], [1, 2], 'second range straight from the storage URL');
  storageFails = 1;
  await read(200, 300);
  assert.deepEqual([registryGets, storageGets], [2, 4], '410 from the storage URL: resolved again through the registry');
  clock += 60_001;
  await read(300, 400);
  assert.deepEqual([registryGets, storageGets], [3, 5], 'after the TTL the registry is asked again');
  assert.equal(store.stats.redirectsFollowed, 3);
  assert.equal(store.stats.redirectTargetHits, 1);
  const dropped = events.filter((e) => e.kind === 'redirect-target-dropped');
  assert.deepEqual(dropped.map((e) => (e.kind === 'redirect-target-dropped' ? e.reason : '')), ['HTTP 410', 'expired']);
  for (const e of events) assert.ok(!JSON.stringify(e).includes('s3cr3t'), 'no signed query in events');
});

test('a registry that ignores Range: exact bytes, recorded per host, the whole-blob transfer cut early', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'ignore-range', method: 'GET', path: BLOBS_RE }]);
  const events: string[] = [];
  const store = storeFor(t, { registry: { onEvent: (e) => events.push(e.kind) } });
  assert.deepEqual(await store.fetchRange(DESC, 10, 4096), BLOB.subarray(10, 4096));
  assert.deepEqual(await store.fetchRange(DESC, 100_000, 100_100), BLOB.subarray(100_000, 100_100));
  assert.deepEqual(proxy.log.map((r) => r.fault), ['ignore-range', 'ignore-range']);
  assert.equal(store.stats.rangeIgnored, 2);
  assert.ok(store.stats.rangeIgnoredBytes < BLOB_SIZE / 4, `read ${store.stats.rangeIgnoredBytes} of ${BLOB_SIZE} bytes before cutting`);
  assert.ok(store.registryClient.ignoresRange(proxy.host));
  assert.deepEqual(store.registryClient.rangeIgnoredHosts, [proxy.host]);
  assert.deepEqual(events, ['range-ignored', 'range-ignored']);
});

test('429 with Retry-After in seconds, then success: retried after about that long', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'status', method: 'GET', path: BLOBS_RE, count: 1, status: 429, headers: { 'retry-after': '1' } }]);
  const store = storeFor(t);
  const started = Date.now();
  assert.deepEqual(await store.fetchRange(DESC, 0, 65_536), BLOB.subarray(0, 65_536));
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 950 && elapsed < 1_000 + SLACK_MS, `waited ${elapsed} ms`);
  assert.equal(store.stats.retries, 1);
  assert.equal(blobGets(), 2);
});

test('503 with Retry-After as an HTTP date, then success', async (t) => {
  proxy.resetCounters();
  const when = new Date(Date.now() + 2_000).toUTCString();
  proxy.setFaults([{ kind: 'status', method: 'GET', path: BLOBS_RE, count: 1, status: 503, headers: { 'retry-after': when } }]);
  const store = storeFor(t);
  const started = Date.now();
  assert.deepEqual(await store.fetchRange(DESC, 5, 500), BLOB.subarray(5, 500));
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 900 && elapsed < 2_000 + SLACK_MS, `waited ${elapsed} ms`);
  assert.equal(store.stats.retries, 1);
});

test('a 500 burst shorter than the retry budget, then success', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'status', method: 'GET', path: BLOBS_RE, count: 2, status: 500 }]);
  const store = storeFor(t);
  assert.deepEqual(await store.fetchRange(DESC, 1_000_000, 1_200_000), BLOB.subarray(1_000_000, 1_200_000));
  assert.equal(store.stats.retries, 2);
  assert.equal(blobGets(), 3);
});

test('a 500 burst longer than the retry budget fails with the status', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'status', method: 'GET', path: BLOBS_RE, status: 500 }]);
  const store = storeFor(t, { registry: { retry: { initialDelayMs: 10 } } });
  await assert.rejects(store.fetchRange(DESC, 0, 10), (err: unknown) => err instanceof RegistryError && err.status === 500);
  assert.equal(store.stats.retries, 2);
  assert.equal(blobGets(), 3);
});

test('a body dropped mid-way once, then success', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'drop-mid-body', method: 'GET', path: BLOBS_RE, count: 1, afterBytes: 100_000 }]);
  const store = storeFor(t);
  assert.deepEqual(await store.fetchRange(DESC, 0, 1024 * 1024), BLOB.subarray(0, 1024 * 1024));
  assert.equal(store.stats.retries, 1);
  assert.equal(blobGets(), 2);
});

test('flipped bytes: fetchBlob fails with the digest error and returns no bytes', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'flip-bytes', method: 'GET', path: BLOBS_RE, count: 1 }]);
  const store = storeFor(t);
  await assert.rejects(store.fetchBlob(DESC), (err: unknown) => err instanceof ContentVerificationError && err.kind === 'digest' && err.digest === DESC.digest);
  assert.equal(proxy.flips.length, 1);
  assert.equal(store.stats.retries, 0, 'a verification failure is not retried');
  // Without the fault the same store reads it correctly.
  assert.ok((await store.fetchBlob(DESC)).equals(BLOB));
});

test('a stalled registry: the request fails within the headers timeout, without retries', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'stall', method: 'GET', path: BLOBS_RE }]);
  const store = storeFor(t, { registry: { timeouts: { headersMs: STALL_HEADERS_TIMEOUT_MS } } });
  const started = Date.now();
  await assert.rejects(store.fetchRange(DESC, 0, 10), (err: unknown) => err instanceof RegistryError && /timed out/.test(err.message));
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= STALL_HEADERS_TIMEOUT_MS - 50 && elapsed < STALL_HEADERS_TIMEOUT_MS + SLACK_MS, `failed after ${elapsed} ms`);
  assert.equal(store.stats.retries, 0);
});

test('an aborted signal rejects promptly, before and during the request', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'stall', method: 'GET', path: BLOBS_RE }]);
  const store = storeFor(t);
  const already = new AbortController();
  already.abort();
  await assert.rejects(store.fetchRange(DESC, 0, 10, { signal: already.signal }), { name: 'AbortError' });
  await assert.rejects(rangeFetcherFromStore(store, DESC)(0, 10, already.signal), { name: 'AbortError' }, 'the reader passes its signal on');
  assert.equal(blobGets(), 0, 'an aborted read sends nothing');

  const controller = new AbortController();
  const started = Date.now();
  setTimeout(() => controller.abort(), 100);
  await assert.rejects(store.fetchRange(DESC, 0, 10, { signal: controller.signal }), { name: 'AbortError' });
  const elapsed = Date.now() - started;
  assert.ok(elapsed < 100 + SLACK_MS, `rejected after ${elapsed} ms`);
  assert.equal(store.stats.retries, 0);

  // An abort during a retry wait also ends it at once.
  proxy.setFaults([{ kind: 'status', method: 'GET', path: BLOBS_RE, status: 503, headers: { 'retry-after': '5' } }]);
  const waiting = new AbortController();
  const waitStarted = Date.now();
  setTimeout(() => waiting.abort(), 200);
  await assert.rejects(store.fetchRange(DESC, 0, 10, { signal: waiting.signal }), { name: 'AbortError' });
  assert.ok(Date.now() - waitStarted < 200 + SLACK_MS);
});
