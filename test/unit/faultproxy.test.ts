// The fault-injecting test proxy against a real distribution registry on 127.0.0.1: plain forwarding
// (GET, HEAD, Range, uploads with Location rewriting, keep-alive) and every fault kind, including
// count-limited rules, the redirect target's Authorization bookkeeping and the unreachable modes.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Agent, request as httpRequest } from 'node:http';
import { after, before, test, type TestContext } from 'node:test';
import { startFaultProxy, type FaultProxy } from '../helpers/faultproxy.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';

const REPO = 'faultproxy/test';
const BLOB_SIZE = 64 * 1024;
const BLOB = randomBytes(BLOB_SIZE);
const DIGEST = `sha256:${createHash('sha256').update(BLOB).digest('hex')}`;
const BLOB_PATH = `/v2/${REPO}/blobs/${DIGEST}`;
const BLOBS_RE = /^\/v2\/.+\/blobs\//;
const GENEROUS_MS = 15_000;

let registry: TestRegistry;

async function pushBlob(host: string, bytes: Buffer): Promise<{ location: string; status: number }> {
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  const post = await fetch(`http://${host}/v2/${REPO}/blobs/uploads/`, { method: 'POST' });
  await post.arrayBuffer();
  assert.equal(post.status, 202);
  const location = post.headers.get('location');
  assert.ok(location);
  const put = await fetch(`${location}&digest=${digest}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream' },
    body: new Uint8Array(bytes),
  });
  await put.arrayBuffer();
  return { location, status: put.status };
}

async function proxyFor(t: TestContext): Promise<FaultProxy> {
  const proxy = await startFaultProxy({ upstream: registry.host });
  t.after(() => proxy.close());
  return proxy;
}

async function getBlob(proxy: FaultProxy, init: RequestInit = {}, path = BLOB_PATH): Promise<{ status: number; headers: Headers; body: Buffer }> {
  const res = await fetch(`http://${proxy.host}${path}`, { signal: AbortSignal.timeout(GENEROUS_MS), ...init });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

function differingOffsets(a: Buffer, b: Buffer): number[] {
  assert.equal(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) out.push(i);
  return out;
}

before(async () => {
  registry = await startRegistry();
  const { status } = await pushBlob(registry.host, BLOB);
  assert.equal(status, 201);
});

after(async () => {
  await registry?.stop();
});

test('forwards GET, HEAD and single Range requests unchanged and counts them', async (t) => {
  const proxy = await proxyFor(t);
  const full = await getBlob(proxy, { headers: { authorization: 'Basic dTpw' } });
  assert.equal(full.status, 200);
  assert.ok(full.body.equals(BLOB));
  assert.equal(full.headers.get('docker-content-digest'), DIGEST);

  const head = await fetch(`http://${proxy.host}${BLOB_PATH}`, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(head.headers.get('content-length'), String(BLOB_SIZE));

  const part = await getBlob(proxy, { headers: { range: 'bytes=100-1123' } });
  assert.equal(part.status, 206);
  assert.equal(part.headers.get('content-range'), `bytes 100-1123/${BLOB_SIZE}`);
  assert.ok(part.body.equals(BLOB.subarray(100, 1124)));

  assert.equal(proxy.requests, 3);
  assert.equal(proxy.pathCounts.get(BLOB_PATH), 3);
  assert.deepEqual(proxy.rangeHeaders, ['bytes=100-1123']);
  assert.equal(proxy.authorizationHeadersSeen, 1);
  assert.deepEqual(proxy.log.map((r) => r.fault), [undefined, undefined, undefined]);
});

test('streams uploads through the proxy and rewrites Location to the proxy', async (t) => {
  const proxy = await proxyFor(t);
  const bytes = randomBytes(10_000);
  const { location, status } = await pushBlob(proxy.host, bytes);
  assert.equal(status, 201);
  assert.ok(location.startsWith(`http://${proxy.host}/v2/${REPO}/blobs/uploads/`), location);
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  const back = await getBlob(proxy, {}, `/v2/${REPO}/blobs/${digest}`);
  assert.equal(back.status, 200);
  assert.ok(back.body.equals(bytes));
  assert.equal(proxy.log.filter((r) => r.method === 'PUT').length, 1);
});

test('keeps client connections alive between requests', async (t) => {
  const proxy = await proxyFor(t);
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  const [hostname, port] = proxy.host.split(':');
  const reused: boolean[] = [];
  for (let i = 0; i < 2; i++) {
    const body = await new Promise<Buffer>((resolve, reject) => {
      const req = httpRequest({ hostname, port: Number(port), path: BLOB_PATH, agent }, (res) => {
        reused.push(req.reusedSocket);
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve(Buffer.concat(chunks)));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
    assert.ok(body.equals(BLOB));
  }
  assert.deepEqual(reused, [false, true], 'the second request reuses the first socket');
  assert.equal(proxy.requests, 2);
});

test('drop-mid-body sends part of the body then cuts; count limits it to exactly N requests', async (t) => {
  const proxy = await proxyFor(t);
  proxy.setFaults([{ kind: 'drop-mid-body', method: 'GET', path: BLOBS_RE, afterBytes: 1000, count: 2 }]);
  // A non-blob path does not match and does not use up the count.
  const base = await fetch(`http://${proxy.host}/v2/`);
  await base.arrayBuffer();
  assert.equal(base.status, 200);
  for (let i = 0; i < 2; i++) {
    const res = await fetch(`http://${proxy.host}${BLOB_PATH}`, { signal: AbortSignal.timeout(GENEROUS_MS) });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-length'), String(BLOB_SIZE));
    await assert.rejects(res.arrayBuffer());
  }
  const third = await getBlob(proxy);
  assert.ok(third.body.equals(BLOB));
  assert.equal(proxy.appliedCount(0), 2);
  assert.deepEqual(proxy.log.map((r) => r.fault), [undefined, 'drop-mid-body', 'drop-mid-body', undefined]);
});

test('drop-mid-body delivers exactly the first N bytes before the cut', async (t) => {
  const proxy = await proxyFor(t);
  proxy.setFaults([{ kind: 'drop-mid-body', afterBytes: 777, count: 1 }]);
  const [hostname, port] = proxy.host.split(':');
  const result = await new Promise<{ bytes: Buffer; aborted: boolean }>((resolve, reject) => {
    const req = httpRequest({ hostname, port: Number(port), path: BLOB_PATH, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      let aborted = false;
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('aborted', () => (aborted = true));
      res.on('error', () => (aborted = true));
      res.on('close', () => resolve({ bytes: Buffer.concat(chunks), aborted: aborted || !res.complete }));
    });
    req.on('error', reject);
    req.end();
  });
  assert.equal(result.aborted, true);
  assert.ok(result.bytes.equals(BLOB.subarray(0, 777)));
});

test('stall without a time exceeds the client timeout; a timed stall only delays', async (t) => {
  const proxy = await proxyFor(t);
  proxy.setFaults([{ kind: 'stall', path: BLOBS_RE, count: 1 }]);
  await assert.rejects(fetch(`http://${proxy.host}${BLOB_PATH}`, { signal: AbortSignal.timeout(300) }), { name: 'TimeoutError' });

  proxy.setFaults([{ kind: 'stall', path: BLOBS_RE, ms: 300, count: 1 }]);
  const started = Date.now();
  const delayed = await getBlob(proxy);
  assert.ok(Date.now() - started >= 250, 'a 300 ms stall delays the answer');
  assert.ok(delayed.body.equals(BLOB));
  assert.equal(proxy.appliedCount(0), 1);
});

test('status answers 429 with Retry-After without contacting upstream, once', async (t) => {
  const proxy = await proxyFor(t);
  proxy.setFaults([{ kind: 'status', status: 429, headers: { 'retry-after': '1' }, path: BLOBS_RE, count: 1 }]);
  const limited = await getBlob(proxy);
  assert.equal(limited.status, 429);
  assert.equal(limited.headers.get('retry-after'), '1');
  assert.ok(limited.body.length > 0 && limited.body.length < 100);
  const ok = await getBlob(proxy);
  assert.equal(ok.status, 200);
  assert.ok(ok.body.equals(BLOB));

  proxy.setFaults([{ kind: 'status', status: 503, headers: { 'retry-after': '1' } }, { kind: 'status', status: 500 }]);
  const unavailable = await getBlob(proxy);
  assert.equal(unavailable.status, 503);
  assert.equal(proxy.appliedCount(1), 0, 'the first matching rule wins');
});

test('redirect answers 307 to the storage host, which serves the bytes and sees no Authorization', async (t) => {
  const proxy = await proxyFor(t);
  proxy.setFaults([{ kind: 'redirect', method: 'GET', path: BLOBS_RE }]);
  const manual = await fetch(`http://${proxy.host}${BLOB_PATH}?x=1`, { redirect: 'manual' });
  await manual.arrayBuffer();
  assert.equal(manual.status, 307);
  assert.equal(manual.headers.get('location'), `http://${proxy.storage.host}${BLOB_PATH}?x=1`);

  const followed = await getBlob(proxy, { headers: { authorization: 'Bearer secret', range: 'bytes=0-99' } });
  assert.equal(followed.status, 206);
  assert.ok(followed.body.equals(BLOB.subarray(0, 100)));
  assert.equal(proxy.authorizationHeadersSeen, 1);
  assert.equal(proxy.storage.requests, 1);
  assert.equal(proxy.storage.authorizationHeadersSeen, 0);
  assert.deepEqual(proxy.storage.rangeHeaders, ['bytes=0-99']);
  assert.equal(proxy.storage.pathCounts.get(BLOB_PATH), 1);
});

test('ignore-range forwards without Range so the whole blob comes back as 200', async (t) => {
  const proxy = await proxyFor(t);
  proxy.setFaults([{ kind: 'ignore-range', path: BLOBS_RE }]);
  const res = await getBlob(proxy, { headers: { range: 'bytes=10-19' } });
  assert.equal(res.status, 200);
  assert.ok(res.body.equals(BLOB));
  assert.deepEqual(proxy.rangeHeaders, ['bytes=10-19']);
});

test('refuse-multirange answers 400 to several ranges and lets single ranges through', async (t) => {
  const proxy = await proxyFor(t);
  proxy.setFaults([{ kind: 'refuse-multirange', path: BLOBS_RE }]);
  const multi = await getBlob(proxy, { headers: { range: 'bytes=0-9,100-109' } });
  assert.equal(multi.status, 400);
  const single = await getBlob(proxy, { headers: { range: 'bytes=0-9' } });
  assert.equal(single.status, 206);
  assert.ok(single.body.equals(BLOB.subarray(0, 10)));
  assert.equal(proxy.appliedCount(0), 1);
});

test('flip-bytes changes exactly one byte, at the given or a random offset', async (t) => {
  const proxy = await proxyFor(t);
  proxy.setFaults([{ kind: 'flip-bytes', path: BLOBS_RE, offset: 40_000, count: 1 }]);
  const fixed = await getBlob(proxy);
  assert.deepEqual(differingOffsets(fixed.body, BLOB), [40_000]);
  assert.equal(fixed.body[40_000], BLOB[40_000]! ^ 0xff);

  proxy.setFaults([{ kind: 'flip-bytes', path: BLOBS_RE, count: 1 }]);
  const random = await getBlob(proxy);
  const diff = differingOffsets(random.body, BLOB);
  assert.equal(diff.length, 1);
  assert.deepEqual(proxy.flips.map((f) => f.offset), [40_000, diff[0]]);

  const clean = await getBlob(proxy);
  assert.ok(clean.body.equals(BLOB));
});

test('slow throttles bodies to the given rate and keeps concurrent bodies intact', async (t) => {
  const proxy = await proxyFor(t);
  const rate = 128 * 1024; // 64 KiB at 128 KiB/s takes ~500 ms
  proxy.setFaults([{ kind: 'slow', path: BLOBS_RE, bytesPerSecond: rate }]);
  const started = Date.now();
  const one = await getBlob(proxy);
  const elapsed = Date.now() - started;
  assert.ok(one.body.equals(BLOB));
  assert.ok(elapsed >= 400, `took ${elapsed} ms`);
  assert.ok(elapsed < GENEROUS_MS);

  const ranges = [
    [0, BLOB_SIZE - 1],
    [1000, 40_999],
    [5, 60_004],
  ] as const;
  const results = await Promise.all(ranges.map(([a, b]) => getBlob(proxy, { headers: { range: `bytes=${a}-${b}` } })));
  for (const [i, [a, b]] of ranges.entries()) {
    assert.equal(results[i]!.status, 206);
    assert.ok(results[i]!.body.equals(BLOB.subarray(a, b + 1)), `range ${a}-${b} intact`);
  }
});

test('stopAccepting refuses connections until resumeAccepting', async (t) => {
  const proxy = await proxyFor(t);
  await proxy.stopAccepting();
  await assert.rejects(fetch(`http://${proxy.host}/v2/`), (err: Error & { cause?: { code?: string } }) => {
    assert.equal(err.cause?.code, 'ECONNREFUSED');
    return true;
  });
  await proxy.resumeAccepting();
  const res = await getBlob(proxy);
  assert.ok(res.body.equals(BLOB));
});

test('stopAccepting("reset") accepts and resets connections until resumeAccepting', async (t) => {
  const proxy = await proxyFor(t);
  const warm = await getBlob(proxy);
  assert.equal(warm.status, 200);
  await proxy.stopAccepting('reset');
  await assert.rejects(fetch(`http://${proxy.host}/v2/`, { signal: AbortSignal.timeout(GENEROUS_MS) }), (err: Error & { cause?: { code?: string } }) => {
    assert.notEqual(err.name, 'TimeoutError');
    return true;
  });
  assert.equal(proxy.requests, 1, 'the reset request never reached the HTTP layer');
  await proxy.resumeAccepting();
  const res = await getBlob(proxy);
  assert.ok(res.body.equals(BLOB));
});

test('clearFaults restores plain forwarding and close() ends stalled requests', async (t) => {
  const proxy = await startFaultProxy({ upstream: registry.host });
  let closed = false;
  t.after(async () => {
    if (!closed) await proxy.close();
  });
  proxy.setFaults([{ kind: 'status', status: 500 }]);
  proxy.clearFaults();
  assert.equal((await getBlob(proxy)).status, 200);
  proxy.resetCounters();
  assert.equal(proxy.requests, 0);
  assert.equal((await getBlob(proxy)).status, 200);

  proxy.setFaults([{ kind: 'stall' }]);
  const stalled = fetch(`http://${proxy.host}${BLOB_PATH}`, { signal: AbortSignal.timeout(GENEROUS_MS) });
  const outcome = stalled.then(
    () => 'answered',
    (err: Error) => err.name,
  );
  // Wait (bounded) until the stalled request has arrived, then close.
  for (let i = 0; i < 100 && proxy.requests < 2; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(proxy.requests, 2);
  await proxy.close();
  closed = true;
  assert.notEqual(await outcome, 'TimeoutError');
  assert.notEqual(await outcome, 'answered');
});
