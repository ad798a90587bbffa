// Range strategies against the real distribution registry (behind the fault-injecting proxy where a fault is
// needed): multi-range requests answered as multipart/byteranges, the fallback to single ranges when a registry
// refuses them with 400 (remembered), a registry that ignores Range, answers that merge or misstate parts, a
// lazy layer asking for distant runs of chunks in one request, and whole-blob streams (openBlob) that resume
// after a dropped connection and stop when their signal is aborted.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test, type TestContext } from 'node:test';
import { ContentVerificationError } from '../../src/fetch/errors.js';
import { openImageStore } from '../../src/fetch/open.js';
import { RegistryStore } from '../../src/fetch/registry.js';
import type { Descriptor } from '../../src/oci/types.js';
import { createMemoryChunkCache } from '../../src/cache/memory.js';
import { InlineDecoder, multiRangeFetcherFromStore, openLazyLayer, rangeFetcherFromStore } from '../../src/reader/index.js';
import { sha256Digest } from '../../src/util/digest.js';
import { encodeInMemory, makeImage } from '../fixtures/chunktable/helpers.js';
import { startFaultProxy, type FaultProxy } from '../helpers/faultproxy.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';

const REPO = 'multirange/blob';
const BLOB_SIZE = 6 * 1024 * 1024 + 123;
const BLOB = makeImage(BLOB_SIZE, 7);
const DESC: Descriptor = { mediaType: 'application/octet-stream', digest: sha256Digest(BLOB), size: BLOB_SIZE };
const BLOBS_RE = /^\/v2\/.+\/blobs\/sha256:/;
const RANGES = [
  { start: 0, end: 1000 },
  { start: 70_000, end: 200_000 },
  { start: 5_000_000, end: BLOB_SIZE },
];
/** A seekable layer of 16 chunks of 64 KiB, for the lazy-layer test. */
const CHUNK = 64 * 1024;
const IMAGE = makeImage(16 * CHUNK, 11);

let registry: TestRegistry;
let proxy: FaultProxy;
let layer: Descriptor;

function storeFor(t: TestContext, host = proxy.host): RegistryStore {
  const store = openImageStore(`${host}/${REPO}:v1`, { credentials: 'none' });
  assert.ok(store instanceof RegistryStore);
  t.after(() => store.close());
  return store;
}

function blobGets(): { range: string | undefined; fault: string | undefined }[] {
  return proxy.log.filter((r) => r.method === 'GET' && BLOBS_RE.test(r.url)).map((r) => ({ range: r.range, fault: r.fault }));
}

function expected(ranges: readonly { start: number; end: number }[], blob: Buffer = BLOB): Buffer[] {
  return ranges.map(({ start, end }) => blob.subarray(start, end));
}

before(async () => {
  registry = await startRegistry();
  const direct = openImageStore(`${registry.host}/${REPO}:v1`, { credentials: 'none' });
  try {
    await direct.pushBlob(DESC, { bytes: BLOB });
    const encoded = await encodeInMemory(IMAGE, { chunkSize: CHUNK });
    layer = encoded.desc;
    await direct.pushBlob(layer, { bytes: encoded.blob });
  } finally {
    await direct.close();
  }
  proxy = await startFaultProxy({ upstream: registry.host });
});

after(async () => {
  await proxy?.close();
  await registry?.stop();
});

test('the real registry answers a multi-range request with multipart/byteranges: one request, exact bytes', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([]);
  const store = storeFor(t);
  assert.deepEqual(await store.fetchRanges(DESC, RANGES), expected(RANGES));
  assert.deepEqual(blobGets(), [{ range: 'bytes=0-999,70000-199999,5000000-6291578', fault: undefined }]);
  assert.equal(store.multiRangeEnabled, true);
  assert.equal(store.stats.multiRangeRefused, 0);
});

test('a registry that refuses multi-range with 400: single ranges at once, and from then on', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'refuse-multirange', method: 'GET', path: BLOBS_RE }]);
  const events: string[] = [];
  const store = openImageStore(`${proxy.host}/${REPO}:v1`, { credentials: 'none', registry: { onEvent: (e) => events.push(e.kind) } });
  assert.ok(store instanceof RegistryStore);
  t.after(() => store.close());
  assert.deepEqual(await store.fetchRanges(DESC, RANGES), expected(RANGES));
  assert.equal(store.multiRangeEnabled, false);
  assert.equal(store.stats.multiRangeRefused, 1);
  assert.deepEqual(events, ['multirange-refused']);
  const second = [RANGES[0]!, RANGES[2]!];
  assert.deepEqual(await store.fetchRanges(DESC, second), expected(second));
  const gets = blobGets();
  assert.equal(gets.filter((g) => g.fault === 'refuse-multirange').length, 1, 'only the first multi-range request was sent');
  assert.equal(gets.filter((g) => g.fault === undefined).length, 5, 'then one request per range');
  assert.ok(gets.filter((g) => g.fault === undefined).every((g) => g.range !== undefined && !g.range.includes(',')));
});

test('a registry that ignores Range answers a multi-range request with the whole blob: exact bytes, cut after the last range', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'ignore-range', method: 'GET', path: BLOBS_RE }]);
  const store = storeFor(t);
  const early = [
    { start: 10, end: 20 },
    { start: 100_000, end: 300_000 },
  ];
  assert.deepEqual(await store.fetchRanges(DESC, early), expected(early));
  assert.equal(store.stats.rangeIgnored, 1);
  assert.ok(store.stats.rangeIgnoredBytes < BLOB_SIZE / 2, `read ${store.stats.rangeIgnoredBytes} bytes of ${BLOB_SIZE}`);
});

test('ranges must be sorted and disjoint', async (t) => {
  const store = storeFor(t, registry.host);
  await assert.rejects(
    store.fetchRanges(DESC, [
      { start: 100, end: 200 },
      { start: 150, end: 300 },
    ]),
    RangeError,
  );
});

/** A loopback server answering every blob GET with `handler`. */
async function fakeRegistry(t: TestContext, handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const server = createServer(handler);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => new Promise<void>((done) => (server.closeAllConnections(), server.close(() => done()))));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

test('a server that merges the ranges into one part is accepted; a part that misstates its range is a verification error', async (t) => {
  let mode: 'merge' | 'lie' = 'merge';
  const host = await fakeRegistry(t, (_req, res) => {
    if (mode === 'merge') {
      const start = RANGES[0]!.start;
      const end = RANGES[1]!.end;
      res.writeHead(206, { 'content-range': `bytes ${start}-${end - 1}/${BLOB_SIZE}`, 'content-length': String(end - start) });
      return void res.end(BLOB.subarray(start, end));
    }
    // Claims bytes 0-999 but sends bytes 1-1000: the client cannot tell by the data, only by the header; here the
    // header names a range that does not cover what was asked.
    const body = Buffer.concat([
      Buffer.from(`--zz\r\nContent-Range: bytes 1-1000/${BLOB_SIZE}\r\n\r\n`),
      BLOB.subarray(1, 1001),
      Buffer.from(`\r\n--zz\r\nContent-Range: bytes 70000-199999/${BLOB_SIZE}\r\n\r\n`),
      BLOB.subarray(70_000, 200_000),
      Buffer.from('\r\n--zz--\r\n'),
    ]);
    res.writeHead(206, { 'content-type': 'multipart/byteranges; boundary=zz', 'content-length': String(body.length) });
    res.end(body);
  });
  const store = storeFor(t, host);
  const two = RANGES.slice(0, 2);
  assert.deepEqual(await store.fetchRanges(DESC, two), expected(two));
  mode = 'lie';
  await assert.rejects(store.fetchRanges(DESC, two), (err: unknown) => err instanceof ContentVerificationError && /no part covers bytes 0-999/.test(err.message));
});

test('a lazy layer fetches distant runs of missing chunks in one multi-range request, and in single ranges once refused', async (t) => {
  for (const refuse of [false, true]) {
    proxy.resetCounters();
    proxy.setFaults(refuse ? [{ kind: 'refuse-multirange', method: 'GET', path: BLOBS_RE }] : []);
    const store = storeFor(t);
    const lazy = await openLazyLayer({
      descriptor: layer,
      fetchRange: rangeFetcherFromStore(store, layer),
      fetchRanges: multiRangeFetcherFromStore(store, layer),
      memory: createMemoryChunkCache(64 * CHUNK),
      options: { multiRange: true, maxGapBytes: 0, readaheadChunks: 0, decoder: new InlineDecoder() },
      log: () => undefined,
    });
    t.after(() => lazy.close());
    // Chunks 3 and 6 first (one by one), then one read over 2..7: missing 2, 4-5 and 7 are three runs.
    assert.deepEqual(await lazy.read(3 * CHUNK, CHUNK), IMAGE.subarray(3 * CHUNK, 4 * CHUNK));
    assert.deepEqual(await lazy.read(6 * CHUNK, CHUNK), IMAGE.subarray(6 * CHUNK, 7 * CHUNK));
    proxy.resetCounters();
    assert.deepEqual(await lazy.read(2 * CHUNK, 6 * CHUNK), IMAGE.subarray(2 * CHUNK, 8 * CHUNK));
    const gets = blobGets();
    if (refuse) {
      assert.equal(gets.filter((g) => g.fault === 'refuse-multirange').length, 1);
      assert.equal(gets.filter((g) => g.fault === undefined).length, 3, 'one request per run after the refusal');
    } else {
      assert.equal(gets.length, 1, 'one multi-range request');
      assert.equal(gets[0]!.range?.split(',').length, 3);
    }
  }
});

test('openBlob resumes a whole-blob stream after a dropped connection, verified end to end', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'drop-mid-body', method: 'GET', path: BLOBS_RE, count: 1, afterBytes: 1_500_000 }]);
  const store = storeFor(t);
  const chunks: Buffer[] = [];
  for await (const chunk of await store.openBlob(DESC)) chunks.push(chunk as Buffer);
  assert.ok(Buffer.concat(chunks).equals(BLOB), 'the stream has exactly the blob');
  const gets = blobGets();
  assert.equal(gets.length, 2);
  assert.equal(gets[0]!.range, undefined);
  assert.match(gets[1]!.range ?? '', /^bytes=\d+-$/, 'resumed with an open-ended range');
  assert.ok(Number(/\d+/.exec(gets[1]!.range!)![0]) > 0, 'resumed past the bytes already received');
  assert.ok(store.stats.retries >= 1);
});

test('openBlob stops when its signal is aborted mid-stream', async (t) => {
  proxy.resetCounters();
  proxy.setFaults([{ kind: 'slow', method: 'GET', path: BLOBS_RE, bytesPerSecond: 512 * 1024 }]);
  const store = storeFor(t);
  const controller = new AbortController();
  const stream = await store.openBlob(DESC, { signal: controller.signal });
  let received = 0;
  const started = Date.now();
  await assert.rejects(
    (async () => {
      for await (const chunk of stream) {
        received += (chunk as Buffer).length;
        if (received > 100_000) controller.abort(new Error('stop reading'));
      }
    })(),
    /stop reading/,
  );
  assert.ok(received < BLOB_SIZE, 'the stream did not run to the end');
  assert.ok(Date.now() - started < 10_000, 'it stopped promptly');
});
