// Upload protocol of the registry store, recorded by a fake registry on 127.0.0.1: HEAD first, POST then
// PUT with `&digest=` appended to a Location that has a query, chunked PATCHes with `START-END` ranges
// following each new Location, DELETE instead of PUT when the content does not match, cross-repository
// mount answers 201 and 202, and the manifest PUT's Docker-Content-Digest check.
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { ContentVerificationError, RegistryError } from '../../src/fetch/errors.js';
import { RegistryStore } from '../../src/fetch/registry.js';
import { MEDIA_TYPE, type Descriptor } from '../../src/oci/types.js';
import { sha256Digest } from '../../src/util/digest.js';

interface Recorded {
  method: string;
  path: string;
  query: URLSearchParams;
  contentRange: string | undefined;
  contentType: string | undefined;
  body: Buffer;
}

interface FakeUploadRegistry {
  host: string;
  requests: Recorded[];
  stored: Map<string, Buffer>;
}

/** Registry with upload sessions; `mountable` digests are mounted (201), others get 202 with a session. */
async function startUploadRegistry(t: TestContext, options: { mountable?: string[]; manifestDigest?: string } = {}): Promise<FakeUploadRegistry> {
  const fake: FakeUploadRegistry = { host: '', requests: [], stored: new Map() };
  const sessions = new Map<string, Buffer[]>();
  let nextSession = 0;
  const handle = (req: IncomingMessage, res: ServerResponse, body: Buffer): void => {
    const url = new URL(req.url ?? '/', 'http://x');
    fake.requests.push({
      method: req.method ?? '',
      path: url.pathname,
      query: url.searchParams,
      contentRange: req.headers['content-range'],
      contentType: req.headers['content-type'],
      body,
    });
    const end = (status: number, headers: Record<string, string> = {}): void => {
      res.writeHead(status, { 'content-length': '0', ...headers });
      res.end();
    };
    const blob = /^\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url.pathname);
    if (req.method === 'HEAD' && blob) {
      const stored = fake.stored.get(blob[2]!);
      return stored ? end(200, { 'content-length': String(stored.length) }) : end(404);
    }
    if (req.method === 'POST' && url.pathname === '/v2/r/blobs/uploads/') {
      const mount = url.searchParams.get('mount');
      if (mount && options.mountable?.includes(mount)) return end(201, { 'docker-content-digest': mount, location: `/v2/r/blobs/${mount}` });
      const id = `s${nextSession++}`;
      sessions.set(id, []);
      return end(202, { location: `http://${fake.host}/v2/r/blobs/uploads/${id}?_state=step0`, range: '0-0' });
    }
    const session = /^\/v2\/r\/blobs\/uploads\/(s\d+)$/.exec(url.pathname);
    if (session && sessions.has(session[1]!)) {
      const parts = sessions.get(session[1]!)!;
      const step = Number(url.searchParams.get('_state')!.slice(4));
      if (step !== parts.length) return end(404);
      if (req.method === 'PATCH') {
        parts.push(body);
        const total = parts.reduce((n, p) => n + p.length, 0);
        return end(202, { location: `/v2/r/blobs/uploads/${session[1]}?_state=step${parts.length}`, range: `0-${total - 1}` });
      }
      if (req.method === 'PUT') {
        const content = Buffer.concat([...parts, body]);
        const digest = url.searchParams.get('digest')!;
        if (sha256Digest(content) !== digest) return end(400);
        fake.stored.set(digest, content);
        sessions.delete(session[1]!);
        return end(201, { 'docker-content-digest': digest, location: `/v2/r/blobs/${digest}` });
      }
      if (req.method === 'DELETE') {
        sessions.delete(session[1]!);
        return end(204);
      }
    }
    if (req.method === 'HEAD' && url.pathname.startsWith('/v2/r/manifests/')) return end(404);
    if (req.method === 'PUT' && url.pathname.startsWith('/v2/r/manifests/')) {
      return end(201, { 'docker-content-digest': options.manifestDigest ?? sha256Digest(body) });
    }
    end(405);
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => handle(req, res, Buffer.concat(chunks)));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  fake.host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return fake;
}

function blobOf(size: number, fill: number): { data: Buffer; desc: Descriptor } {
  const data = Buffer.alloc(size, fill);
  for (let i = 0; i < size; i += 97) data[i] = i & 0xff;
  return { data, desc: { mediaType: MEDIA_TYPE.erofsZstd, digest: sha256Digest(data), size } };
}

const summary = (fake: FakeUploadRegistry): string[] =>
  fake.requests.map((r) => `${r.method} ${r.path.replace(/sha256:[0-9a-f]{64}/, 'D')}${r.contentRange ? ` [${r.contentRange}]` : ''}`);

test('small blobs: HEAD, POST, then one PUT with &digest= after the existing query', async (t) => {
  const fake = await startUploadRegistry(t);
  const store = new RegistryStore(`${fake.host}/r:v1`);
  t.after(() => store.close());
  const { data, desc } = blobOf(1000, 1);
  await store.pushBlob(desc, { bytes: data });
  assert.deepEqual(summary(fake), ['HEAD /v2/r/blobs/D', 'POST /v2/r/blobs/uploads/', 'PUT /v2/r/blobs/uploads/s0']);
  const put = fake.requests[2]!;
  assert.equal(put.query.get('_state'), 'step0');
  assert.equal(put.query.get('digest'), desc.digest);
  assert.equal(put.contentType, 'application/octet-stream');
  assert.deepEqual(put.body, data);
  assert.deepEqual(fake.stored.get(desc.digest), data);
  // Present now: a second push only asks.
  await store.pushBlob(desc, { bytes: data });
  assert.equal(fake.requests.length, 4);
});

test('large blobs: PATCH chunks with START-END ranges, each to the newest Location, then an empty PUT', async (t) => {
  const fake = await startUploadRegistry(t);
  const store = new RegistryStore(`${fake.host}/r:v1`, { monolithicUploadMaxBytes: 2000, uploadChunkBytes: 1000 });
  t.after(() => store.close());
  const { data, desc } = blobOf(2500, 2);
  await store.pushBlob(desc, { stream: async () => Readable.from([data.subarray(0, 10), data.subarray(10, 1999), data.subarray(1999)]) });
  assert.deepEqual(summary(fake), [
    'HEAD /v2/r/blobs/D',
    'POST /v2/r/blobs/uploads/',
    'PATCH /v2/r/blobs/uploads/s0 [0-999]',
    'PATCH /v2/r/blobs/uploads/s0 [1000-1999]',
    'PATCH /v2/r/blobs/uploads/s0 [2000-2499]',
    'PUT /v2/r/blobs/uploads/s0',
  ]);
  assert.deepEqual(
    fake.requests.slice(2).map((r) => r.query.get('_state')),
    ['step0', 'step1', 'step2', 'step3'],
  );
  assert.equal(fake.requests[5]!.body.length, 0);
  assert.deepEqual(fake.stored.get(desc.digest), data);
});

test('content that does not hash to the digest is never committed: DELETE instead of PUT', async (t) => {
  const fake = await startUploadRegistry(t);
  const store = new RegistryStore(`${fake.host}/r:v1`, { monolithicUploadMaxBytes: 2000, uploadChunkBytes: 1000 });
  t.after(() => store.close());
  const { desc } = blobOf(2500, 3);
  const wrong = blobOf(2500, 4).data;
  await assert.rejects(store.pushBlob(desc, { bytes: wrong }), (err: unknown) => err instanceof ContentVerificationError && err.kind === 'digest');
  assert.deepEqual(summary(fake).slice(-2), ['PATCH /v2/r/blobs/uploads/s0 [2000-2499]', 'DELETE /v2/r/blobs/uploads/s0']);
  assert.equal(fake.requests.at(-1)!.query.get('_state'), 'step3', 'the upload is cancelled at its newest Location');
  // Too long and too short content fail on size; small content fails before anything is uploaded.
  await assert.rejects(store.pushBlob(desc, { bytes: Buffer.concat([wrong, Buffer.from('x')]) }), (err: unknown) => err instanceof ContentVerificationError && err.kind === 'size');
  const small = blobOf(100, 5);
  await assert.rejects(store.pushBlob(small.desc, { bytes: blobOf(100, 6).data }), ContentVerificationError);
  assert.ok(!fake.requests.some((r) => r.method === 'PUT'));
  assert.equal(fake.stored.size, 0);
});

test('cross-repository mount: 201 is done, 202 continues with a normal upload', async (t) => {
  const mounted = blobOf(3000, 7);
  const fake = await startUploadRegistry(t, { mountable: [mounted.desc.digest] });
  const store = new RegistryStore(`${fake.host}/r:v1`);
  t.after(() => store.close());
  await store.pushBlob(mounted.desc, { stream: () => Promise.reject(new Error('not to be read')) }, { crossMountFrom: `${fake.host}/other/repo` });
  assert.deepEqual(summary(fake), ['HEAD /v2/r/blobs/D', 'POST /v2/r/blobs/uploads/']);
  assert.equal(fake.requests[1]!.query.get('mount'), mounted.desc.digest);
  assert.equal(fake.requests[1]!.query.get('from'), 'other/repo');

  const uploaded = blobOf(3000, 8);
  await store.pushBlob(uploaded.desc, { bytes: uploaded.data }, { crossMountFrom: 'other/repo' });
  assert.deepEqual(summary(fake).slice(2), ['HEAD /v2/r/blobs/D', 'POST /v2/r/blobs/uploads/', 'PUT /v2/r/blobs/uploads/s0']);
  assert.equal(fake.requests[3]!.query.get('from'), 'other/repo', 'a bare repository is on the same registry');
  assert.deepEqual(fake.stored.get(uploaded.desc.digest), uploaded.data);

  // A source on another registry cannot be mounted: plain upload without a mount attempt.
  const third = blobOf(10, 9);
  await store.pushBlob(third.desc, { bytes: third.data }, { crossMountFrom: 'elsewhere.example.com/x' });
  assert.ok(!fake.requests.at(-2)!.query.has('mount'));
});

test('pushManifest PUTs to the tag, or by digest without one, and checks Docker-Content-Digest', async (t) => {
  const fake = await startUploadRegistry(t);
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config: {}, layers: [] }));
  const digest = sha256Digest(bytes);
  const tagged = new RegistryStore(`${fake.host}/r:v2`);
  t.after(() => tagged.close());
  assert.deepEqual(await tagged.pushManifest(MEDIA_TYPE.ociManifest, bytes), { mediaType: MEDIA_TYPE.ociManifest, digest, size: bytes.length });
  const untagged = new RegistryStore(`${fake.host}/r@sha256:${'1'.repeat(64)}`);
  t.after(() => untagged.close());
  await untagged.pushManifest(MEDIA_TYPE.ociManifest, bytes);
  assert.deepEqual(
    fake.requests.map((r) => [r.method, r.path, r.contentType]),
    [
      ['PUT', '/v2/r/manifests/v2', MEDIA_TYPE.ociManifest],
      ['PUT', `/v2/r/manifests/${digest}`, MEDIA_TYPE.ociManifest],
    ],
  );

  const liar = await startUploadRegistry(t, { manifestDigest: `sha256:${'2'.repeat(64)}` });
  const store = new RegistryStore(`${liar.host}/r:v1`);
  t.after(() => store.close());
  await assert.rejects(store.pushManifest(MEDIA_TYPE.ociManifest, bytes), (err: unknown) => err instanceof RegistryError && /registry stored sha256:2222/.test(err.message));
});

test('pushBlob of a manifest descriptor PUTs it as a manifest by digest', async (t) => {
  const fake = await startUploadRegistry(t);
  const store = new RegistryStore(`${fake.host}/r:v1`);
  t.after(() => store.close());
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config: {}, layers: [] }));
  const desc: Descriptor = { mediaType: MEDIA_TYPE.ociManifest, digest: sha256Digest(bytes), size: bytes.length };
  await store.pushBlob(desc, { bytes });
  assert.deepEqual(
    fake.requests.map((r) => [r.method, r.path, r.contentType]),
    [
      ['HEAD', `/v2/r/manifests/${desc.digest}`, undefined],
      ['PUT', `/v2/r/manifests/${desc.digest}`, MEDIA_TYPE.ociManifest],
    ],
  );
  assert.deepEqual(fake.requests[1]!.body, bytes);
  await assert.rejects(store.pushBlob(desc, { bytes: Buffer.from(bytes.toString().replace('2', '3')) }), ContentVerificationError);
  assert.equal(fake.requests.length, 3, 'wrong manifest bytes are not sent');
});
