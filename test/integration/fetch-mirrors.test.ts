// Mirrors and TLS from a containerd-style hosts directory, against the real distribution registry: fault
// proxies stand in for mirrors. A dead mirror is skipped for the next one (which serves manifests and blobs,
// with ?ns=<registry>); a mirror answering 404 for blobs falls back to the next endpoint; a mirror without the
// "resolve" capability is not asked for manifests; an HTTPS endpoint with a private CA fails verification
// without `ca`, works with `ca` (relative to the host directory) and with skip_verify.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { RegistryError } from '../../src/fetch/errors.js';
import { openImageStore } from '../../src/fetch/open.js';
import { RegistryStore } from '../../src/fetch/registry.js';
import { MEDIA_TYPE, type Descriptor } from '../../src/oci/types.js';
import { sha256Digest } from '../../src/util/digest.js';
import { startFaultProxy, type FaultProxy } from '../helpers/faultproxy.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';

const run = promisify(execFile);
const REPO = 'mirrors/app';
const LAYER = randomBytes(256 * 1024);
const LAYER_DESC: Descriptor = { mediaType: MEDIA_TYPE.ociLayerTar, digest: sha256Digest(LAYER), size: LAYER.length };
const CONFIG = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [LAYER_DESC.digest] } }));
const CONFIG_DESC: Descriptor = { mediaType: MEDIA_TYPE.ociConfig, digest: sha256Digest(CONFIG), size: CONFIG.length };
const MANIFEST = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config: CONFIG_DESC, layers: [LAYER_DESC] }));
const RANGE_START = 1000;
const RANGE_END = 70_000;

let registry: TestRegistry;
const root = mkdtempSync(join(tmpdir(), 'fetch-mirrors-'));

before(async () => {
  registry = await startRegistry();
  const direct = openImageStore(`${registry.host}/${REPO}:v1`, { credentials: 'none' });
  try {
    await direct.pushBlob(LAYER_DESC, { bytes: LAYER });
    await direct.pushBlob(CONFIG_DESC, { bytes: CONFIG });
    await direct.pushManifest(MEDIA_TYPE.ociManifest, MANIFEST);
  } finally {
    await direct.close();
  }
});

after(async () => {
  await registry.stop();
  rmSync(root, { recursive: true, force: true });
});

/** A hosts directory with `<registry>/hosts.toml` holding `text`; returns the directory. */
function hostsDir(text: string, files: Record<string, string> = {}): string {
  const dir = mkdtempSync(join(root, 'hosts-'));
  const hostDir = join(dir, registry.host);
  mkdirSync(hostDir);
  writeFileSync(join(hostDir, 'hosts.toml'), text);
  for (const [name, content] of Object.entries(files)) writeFileSync(join(hostDir, name), content);
  return dir;
}

async function proxyFor(t: TestContext): Promise<FaultProxy> {
  const proxy = await startFaultProxy({ upstream: registry.host });
  t.after(() => proxy.close());
  return proxy;
}

function storeWith(t: TestContext, dir: string): RegistryStore {
  const store = openImageStore(`${registry.host}/${REPO}:v1`, { credentials: 'none', hostsDir: dir });
  assert.ok(store instanceof RegistryStore);
  t.after(() => store.close());
  return store;
}

async function resolveAndRead(store: RegistryStore): Promise<void> {
  const resolved = await store.resolve();
  assert.equal(resolved.descriptor.digest, sha256Digest(MANIFEST));
  assert.deepEqual(await store.fetchRange(LAYER_DESC, RANGE_START, RANGE_END), LAYER.subarray(RANGE_START, RANGE_END));
}

function count(proxy: FaultProxy, kind: 'manifests' | 'blobs'): number {
  return proxy.log.filter((r) => r.url.startsWith(`/v2/${REPO}/${kind}/`)).length;
}

test('a dead mirror is skipped; the working mirror serves manifests and blobs with ?ns=<registry>', async (t) => {
  const dead = await proxyFor(t);
  await dead.stopAccepting();
  const good = await proxyFor(t);
  const server = await proxyFor(t);
  const dir = hostsDir(`server = "http://${server.host}"
[host."http://${dead.host}"]
[host."http://${good.host}"]
  capabilities = ["pull", "resolve"]
`);
  const store = storeWith(t, dir);
  assert.deepEqual(
    store.registryEndpoints.map((e) => e.origin),
    [`http://${dead.host}`, `http://${good.host}`, `http://${server.host}`],
  );
  await resolveAndRead(store);
  assert.ok(count(good, 'manifests') >= 1, 'manifest from the working mirror');
  assert.ok(count(good, 'blobs') >= 1, 'blob from the working mirror');
  assert.equal(server.requests, 0, 'the server is not asked');
  assert.ok(good.log.every((r) => r.url.includes(`ns=${encodeURIComponent(registry.host)}`)), 'mirror requests carry ns');
  assert.ok(store.stats.endpointFallbacks >= 2, 'fell back from the dead mirror');
});

test('a mirror answering 404 for blobs falls back to the next endpoint', async (t) => {
  const partial = await proxyFor(t);
  partial.setFaults([{ kind: 'status', status: 404, path: /\/blobs\//, body: '{"errors":[{"code":"BLOB_UNKNOWN","message":"not here"}]}' }]);
  const server = await proxyFor(t);
  const store = storeWith(t, hostsDir(`server = "http://${server.host}"\n[host."http://${partial.host}"]\n`));
  await resolveAndRead(store);
  assert.ok(count(partial, 'manifests') >= 1, 'manifest from the mirror');
  assert.ok(count(partial, 'blobs') >= 1, 'blob asked from the mirror first');
  assert.ok(count(server, 'blobs') >= 1, 'blob then from the server');
  assert.equal(count(server, 'manifests'), 0);
});

test('a mirror without "resolve" is not used for manifests, only for blobs', async (t) => {
  const pullOnly = await proxyFor(t);
  const server = await proxyFor(t);
  const store = storeWith(t, hostsDir(`server = "http://${server.host}"\n[host."http://${pullOnly.host}"]\n  capabilities = ["pull"]\n`));
  await resolveAndRead(store);
  assert.equal(count(pullOnly, 'manifests'), 0);
  assert.ok(count(server, 'manifests') >= 1);
  assert.ok(count(pullOnly, 'blobs') >= 1);
  assert.equal(count(server, 'blobs'), 0);
});

test('a 404 from the server itself is not hidden: a missing blob is an error from the last endpoint', async (t) => {
  const mirror = await proxyFor(t);
  const server = await proxyFor(t);
  const store = storeWith(t, hostsDir(`server = "http://${server.host}"\n[host."http://${mirror.host}"]\n`));
  const missing = Buffer.from('not pushed');
  const desc: Descriptor = { mediaType: 'application/octet-stream', digest: sha256Digest(missing), size: missing.length };
  await assert.rejects(store.fetchBlob(desc), (err: Error) => err instanceof RegistryError && err.status === 404 && err.url.includes(server.host));
  assert.ok(count(mirror, 'blobs') >= 1);
});

/** Makes a CA and a certificate for 127.0.0.1 signed by it; returns their PEM texts. */
async function makeCertificates(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const p = (name: string): string => join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await run('openssl', ['req', '-x509', ...ec, '-keyout', p('ca.key'), '-out', p('ca.pem'), '-days', '2', '-subj', '/CN=erofs-lazy test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  await run('openssl', ['req', ...ec, '-keyout', p('server.key'), '-out', p('server.csr'), '-subj', '/CN=127.0.0.1']);
  writeFileSync(p('ext.cnf'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  await run('openssl', ['x509', '-req', '-in', p('server.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'), '-CAcreateserial', '-out', p('server.pem'), '-days', '2', '-extfile', p('ext.cnf')]);
  return { ca: readFileSync(p('ca.pem'), 'utf8'), cert: readFileSync(p('server.pem'), 'utf8'), key: readFileSync(p('server.key'), 'utf8') };
}

/** An HTTPS reverse proxy on 127.0.0.1 to the registry. */
async function startTlsProxy(t: TestContext, cert: string, key: string): Promise<string> {
  const [upstreamHost, upstreamPort] = registry.host.split(':');
  const server: HttpsServer = createHttpsServer({ cert, key }, (req, res) => {
    const upstream = httpRequest({ host: upstreamHost, port: Number(upstreamPort), method: req.method, path: req.url, headers: { ...req.headers, host: registry.host } }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => {
    server.closeAllConnections();
    server.close();
  });
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

test('TLS per endpoint: a private CA fails verification without ca, works with ca and with skip_verify', async (t) => {
  const certDir = mkdtempSync(join(root, 'certs-'));
  const { ca, cert, key } = await makeCertificates(certDir);
  const tlsHost = await startTlsProxy(t, cert, key);

  const unverified = storeWith(t, hostsDir(`server = "https://${tlsHost}"\n`));
  await assert.rejects(unverified.resolve(), (err: Error) => {
    assert.ok(err instanceof RegistryError, String(err));
    assert.match(err.message, new RegExp(`${tlsHost.replace(/\./g, '\\.')}.*(certificate|self.signed|verify)`, 'i'));
    return true;
  });

  const withCa = storeWith(t, hostsDir(`server = "https://${tlsHost}"\nca = "ca.pem"\n`, { 'ca.pem': ca }));
  assert.equal(withCa.endpoint, `https://${tlsHost}`);
  await resolveAndRead(withCa);

  const skipping = storeWith(t, hostsDir(`server = "https://${tlsHost}"\nskip_verify = true\n`));
  await resolveAndRead(skipping);

  // As a mirror in front of a dead plain-HTTP server: the CA applies to the mirror endpoint.
  const dead = await proxyFor(t);
  await dead.stopAccepting();
  const mirrored = storeWith(t, hostsDir(`server = "http://${dead.host}"\n[host."https://${tlsHost}"]\n  ca = "ca.pem"\n`, { 'ca.pem': ca }));
  await resolveAndRead(mirrored);
});
