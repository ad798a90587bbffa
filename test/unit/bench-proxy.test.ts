// The benchmark's throttling proxy: it adds at least the configured delay to every request, caps the
// shared bandwidth (measured over transfers of more than a second, so not timing-flaky), keeps every body
// intact and in order under concurrency, passes status and headers through, and counts what it sent.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';
import { keystream } from '../../src/bench/images.js';
import { BandwidthLimiter, startThrottleProxy } from '../../src/bench/proxy.js';

const MB = 1e6;
const BLOB = `/v2/bench/x/blobs/sha256:${'ab'.repeat(32)}`;

/** An upstream that serves `size` deterministic bytes per path (query ?size=N), honouring one simple Range. */
async function startUpstream(t: { after: (fn: () => Promise<void> | void) => void }): Promise<{ host: string; bodyOf: (size: number) => Buffer }> {
  const cache = new Map<number, Buffer>();
  const bodyOf = (size: number) => {
    if (!cache.has(size)) cache.set(size, keystream(`body-${size}`)(size));
    return cache.get(size)!;
  };
  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const body = bodyOf(Number(url.searchParams.get('size') ?? '0'));
    const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    const slice = range ? body.subarray(Number(range[1]), Number(range[2]) + 1) : body;
    res.writeHead(range ? 206 : 200, {
      'content-length': slice.length,
      'x-upstream': 'yes',
      ...(range ? { 'content-range': `bytes ${range[1]}-${range[2]}/${body.length}` } : {}),
    });
    for (let off = 0; off < slice.length; off += 64 * 1024) {
      if (!res.write(slice.subarray(off, off + 64 * 1024))) await once(res, 'drain');
    }
    res.end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
  return { host: `127.0.0.1:${(server.address() as AddressInfo).port}`, bodyOf };
}

function get(host: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }> {
  const [hostname, port] = host.split(':');
  return new Promise((resolve, reject) => {
    const req = request({ hostname, port: Number(port), path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('every request is delayed by at least the configured latency', async (t) => {
  const up = await startUpstream(t);
  const proxy = await startThrottleProxy({ upstream: up.host, latencyMs: 40 });
  t.after(() => proxy.close());
  for (let i = 0; i < 5; i++) {
    const started = performance.now();
    const r = await get(proxy.host, `/v2/?size=100`);
    const ms = performance.now() - started;
    assert.equal(r.status, 200);
    assert.ok(ms >= 40, `request ${i} took ${ms.toFixed(1)} ms, less than the 40 ms latency`);
    assert.ok(ms < 1000, `request ${i} took ${ms.toFixed(1)} ms`);
  }
  assert.equal(proxy.counters().requests, 5);
});

test('one transfer of 12 MB at 8 MB/s takes about 1.5 s and arrives intact', async (t) => {
  const up = await startUpstream(t);
  const proxy = await startThrottleProxy({ upstream: up.host, latencyMs: 0, bytesPerSecond: 8 * MB });
  t.after(() => proxy.close());
  const size = 12 * MB;
  const started = performance.now();
  const r = await get(proxy.host, `${BLOB}?size=${size}`);
  const seconds = (performance.now() - started) / 1000;
  assert.equal(r.body.length, size);
  assert.equal(sha(r.body), sha(up.bodyOf(size)));
  const rate = size / seconds;
  assert.ok(rate <= 8 * MB * 1.03, `rate ${(rate / MB).toFixed(2)} MB/s exceeds the 8 MB/s cap`);
  assert.ok(rate >= 8 * MB * 0.75, `rate ${(rate / MB).toFixed(2)} MB/s is far below the 8 MB/s cap`);
  // A blob path is recognised without its query.
  assert.deepEqual(proxy.counters(), { requests: 1, blobRequests: 1, bytes: size, blobBytes: size });
});

test('concurrent responses share the cap and every body stays intact and in order', async (t) => {
  const up = await startUpstream(t);
  const proxy = await startThrottleProxy({ upstream: up.host, latencyMs: 5, bytesPerSecond: 8 * MB });
  t.after(() => proxy.close());
  const sizes = [3 * MB, 3 * MB + 17, 2 * MB + 4099, 4 * MB - 1];
  const total = sizes.reduce((a, b) => a + b, 0);
  const started = performance.now();
  const results = await Promise.all(sizes.map((size) => get(proxy.host, `/v2/c/blobs/x?size=${size}`)));
  const seconds = (performance.now() - started) / 1000;
  results.forEach((r, i) => {
    assert.equal(r.body.length, sizes[i], `response ${i} length`);
    assert.equal(sha(r.body), sha(up.bodyOf(sizes[i]!)), `response ${i} content`);
  });
  const rate = total / seconds;
  assert.ok(rate <= 8 * MB * 1.03, `shared rate ${(rate / MB).toFixed(2)} MB/s exceeds the cap`);
  assert.ok(rate >= 8 * MB * 0.75, `shared rate ${(rate / MB).toFixed(2)} MB/s is far below the cap`);
  const c = proxy.counters();
  assert.equal(c.requests, 4);
  assert.equal(c.bytes, total);
  proxy.reset();
  assert.deepEqual(proxy.counters(), { requests: 0, blobRequests: 0, bytes: 0, blobBytes: 0 });
});

test('status, headers and ranges pass through; blob GETs are counted as such', async (t) => {
  const up = await startUpstream(t);
  const proxy = await startThrottleProxy({ upstream: up.host, latencyMs: 0, bytesPerSecond: 50 * MB });
  t.after(() => proxy.close());
  const r = await get(proxy.host, `${BLOB}`, { range: 'bytes=10-19' });
  assert.equal(r.status, 206);
  assert.equal(r.headers['x-upstream'], 'yes');
  // size=0 without the query: an empty body, so the range is empty too.
  assert.equal(r.body.length, 0);
  const r2 = await get(proxy.host, `/v2/bench/x/blobs/sha256:${'cd'.repeat(32)}?size=1000`, { range: 'bytes=100-199' });
  assert.equal(r2.status, 206);
  assert.equal(r2.headers['content-range'], 'bytes 100-199/1000');
  assert.deepEqual(r2.body, up.bodyOf(1000).subarray(100, 200));
  assert.deepEqual(proxy.counters(), { requests: 2, blobRequests: 2, bytes: 100, blobBytes: 100 });
});

test('the limiter never lets more than rate x time + burst through', async () => {
  const limiter = new BandwidthLimiter(2 * MB, 4);
  const started = performance.now();
  let sent = 0;
  while (performance.now() - started < 1200) {
    await limiter.take(16 * 1024);
    sent += 16 * 1024;
    const elapsed = (performance.now() - started) / 1000;
    assert.ok(sent <= 2 * MB * elapsed + 2 * MB * 0.004 + 16 * 1024, `${sent} bytes after ${elapsed.toFixed(3)} s`);
  }
  const seconds = (performance.now() - started) / 1000;
  assert.ok(sent / seconds >= 2 * MB * 0.8, `only ${(sent / seconds / MB).toFixed(2)} MB/s`);
});
