// Registry client behaviour against a tiny node:http server on 127.0.0.1 that plays registry and token
// issuer: the anonymous bearer flow and its cache, Basic challenges, scheme choice, range answers a real
// registry may give (200 whole blob, 416 with a lying Content-Length, wrong Content-Range), content
// verification, redirects, timeouts, and secrets kept out of errors.
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test, type TestContext } from 'node:test';
import { ContentVerificationError, redactUrl, RegistryError } from '../../src/fetch/errors.js';
import { isLoopbackHost, registryScheme } from '../../src/fetch/http.js';
import { RegistryStore } from '../../src/fetch/registry.js';
import { MEDIA_TYPE, type Descriptor } from '../../src/oci/types.js';
import { sha256Digest } from '../../src/util/digest.js';

const TOKEN = 'tok-3f9a-very-secret';
const REPO = 'team/app';

type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => void;

async function startServer(t: TestContext, handler: Handler): Promise<string> {
  const server = createServer((req, res) => handler(req, res, new URL(req.url ?? '/', 'http://x')));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const bytes = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': bytes.length, ...headers });
  res.end(bytes);
}

const blobBytes = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7919) & 0xff));
const blob: Descriptor = { mediaType: MEDIA_TYPE.erofsZstd, digest: sha256Digest(blobBytes), size: blobBytes.length };
const configBytes = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
const config: Descriptor = { mediaType: MEDIA_TYPE.ociConfig, digest: sha256Digest(configBytes), size: configBytes.length };
const manifestBytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config, layers: [blob] }));

interface FakeRegistry {
  host: string;
  issuerHits: number;
  issuerQueries: URLSearchParams[];
  authHeaders: Array<string | undefined>;
}

/**
 * A registry guarding /v2/team/app with bearer tokens from its own /token issuer. `issue` shapes the token
 * answer; `blobAnswer` can replace how the blob is served.
 */
async function startFakeRegistry(
  t: TestContext,
  options: { issue?: () => [number, unknown]; blobAnswer?: (req: IncomingMessage, res: ServerResponse) => void; acceptToken?: boolean } = {},
): Promise<FakeRegistry> {
  const fake: FakeRegistry = { host: '', issuerHits: 0, issuerQueries: [], authHeaders: [] };
  fake.host = await startServer(t, (req, res, url) => {
    if (url.pathname === '/token') {
      fake.issuerHits++;
      fake.issuerQueries.push(url.searchParams);
      const [status, body] = options.issue?.() ?? [200, { token: TOKEN, expires_in: 300 }];
      json(res, status, body);
      return;
    }
    fake.authHeaders.push(req.headers.authorization);
    if (req.headers.authorization !== `Bearer ${TOKEN}` || options.acceptToken === false) {
      json(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }, {
        'www-authenticate': `Bearer realm="http://${fake.host}/token",service="fake-registry",scope="repository:${REPO}:pull"`,
      });
      return;
    }
    if (url.pathname === `/v2/${REPO}/manifests/v1`) {
      res.writeHead(200, { 'content-type': MEDIA_TYPE.ociManifest, 'content-length': manifestBytes.length, 'docker-content-digest': sha256Digest(manifestBytes) });
      res.end(req.method === 'HEAD' ? undefined : manifestBytes);
    } else if (url.pathname === `/v2/${REPO}/blobs/${config.digest}`) {
      res.writeHead(200, { 'content-length': configBytes.length });
      res.end(configBytes);
    } else if (url.pathname === `/v2/${REPO}/blobs/${blob.digest}`) {
      if (options.blobAnswer) options.blobAnswer(req, res);
      else {
        res.writeHead(200, { 'content-length': blobBytes.length });
        res.end(blobBytes);
      }
    } else {
      json(res, 404, { errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown to registry' }] });
    }
  });
  return fake;
}

test('anonymous bearer flow: 401 → token from the realm → retry, token cached per scope', async (t) => {
  const fake = await startFakeRegistry(t);
  const store = new RegistryStore(`${fake.host}/${REPO}:v1`);
  t.after(() => store.close());

  const resolved = await store.resolve();
  assert.equal(resolved.descriptor.digest, sha256Digest(manifestBytes));
  assert.equal(fake.issuerHits, 1);
  assert.equal(fake.issuerQueries[0]!.get('service'), 'fake-registry');
  assert.deepEqual(fake.issuerQueries[0]!.getAll('scope'), [`repository:${REPO}:pull`]);
  assert.deepEqual(fake.authHeaders, [undefined, `Bearer ${TOKEN}`]);

  // Later requests of the same scope reuse the token, concurrent ones too.
  assert.deepEqual(await store.fetchBlob(config), configBytes);
  await Promise.all([store.resolve(), store.fetchBlob(config), store.hasBlob(blob), store.fetchRange(blob, 5, 10)]);
  assert.equal(fake.issuerHits, 1);
  assert.ok(fake.authHeaders.slice(2).every((h) => h === `Bearer ${TOKEN}`));
});

test('concurrent first requests share a single issuer request', async (t) => {
  const fake = await startFakeRegistry(t);
  const store = new RegistryStore(`${fake.host}/${REPO}:v1`);
  t.after(() => store.close());
  const results = await Promise.all(Array.from({ length: 5 }, () => store.fetchBlob(config)));
  assert.ok(results.every((r) => r.equals(configBytes)));
  assert.equal(fake.issuerHits, 1);
});

test('cached tokens expire after expires_in (default 60 s) and access_token is accepted', async (t) => {
  let clock = 1_000_000;
  const fake = await startFakeRegistry(t, { issue: () => [200, { access_token: TOKEN }] });
  const store = new RegistryStore(`${fake.host}/${REPO}:v1`, { now: () => clock });
  t.after(() => store.close());
  await store.fetchBlob(config);
  clock += 50_000;
  await store.fetchBlob(config);
  assert.equal(fake.issuerHits, 1, 'still valid after 50 s');
  clock += 11_000;
  await store.fetchBlob(config);
  assert.equal(fake.issuerHits, 2, 'refetched after 61 s');
});

test('a token the registry keeps refusing gives a 401 RegistryError without the token', async (t) => {
  const fake = await startFakeRegistry(t, { acceptToken: false });
  const store = new RegistryStore(`${fake.host}/${REPO}:v1`);
  t.after(() => store.close());
  await assert.rejects(store.resolve(), (err: unknown) => {
    assert.ok(err instanceof RegistryError);
    assert.equal(err.status, 401);
    assert.equal(err.code, 'UNAUTHORIZED');
    assert.equal(err.operation, 'resolve manifest');
    assert.ok(!err.message.includes(TOKEN) && !JSON.stringify(err).includes(TOKEN));
    return true;
  });
  assert.equal(fake.issuerHits, 1, 'retried once, not in a loop');
});

test('issuer failures are RegistryErrors naming the issuer without its query', async (t) => {
  const fake = await startFakeRegistry(t, { issue: () => [403, { errors: [{ code: 'DENIED', message: 'no anonymous access' }] }] });
  const store = new RegistryStore(`${fake.host}/${REPO}:v1`);
  t.after(() => store.close());
  await assert.rejects(store.resolve(), (err: unknown) => {
    assert.ok(err instanceof RegistryError);
    assert.equal(err.status, 403);
    assert.equal(err.code, 'DENIED');
    assert.equal(err.url, `http://${fake.host}/token?…`);
    assert.ok(!err.message.includes('scope='));
    return true;
  });

  const noToken = await startFakeRegistry(t, { issue: () => [200, { nothing: true }] });
  const store2 = new RegistryStore(`${noToken.host}/${REPO}:v1`);
  t.after(() => store2.close());
  await assert.rejects(store2.resolve(), /without a token/);
});

test('a Basic challenge without credentials says the registry needs credentials', async (t) => {
  const host = await startServer(t, (_req, res) => json(res, 401, { errors: [{ code: 'UNAUTHORIZED' }] }, { 'www-authenticate': 'Basic realm="private"' }));
  const store = new RegistryStore(`${host}/private/img:1`);
  t.after(() => store.close());
  await assert.rejects(store.resolve(), (err: unknown) => err instanceof RegistryError && err.status === 401 && /needs credentials/.test(err.message) && err.message.includes(host));
});

test('HTTPS unless plain HTTP is asked for or the host is loopback', () => {
  for (const host of ['127.0.0.1:5000', '127.8.9.10', 'localhost', 'localhost:5000', '[::1]:5000', '[::1]', 'foo.localhost:80']) {
    assert.ok(isLoopbackHost(host), host);
    assert.equal(registryScheme(host), 'http', host);
  }
  for (const host of ['registry.example.com', 'ghcr.io:443', '10.0.0.1:5000', '128.0.0.1', '[fe80::1]:5000', 'localhost.example.com', '127.example.com']) {
    assert.ok(!isLoopbackHost(host), host);
    assert.equal(registryScheme(host), 'https', host);
    assert.equal(registryScheme(host, true), 'http', host);
  }
  assert.equal(new RegistryStore('ghcr.io/o/r:1').endpoint, 'https://ghcr.io');
  assert.equal(new RegistryStore('busybox').endpoint, 'https://registry-1.docker.io');
  assert.equal(new RegistryStore('registry.example.com:5000/o/r', { plainHttp: true }).endpoint, 'http://registry.example.com:5000');
  assert.equal(new RegistryStore('localhost:5000/r').endpoint, 'http://localhost:5000');
  assert.equal(new RegistryStore('[::1]:5000/r').endpoint, 'http://[::1]:5000');
});

test('redactUrl drops user info and query strings', () => {
  assert.equal(redactUrl('https://user:pass@registry.example.com/v2/x/blobs/uploads/abc?_state=SECRET&digest=d'), 'https://registry.example.com/v2/x/blobs/uploads/abc?…');
  const err = new RegistryError({ operation: 'upload', url: 'http://u:p4ss@h:1/v2/?_state=zzz', status: 500 });
  assert.ok(!err.message.includes('p4ss') && !err.message.includes('zzz') && !err.url.includes('p4ss'));
});

test('fetchRange: a 200 answer (Range ignored) is cut at the end of the range', async (t) => {
  let served = 0;
  let aborted = false;
  const fake = await startFakeRegistry(t, {
    blobAnswer: (req, res) => {
      served++;
      res.writeHead(200, { 'content-length': blobBytes.length });
      // Dribble the blob so the client can hang up before it is all sent.
      let offset = 0;
      const step = (): void => {
        if (offset >= blobBytes.length || res.destroyed) return;
        res.write(blobBytes.subarray(offset, offset + 16_384), () => setImmediate(step));
        offset += 16_384;
        if (offset >= blobBytes.length) res.end();
      };
      res.on('close', () => {
        if (!res.writableFinished) aborted = true;
      });
      step();
      void req;
    },
  });
  const store = new RegistryStore(`${fake.host}/${REPO}:v1`);
  t.after(() => store.close());
  assert.deepEqual(await store.fetchRange(blob, 10, 20), blobBytes.subarray(10, 20));
  assert.deepEqual(await store.fetchRange(blob, 20_000, 40_000), blobBytes.subarray(20_000, 40_000));
  assert.deepEqual(await store.fetchRange(blob, blob.size - 1, blob.size), blobBytes.subarray(blob.size - 1));
  assert.equal(served, 3);
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.ok(aborted, 'the client hung up before the whole blob was sent');
});

test('fetchRange: 416 fails at once without reading its lying body', async (t) => {
  const fake = await startFakeRegistry(t, {
    blobAnswer: (_req, res) => {
      res.writeHead(416, { 'content-range': `bytes */${blob.size}`, 'content-length': blob.size, 'content-type': 'text/plain' });
      res.write('requested range not satisfiable\n'); // 33 bytes, then nothing more: the socket stays open
    },
  });
  const store = new RegistryStore(`${fake.host}/${REPO}:v1`, { timeouts: { bodyMs: 20_000 } });
  t.after(() => store.close());
  const started = Date.now();
  await assert.rejects(store.fetchRange(blob, 0, 10), (err: unknown) => err instanceof RegistryError && err.status === 416 && /not satisfiable/.test(err.message));
  assert.ok(Date.now() - started < 2_000, 'no wait for the body');
});

test('fetchRange: wrong Content-Range or a short 206 are rejected', async (t) => {
  let mode: 'shifted' | 'short' | 'long' = 'shifted';
  const fake = await startFakeRegistry(t, {
    blobAnswer: (req, res) => {
      const m = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '')!;
      const start = Number(m[1]);
      const end = Number(m[2]);
      if (mode === 'shifted') {
        const body = blobBytes.subarray(start + 1, end + 2);
        res.writeHead(206, { 'content-range': `bytes ${start + 1}-${end + 1}/${blob.size}`, 'content-length': body.length });
        res.end(body);
      } else {
        const body = mode === 'short' ? blobBytes.subarray(start, end) : blobBytes.subarray(start, end + 5);
        res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${blob.size}`, 'content-length': body.length });
        res.end(body);
      }
    },
  });
  const store = new RegistryStore(`${fake.host}/${REPO}:v1`);
  t.after(() => store.close());
  await assert.rejects(store.fetchRange(blob, 100, 200), (err: unknown) => err instanceof ContentVerificationError && err.kind === 'range');
  mode = 'short';
  await assert.rejects(store.fetchRange(blob, 100, 200), /got 99 of 100 bytes/);
  mode = 'long';
  await assert.rejects(store.fetchRange(blob, 100, 200), /longer than 100 bytes/);
  await assert.rejects(store.fetchRange(blob, 10, blob.size + 1), RangeError);
  await assert.rejects(store.fetchRange(blob, -1, 3), RangeError);
  await assert.rejects(store.fetchRange(blob, 5, 4), RangeError);
  assert.equal((await store.fetchRange(blob, 7, 7)).length, 0);
});

test('corrupt blob content: fetchBlob rejects and openBlob errors instead of ending', async (t) => {
  const corrupt = Buffer.from(blobBytes);
  corrupt[1234] ^= 0xff;
  const fake = await startFakeRegistry(t, {
    blobAnswer: (_req, res) => {
      res.writeHead(200, { 'content-length': corrupt.length });
      res.end(corrupt);
    },
  });
  const store = new RegistryStore(`${fake.host}/${REPO}:v1`);
  t.after(() => store.close());
  await assert.rejects(store.fetchBlob(blob), (err: unknown) => err instanceof ContentVerificationError && err.kind === 'digest');
  const stream = await store.openBlob(blob);
  let received = 0;
  await assert.rejects(
    (async () => {
      for await (const chunk of stream) received += (chunk as Buffer).length;
    })(),
    (err: unknown) => err instanceof ContentVerificationError && err.kind === 'digest',
  );
  assert.equal(received, corrupt.length, 'all bytes passed through, then the error');
  // A descriptor claiming another size fails on size.
  await assert.rejects(store.fetchBlob({ ...blob, size: blob.size - 1 }), (err: unknown) => err instanceof ContentVerificationError && err.kind === 'size');
});

test('blob redirects are followed without sending the token to the other origin', async (t) => {
  const storageHeaders: Array<string | undefined> = [];
  const storage = await startServer(t, (req, res) => {
    storageHeaders.push(req.headers.authorization);
    res.writeHead(200, { 'content-length': blobBytes.length });
    res.end(blobBytes);
  });
  const fake = await startFakeRegistry(t, {
    blobAnswer: (_req, res) => {
      res.writeHead(307, { location: `http://${storage.replace('127.0.0.1', 'localhost')}/storage/blob?X-Signature=abc`, 'content-length': 0 });
      res.end();
    },
  });
  const store = new RegistryStore(`${fake.host}/${REPO}:v1`);
  t.after(() => store.close());
  assert.deepEqual(await store.fetchBlob(blob), blobBytes);
  assert.deepEqual(storageHeaders, [undefined]);
});

test('a registry that never answers times out with a clear error', async (t) => {
  const host = await startServer(t, () => undefined);
  const store = new RegistryStore(`${host}/x:1`, { timeouts: { headersMs: 300 } });
  t.after(() => store.close());
  const started = Date.now();
  await assert.rejects(store.resolve(), (err: unknown) => err instanceof RegistryError && err.status === undefined && /timed out/.test(err.message) && err.message.includes(host));
  assert.ok(Date.now() - started < 3_000);
});

test('nobody listening: "unreachable" naming the host', async (t) => {
  const host = await startServer(t, () => undefined);
  const store = new RegistryStore(`${host.replace(/:\d+$/, ':1')}/x:1`);
  t.after(() => store.close());
  await assert.rejects(store.resolve(), (err: unknown) => err instanceof RegistryError && /registry 127\.0\.0\.1:1 is unreachable \(ECONNREFUSED\)/.test(err.message));
});

test('resolve checks manifest bytes against the pinned digest and Docker-Content-Digest, and follows Docker lists', async (t) => {
  const child = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.dockerManifest, config: { ...config, mediaType: MEDIA_TYPE.dockerConfig }, layers: [] }));
  const childDigest = sha256Digest(child);
  const list = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE.dockerManifestList,
      manifests: [
        { mediaType: MEDIA_TYPE.dockerManifest, digest: `sha256:${'e'.repeat(64)}`, size: 10, platform: { os: 'linux', architecture: 'ppc64le' } },
        { mediaType: MEDIA_TYPE.dockerManifest, digest: childDigest, size: child.length, platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
      ],
    }),
  );
  const accepts: string[] = [];
  const host = await startServer(t, (req, res, url) => {
    accepts.push(req.headers.accept ?? '');
    const send = (body: Buffer, type: string, digest?: string): void => {
      res.writeHead(200, { 'content-type': type, 'content-length': body.length, ...(digest ? { 'docker-content-digest': digest } : {}) });
      res.end(body);
    };
    if (url.pathname === '/v2/r/manifests/list') send(list, MEDIA_TYPE.dockerManifestList, sha256Digest(list));
    else if (url.pathname === '/v2/r/manifests/liar') send(manifestBytes, MEDIA_TYPE.ociManifest, `sha256:${'1'.repeat(64)}`);
    else if (url.pathname === `/v2/r/manifests/${childDigest}`) send(child, MEDIA_TYPE.dockerManifest);
    else if (url.pathname.startsWith('/v2/r/manifests/sha256:')) send(manifestBytes, MEDIA_TYPE.ociManifest);
    else json(res, 404, { errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }] });
  });
  const store = new RegistryStore(`${host}/r:list`, { platform: { os: 'linux', architecture: 'arm', variant: 'v7' } });
  t.after(() => store.close());
  const resolved = await store.resolve();
  assert.equal(resolved.descriptor.digest, childDigest);
  assert.equal(resolved.descriptor.mediaType, MEDIA_TYPE.dockerManifest);
  assert.equal(resolved.index?.descriptor.mediaType, MEDIA_TYPE.dockerManifestList);
  assert.equal(resolved.index?.descriptor.digest, sha256Digest(list));
  for (const accept of accepts) {
    for (const type of [MEDIA_TYPE.ociManifest, MEDIA_TYPE.ociIndex, MEDIA_TYPE.dockerManifest, MEDIA_TYPE.dockerManifestList]) assert.ok(accept.includes(type));
  }
  await assert.rejects(store.resolve({ platform: { os: 'linux', architecture: 'arm64' } }), /available: linux\/ppc64le, linux\/arm\/v7/);

  const opened = (ref: string): RegistryStore => {
    const s = new RegistryStore(ref);
    t.after(() => s.close());
    return s;
  };
  await assert.rejects(opened(`${host}/r:liar`).resolve(), (err: unknown) => err instanceof ContentVerificationError && /registry says sha256:1111/.test(err.message));
  const pinned = `sha256:${'4'.repeat(64)}`;
  await assert.rejects(opened(`${host}/r@${pinned}`).resolve(), (err: unknown) => err instanceof ContentVerificationError && err.digest === pinned);
  await assert.rejects(opened(`${host}/r:nope`).resolve(), (err: unknown) => err instanceof RegistryError && err.code === 'MANIFEST_UNKNOWN' && err.registryMessage === 'manifest unknown');
});
