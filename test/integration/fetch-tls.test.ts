// The registry client against the real distribution registry serving HTTPS and requiring client
// certificates (http.tls with clientcas), configured the containerd way: a hosts directory with
// `<host>/hosts.toml` giving `server`, `ca` and `client` (as [cert, key] pairs, a single PEM holding both, or a
// list of such files), `skip_verify`, and the same as a `[host."https://..."]` mirror. Refusals are quick,
// one-line errors naming the host and saying what in TLS failed; verification is on by default. Last, an
// image is converted on that registry and mounted lazily through it with --hosts-dir.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { RegistryError } from '../../src/fetch/errors.js';
import { loadRegistryEndpoints } from '../../src/fetch/hosts.js';
import { openImageStore } from '../../src/fetch/open.js';
import { RegistryStore } from '../../src/fetch/registry.js';
import { processAlive } from '../../src/mount/state.js';
import type { MountStats } from '../../src/mount/stats.js';
import { MEDIA_TYPE, type Descriptor } from '../../src/oci/types.js';
import { buildImageFromDirs, pseudoRandomBytes } from '../../src/sample/build.js';
import { sha256Digest } from '../../src/util/digest.js';
import { runCli } from '../helpers/cli.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { makeTestCertificates, type TestCertificates } from '../helpers/tlscerts.js';
import { tempDir } from '../helpers/tmp.js';

const REPO = 'tls/app';
const LAYER = randomBytes(256 * 1024);
const LAYER_DESC: Descriptor = { mediaType: MEDIA_TYPE.ociLayerTar, digest: sha256Digest(LAYER), size: LAYER.length };
const CONFIG = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [LAYER_DESC.digest] } }));
const CONFIG_DESC: Descriptor = { mediaType: MEDIA_TYPE.ociConfig, digest: sha256Digest(CONFIG), size: CONFIG.length };
const MANIFEST = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config: CONFIG_DESC, layers: [LAYER_DESC] }));
const RANGE_START = 1000;
const RANGE_END = 70_000;
/** A TLS refusal must come at once (and, checked apart, without retries). */
const REFUSAL_BOUND_MS = 3_000;
/** Lazy mount image: a file much bigger than the chunk size, read whole, and one small file. */
const MOUNT_BIG_FILE_SIZE = 6 * 1024 * 1024;
const MOUNT_CHUNK_SIZE = 256 * 1024;

let pki: TestCertificates;
/** An unrelated CA with its own server and client certificates. */
let otherPki: TestCertificates;
let registry: TestRegistry;
const root = mkdtempSync(join(tmpdir(), 'fetch-tls-'));

/** A hosts directory with `<registry>/hosts.toml` holding `text`; returns the directory. */
function hostsDir(text: string): string {
  const dir = mkdtempSync(join(root, 'hosts-'));
  mkdirSync(join(dir, registry.host));
  writeFileSync(join(dir, registry.host, 'hosts.toml'), text);
  return dir;
}

/** hosts.toml lines for the TLS registry as its server, with the test CA and the client certificate and key. */
function fullConfig(): string {
  return `server = "https://${registry.host}"\nca = "${pki.caCert}"\nclient = [["${pki.clientCert}", "${pki.clientKey}"]]\n`;
}

function storeWith(t: TestContext | undefined, dir: string): RegistryStore {
  const store = openImageStore(`${registry.host}/${REPO}:v1`, { credentials: 'none', hostsDir: dir });
  assert.ok(store instanceof RegistryStore);
  t?.after(() => store.close());
  return store;
}

async function resolveAndRead(store: RegistryStore): Promise<void> {
  const resolved = await store.resolve();
  assert.equal(resolved.descriptor.digest, sha256Digest(MANIFEST));
  assert.deepEqual(await store.fetchRange(LAYER_DESC, RANGE_START, RANGE_END), LAYER.subarray(RANGE_START, RANGE_END));
}

/** Resolving through `store` fails quickly, without retries, with a one-line RegistryError matching `pattern`. */
async function assertRefused(store: RegistryStore, pattern: RegExp): Promise<void> {
  const started = Date.now();
  await assert.rejects(store.resolve(), (err: Error) => {
    assert.ok(err instanceof RegistryError, String(err));
    assert.ok(!err.message.includes('\n'), `one line: ${JSON.stringify(err.message)}`);
    assert.ok(err.message.includes(registry.host), `names the host: ${err.message}`);
    assert.match(err.message, pattern);
    assert.doesNotMatch(err.message, /BEGIN|PRIVATE KEY/, 'no key material');
    return true;
  });
  const elapsed = Date.now() - started;
  assert.ok(elapsed < REFUSAL_BOUND_MS, `refused after ${elapsed} ms`);
  assert.equal(store.stats.retries, 0, 'a TLS refusal is not retried');
}

before(async () => {
  pki = await makeTestCertificates(join(root, 'pki'));
  otherPki = await makeTestCertificates(join(root, 'other-pki'), 'erofs-lazy unrelated CA');
  registry = await startRegistry({ tls: { cert: pki.serverCert, key: pki.serverKey, clientCas: [pki.caCert] } });
  assert.equal(registry.origin, `https://${registry.host}`);
  const store = storeWith(undefined, hostsDir(fullConfig()));
  try {
    await store.pushBlob(LAYER_DESC, { bytes: LAYER });
    await store.pushBlob(CONFIG_DESC, { bytes: CONFIG });
    await store.pushManifest(MEDIA_TYPE.ociManifest, MANIFEST);
  } finally {
    await store.close();
  }
});

after(async () => {
  await registry?.stop();
  rmSync(root, { recursive: true, force: true });
});

describe('registry over TLS with client certificates (hosts.toml)', () => {
  test('server https:// with ca and client as [cert, key] pairs: resolve and range reads work', async (t) => {
    const store = storeWith(t, hostsDir(fullConfig()));
    assert.equal(store.endpoint, `https://${registry.host}`, 'the https:// server wins over the loopback plain-HTTP default');
    await resolveAndRead(store);
    assert.equal(store.stats.retries, 0);
  });

  test('client as a single PEM with certificate and key, and as a list of such files; relative paths', async (t) => {
    await resolveAndRead(storeWith(t, hostsDir(`server = "https://${registry.host}"\nca = "${pki.caCert}"\nclient = "${pki.clientCombined}"\n`)));
    await resolveAndRead(storeWith(t, hostsDir(`server = "https://${registry.host}"\nca = ["${pki.caCert}"]\nclient = ["${pki.clientCombined}"]\n`)));
    // Relative to the host directory, as containerd resolves them.
    const dir = hostsDir(`server = "https://${registry.host}"\nca = "ca.pem"\nclient = [["client.pem", "client-key.pem"]]\n`);
    for (const [name, from] of [['ca.pem', pki.caCert], ['client.pem', pki.clientCert], ['client-key.pem', pki.clientKey]] as const) {
      writeFileSync(join(dir, registry.host, name), await readFile(from));
    }
    await resolveAndRead(storeWith(t, dir));
  });

  test('ca and client without a server line: a loopback registry is then spoken to over https', async (t) => {
    const store = storeWith(t, hostsDir(`ca = "${pki.caCert}"\nclient = "${pki.clientCombined}"\n`));
    assert.equal(store.endpoint, `https://${registry.host}`);
    await resolveAndRead(store);
  });

  test('scheme of a loopback server without a server line: https only when ca or client is given', () => {
    const origin = (text: string, plainHttp = false): string | undefined =>
      loadRegistryEndpoints(hostsDir(text), registry.host, { plainHttp }).at(-1)?.origin;
    assert.equal(origin(`ca = "${pki.caCert}"\n`), `https://${registry.host}`);
    assert.equal(origin(`client = "${pki.clientCombined}"\n`), `https://${registry.host}`);
    // skip_verify alone is often written for plain-HTTP registries: it does not switch the scheme.
    assert.equal(origin('skip_verify = true\n'), `http://${registry.host}`);
    assert.equal(origin(''), `http://${registry.host}`);
    // An explicit plain-HTTP request, and an explicit server, win.
    assert.equal(origin(`ca = "${pki.caCert}"\n`, true), `http://${registry.host}`);
    assert.equal(origin(`server = "http://${registry.host}"\nca = "${pki.caCert}"\n`), `http://${registry.host}`);
  });

  test('the TLS registry as a [host."https://..."] mirror in front of a dead server', async (t) => {
    const dead = `127.0.0.1:${await unusedPort()}`;
    const store = storeWith(t, hostsDir(`server = "http://${dead}"\n[host."https://${registry.host}"]\n  ca = "${pki.caCert}"\n  client = [["${pki.clientCert}", "${pki.clientKey}"]]\n`));
    await resolveAndRead(store);
  });

  test('without a client certificate: refused at once with a one-line TLS error naming the host', async (t) => {
    await assertRefused(storeWith(t, hostsDir(`server = "https://${registry.host}"\nca = "${pki.caCert}"\n`)), /TLS.*(handshake|certificate)/i);
  });

  test('a client certificate from a CA the registry does not trust: refused at once', async (t) => {
    const text = `server = "https://${registry.host}"\nca = "${pki.caCert}"\nclient = "${otherPki.clientCombined}"\n`;
    await assertRefused(storeWith(t, hostsDir(text)), /TLS.*(handshake|certificate)/i);
  });

  test('verification is on by default: no ca, or another CA, fails; skip_verify = true works', async (t) => {
    const client = `client = [["${pki.clientCert}", "${pki.clientKey}"]]\n`;
    const certError = /TLS certificate of .* failed verification/i;
    await assertRefused(storeWith(t, hostsDir(`server = "https://${registry.host}"\n${client}`)), certError);
    await assertRefused(storeWith(t, hostsDir(`server = "https://${registry.host}"\nca = "${otherPki.caCert}"\n${client}`)), certError);
    const skipping = storeWith(t, hostsDir(`server = "https://${registry.host}"\nskip_verify = true\n${client}`));
    await resolveAndRead(skipping);
  });

  test('a lazy mount through the TLS registry with --hosts-dir: convert, mount, read, umount', async (t) => {
    let daemonPid: number | undefined;
    // Before the temp dir is released and removed (even when the test fails): a clean unmount of whatever
    // was mounted, then the mount process is killed by its pid if it is still there.
    const work = await tempDir(t, 'fetch-tls-mount-', async (dir) => {
      await runCli(['umount', '--all', '--state-dir', join(dir, 'state')]);
      if (processAlive(daemonPid)) process.kill(daemonPid!, 'SIGKILL');
    });
    const dir = hostsDir(fullConfig());
    const layer = join(work, 'layer');
    await mkdir(join(layer, 'etc'), { recursive: true });
    const big = pseudoRandomBytes(MOUNT_BIG_FILE_SIZE, 'fetch-tls-mount');
    await writeFile(join(layer, 'big.bin'), big);
    await writeFile(join(layer, 'etc/motd'), 'served over mutual TLS\n');
    const sourceRef = `${registry.host}/tls/mount:src`;
    const store = openImageStore(sourceRef, { credentials: 'none', hostsDir: dir });
    try {
      await buildImageFromDirs(store, [layer], { workDir: work });
    } finally {
      await store.close();
    }
    const lazyRef = `${registry.host}/tls/mount:erofs`;
    const converted = await runCli(['convert', sourceRef, lazyRef, '--hosts-dir', dir, '--chunk-size', String(MOUNT_CHUNK_SIZE)]);
    assert.equal(converted.code, 0, converted.stderr);

    const mnt = join(work, 'mnt');
    const stateDir = join(work, 'state');
    const cacheDir = join(work, 'cache');
    const common = ['--state-dir', stateDir, '--cache-dir', cacheDir, '--mount-timeout', '10'];
    // Without the hosts directory the loopback registry is spoken to in plain HTTP, which it refuses.
    const refused = await runCli(['mount', lazyRef, mnt, '--hosts-dir', '', ...common]);
    assert.notEqual(refused.code, 0, 'mount without the hosts directory must fail');
    assert.ok(refused.stderr.includes(`http://${registry.host}/`), refused.stderr);

    const mounted = await runCli(['mount', lazyRef, mnt, '--hosts-dir', dir, ...common]);
    assert.equal(mounted.code, 0, `mount failed: ${mounted.stderr}`);
    const pidText = /\(pid (\d+)/.exec(mounted.stdout)?.[1];
    assert.ok(pidText, `mount names its process: ${mounted.stdout}`);
    daemonPid = Number(pidText);
    const stats = async (): Promise<MountStats> => {
      const res = await runCli(['stats', mnt, '--state-dir', stateDir, '--json']);
      assert.equal(res.code, 0, res.stderr);
      return JSON.parse(res.stdout) as MountStats;
    };
    assert.equal(await readFile(join(mnt, 'etc/motd'), 'utf8'), 'served over mutual TLS\n');
    const early = await stats();
    assert.ok(early.layers.length === 1 && early.layers.every((l) => l.lazy), 'the layer is served lazily');
    assert.ok(early.total.bytesFetched > 0, 'bytes came from the TLS registry');
    assert.ok(early.total.bytesFetched < early.total.blobSize / 2, `a small file fetched ${early.total.bytesFetched} of ${early.total.blobSize} bytes`);
    const read = await readFile(join(mnt, 'big.bin'));
    assert.equal(createHash('sha256').update(read).digest('hex'), createHash('sha256').update(big).digest('hex'));
    assert.ok((await stats()).total.bytesFetched > early.total.bytesFetched);

    const unmounted = await runCli(['umount', mnt, '--state-dir', stateDir]);
    assert.equal(unmounted.code, 0, `umount failed: ${unmounted.stderr}`);
    const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
    assert.ok(!mountinfo.includes(` ${work}/`), 'nothing left mounted under the work dir');
    assert.ok(!processAlive(daemonPid), 'the mount process has exited');
    const loops = execFileSync('losetup', ['--noheadings', '--output', 'BACK-FILE', '--list'], { encoding: 'utf8' });
    assert.ok(!loops.includes(`${work}/`) && !loops.includes(`${stateDir}/`), `loop devices left: ${loops}`);
  });
});

/** A loopback port nobody listens on (taken and released). */
async function unusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
