// End to end with the real containerd 1.6 and runc from Debian: containerd with its own root, state,
// socket and config under a temp dir (test/helpers/containerd.ts), `erofs-lazy serve` on its own socket
// as the `erofs-lazy` proxy snapshotter, a local registry, and images built from busybox-static. Covers
// rpull (remote snapshots for seekable layers, Diff/Apply for the others), containerd's own pull of plain
// images through the snapshotter, a SIGKILLed snapshotter coming back, and garbage collection.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, open, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { ContainerdClient } from '../../src/containerd/index.js';
import { openImageStore } from '../../src/fetch/index.js';
import { MEDIA_TYPE } from '../../src/oci/types.js';
import { buildImageFromDirs, pseudoRandomBytes } from '../../src/sample/build.js';
import { CLI_PATH, runCli } from '../helpers/cli.js';
import { SHIM_SOCKET_DIR, startContainerd } from '../helpers/containerd.js';
import type { TestContainerd } from '../helpers/containerd.js';
import { startRegistry } from '../helpers/registry.js';
import type { TestRegistry } from '../helpers/registry.js';
import { releaseMountsBelow, tempDir } from '../helpers/tmp.js';

const SNAPSHOTTER = 'erofs-lazy';
const CHUNK_SIZE = 256 * 1024;
/** Pseudo-random data files in the bottom layer, so that a small read is a visibly small part of the image. */
const DATA_FILES = 4;
const DATA_FILE_SIZE = 10 * 1024 * 1024;
const APPLETS = ['sh', 'cat', 'echo', 'sha256sum', 'head', 'ls', 'true'];
/** containerd's proxy client stays in reconnect backoff for a few seconds after the snapshotter restarts. */
const RECONNECT_WAIT_MS = 20_000;
const SERVE_READY_MS = 30_000;
const SERVE_STOP_MS = 20_000;
const CACHE_SETTLE_MS = 10_000;
/** At most this share of the blob bytes may be fetched to run `cat` of a small file. */
const SMALL_READ_MAX_FETCHED_SHARE = 0.25;

const HELLO = 'hello from a lazily pulled layer\n';
const MOTD = 'the second layer says hi\n';

function sha256Hex(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function retry<T>(what: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: still failing after ${timeoutMs} ms: ${(err as Error).message}`);
      await delay(500);
    }
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/** Prometheus text → Map of "name{labels}" → value. */
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

function perLayer(metrics: Map<string, number>, name: string): Map<string, number> {
  const out = new Map<string, number>();
  const re = new RegExp(`^${name}\\{layer="([^"]+)"\\}$`);
  for (const [k, v] of metrics) {
    const m = re.exec(k);
    if (m) out.set(m[1]!, v);
  }
  return out;
}

function sum(m: Map<string, number>): number {
  return [...m.values()].reduce((a, b) => a + b, 0);
}

interface Serve {
  dir: string;
  root: string;
  cacheDir: string;
  socket: string;
  metricsUrl: string;
  /** Raw metrics. */
  metrics(): Promise<Map<string, number>>;
  log(): Promise<string>;
  /** "running (pid N)" or how it exited, for messages. */
  state(): string;
  kill(): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
  cleanup(): Promise<void>;
}

/**
 * `erofs-lazy serve` listening on `<its temp dir>/snapshotter.sock`, with root and cache in that dir.
 * `cleanup` stops it with SIGTERM (SIGKILL after a while), releases what is still mounted below the dir and
 * removes it; the caller registers it (after containerd's own cleanup, which removes images first).
 */
async function startServe(): Promise<Serve> {
  const dir = await mkdtemp(join(tmpdir(), 'erofs-lazy-serve-'));
  const socket = join(dir, 'snapshotter.sock');
  const root = join(dir, 'root');
  const cacheDir = join(dir, 'cache');
  const port = await freePort();
  const metricsUrl = `http://127.0.0.1:${port}/metrics`;
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const logPath = join(dir, 'serve.log');

  const serve: Serve = {
    dir,
    root,
    cacheDir,
    socket,
    metricsUrl,
    async metrics() {
      const res = await fetch(metricsUrl);
      assert.equal(res.status, 200);
      return parseMetrics(await res.text());
    },
    async log() {
      return readFile(logPath, 'utf8').catch(() => '');
    },
    state() {
      if (!child) return 'not started';
      if (child.exitCode === null && child.signalCode === null) return `running (pid ${child.pid})`;
      return `exited (${child.exitCode ?? child.signalCode})`;
    },
    async start() {
      const log = await open(logPath, 'a');
      child = spawn(
        process.execPath,
        [CLI_PATH, 'serve', '--address', socket, '--root', root, '--cache-dir', cacheDir, '--metrics-address', `127.0.0.1:${port}`],
        { stdio: ['ignore', log.fd, log.fd] },
      );
      await log.close();
      const c = child;
      exited = new Promise((r) => c.once('exit', () => r()));
      const deadline = Date.now() + SERVE_READY_MS;
      for (;;) {
        if (c.exitCode !== null || c.signalCode !== null) throw new Error(`serve exited at start: ${await serve.log()}`);
        if ((await socketAnswers(socket)) && (await fetch(metricsUrl).then((r) => r.ok, () => false))) return;
        if (Date.now() > deadline) throw new Error(`serve not ready after ${SERVE_READY_MS} ms: ${await serve.log()}`);
        await delay(100);
      }
    },
    async kill() {
      child?.kill('SIGKILL');
      await exited;
    },
    async stop() {
      if (child && child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child?.kill('SIGKILL'), SERVE_STOP_MS);
        await exited;
        clearTimeout(timer);
      }
    },
    async cleanup() {
      await serve.stop();
      releaseMountsBelow(dir);
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    await serve.start();
  } catch (err) {
    await serve.cleanup();
    throw err;
  }
  return serve;
}

/**
 * `serve`, then containerd with the erofs-lazy proxy plugin dialing it. That order matters: containerd's
 * gRPC client to the plugin dials at once, and a first dial that finds no socket leaves it in reconnect
 * backoff, where calls fail with "unavailable" for seconds. Cleanup runs the other way round: containerd
 * first (it removes images, so serve unmounts their snapshots), then serve.
 */
async function startStack(t: TestContext): Promise<{ ctd: TestContainerd; serve: Serve }> {
  const serve = await startServe();
  stacks.push(serve.dir);
  let ctd: TestContainerd;
  try {
    ctd = await startContainerd(t, { snapshotterSocket: serve.socket });
  } catch (err) {
    await serve.cleanup();
    throw err;
  }
  stacks.push(ctd.dir);
  t.after(() => shimSockets.push(...ctd.shimSockets()));
  t.after(() => serve.cleanup());
  return { ctd, serve };
}

/** Every dir a test used, and the shim sockets of its containers, checked for leftovers at the end. */
const stacks: string[] = [];
const shimSockets: string[] = [];

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
}

/** Chunk files of the disk cache (`<cacheDir>/chunks/v1/<alg>/<hex>/<index>`, temp files excluded). */
function chunkFiles(cacheDir: string): string[] {
  if (!existsSync(cacheDir)) return [];
  return execFileSync('find', [cacheDir, '-type', 'f', '-regex', '.*/[0-9]+'], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

/** Waits until the disk cache holds a file for every chunk serve fetched (its writes trail the reads). */
async function cacheSettled(serve: Serve): Promise<void> {
  const chunksFetched = sum(perLayer(await serve.metrics(), 'erofs_lazy_cache_misses_total'));
  await retry('disk cache holding every fetched chunk', CACHE_SETTLE_MS, async () => {
    const files = chunkFiles(serve.cacheDir).length;
    if (files < chunksFetched) throw new Error(`${files} of ${chunksFetched} chunks on disk`);
  });
}

/** Busybox-static with a few applets, a text file and pseudo-random data files; a second small layer. */
async function writeLayers(dir: string): Promise<{ layers: string[]; dataHashes: string[] }> {
  const l0 = join(dir, 'l0');
  const l1 = join(dir, 'l1');
  for (const d of ['bin', 'etc', 'data', 'tmp', 'proc', 'sys', 'dev']) await mkdir(join(l0, d), { recursive: true });
  await copyFile('/bin/busybox', join(l0, 'bin/busybox'));
  await chmod(join(l0, 'bin/busybox'), 0o755);
  for (const a of APPLETS) await symlink('busybox', join(l0, 'bin', a));
  await writeFile(join(l0, 'etc/hello'), HELLO);
  const dataHashes: string[] = [];
  for (let i = 0; i < DATA_FILES; i++) {
    const data = pseudoRandomBytes(DATA_FILE_SIZE, `containerd-data-${i}`);
    await writeFile(join(l0, `data/file${i}.bin`), data);
    dataHashes.push(sha256Hex(data));
  }
  await mkdir(join(l1, 'etc'), { recursive: true });
  await writeFile(join(l1, 'etc/motd'), MOTD);
  return { layers: [l0, l1], dataHashes };
}

describe('containerd with erofs-lazy (real containerd and runc)', () => {
  let registry: TestRegistry;
  let work: string;
  const cleanups: Array<() => unknown> = [];
  let plainRef: string;
  let lazyRef: string;
  let dataHashes: string[];
  let lazyLayers: string[];

  before(async () => {
    registry = await startRegistry();
    work = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) });
    const built = await writeLayers(join(work, 'src'));
    dataHashes = built.dataHashes;
    plainRef = `${registry.host}/ctd/app:plain`;
    lazyRef = `${registry.host}/ctd/app:erofs`;
    const store = openImageStore(plainRef, {});
    await buildImageFromDirs(store, built.layers, { workDir: work, cmd: ['/bin/sh'] });
    await store.close();
    const c = await runCli(['convert', plainRef, lazyRef, '--chunk-size', String(CHUNK_SIZE)]);
    assert.equal(c.code, 0, c.stderr);
    const lazy = openImageStore(lazyRef, {});
    lazyLayers = (await lazy.resolve()).manifest.layers.map((l) => l.digest);
    await lazy.close();
  });

  after(async () => {
    await registry?.stop();
    for (const c of cleanups.reverse()) await c();
    // Nothing of any test may remain: mounts, loop devices, processes, shim sockets.
    const loops = execFileSync('losetup', ['--noheadings', '--output', 'BACK-FILE', '--list'], { encoding: 'utf8' });
    const ps = execFileSync('ps', ['-eo', 'args='], { encoding: 'utf8' });
    for (const d of stacks) {
      assert.deepEqual(mountsUnder(d), [], `mounts left under ${d}`);
      assert.ok(!loops.includes(`${d}/`), `loop devices left for ${d}: ${loops}`);
      assert.ok(!ps.split('\n').some((l) => l.includes(d)), `process left for ${d}`);
      assert.ok(!existsSync(d), `${d} not removed`);
    }
    assert.deepEqual(shimSockets.filter((p) => existsSync(p)), [], `shim sockets left in ${SHIM_SOCKET_DIR}`);
  });

  test('harness: rpull into containerd\'s overlayfs snapshotter applies every layer and the image runs', async (t) => {
    const ctd = await startContainerd(t);
    stacks.push(ctd.dir);
    t.after(() => shimSockets.push(...ctd.shimSockets()));
    const r = await runCli(['rpull', plainRef, '--address', ctd.address, '--namespace', ctd.namespace, '--snapshotter', 'overlayfs']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^layer 0 sha256:[0-9a-f]{64} applied/m);
    assert.match(r.stdout, /^layer 1 sha256:[0-9a-f]{64} applied/m);
    assert.match(r.stdout, /2 layers \(0 remote, 2 applied, 0 present\)/);

    const out = await ctd.ctrOk(['run', '--rm', '--snapshotter', 'overlayfs', plainRef, 'c-overlay', '/bin/sh', '-c', 'cat /etc/hello /etc/motd; sha256sum /data/file1.bin']);
    assert.equal(out, `${HELLO}${MOTD}${dataHashes[1]}  /data/file1.bin\n`);

    // A second rpull finds both layers; the image record is the same.
    const again = await runCli(['rpull', plainRef, '--address', ctd.address, '--namespace', ctd.namespace, '--snapshotter', 'overlayfs', '--json']);
    assert.equal(again.code, 0, again.stderr);
    const report = JSON.parse(again.stdout) as { layers: Array<{ state: string }>; target: { digest: string } };
    assert.deepEqual(report.layers.map((l) => l.state), ['present', 'present']);
    assert.match(await ctd.ctrOk(['images', 'ls', '-q']), new RegExp(plainRef.replace(/[.]/g, '\\.')));

    // Removing the image lets containerd's garbage collector take the snapshots and the content.
    await ctd.ctrOk(['images', 'rm', '--sync', plainRef]);
    assert.equal((await ctd.ctrOk(['snapshots', '--snapshotter', 'overlayfs', 'ls'])).trim().split('\n').length, 1, 'only the header line');
    assert.equal((await ctd.ctrOk(['content', 'ls', '-q'])).trim(), '');
    assert.equal((await ctd.ctrOk(['leases', 'ls', '-q'])).trim(), '', 'rpull deletes its lease');

    // A reference naming an image index: the index is the image's target, ctr picks the manifest from it.
    const indexRef = `${registry.host}/ctd/app:index`;
    const src = openImageStore(plainRef, {});
    const manifest = (await src.resolve()).descriptor;
    await src.close();
    const index = { schemaVersion: 2, mediaType: MEDIA_TYPE.ociIndex, manifests: [{ ...manifest, platform: { os: 'linux', architecture: 'amd64' } }] };
    const dst = openImageStore(indexRef, {});
    const indexDesc = await dst.pushManifest(MEDIA_TYPE.ociIndex, Buffer.from(JSON.stringify(index)));
    await dst.close();
    const ri = await runCli(['rpull', indexRef, '--address', ctd.address, '--namespace', ctd.namespace, '--snapshotter', 'overlayfs', '--json']);
    assert.equal(ri.code, 0, ri.stderr);
    assert.equal((JSON.parse(ri.stdout) as { target: { digest: string } }).target.digest, indexDesc.digest);
    assert.match(await ctd.ctrOk(['images', 'ls']), new RegExp(`application/vnd\\.oci\\.image\\.index\\.v1\\+json\\s+${indexDesc.digest}`));
    assert.equal(await ctd.ctrOk(['run', '--rm', '--snapshotter', 'overlayfs', indexRef, 'c-index', '/bin/cat', '/etc/motd']), MOTD);
    await ctd.ctrOk(['images', 'rm', '--sync', indexRef]);
    assert.equal((await ctd.ctrOk(['content', 'ls', '-q'])).trim(), '');

    // Failures are one line with the reason, and exit non-zero.
    const bad = await runCli(['rpull', `${registry.host}/ctd/app:missing`, '--address', ctd.address, '--snapshotter', 'overlayfs']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /^erofs-lazy: .*manifest unknown/i);
    assert.equal(bad.stderr.trim().split('\n').length, 1);
    const seekable = await runCli(['rpull', lazyRef, '--address', ctd.address, '--snapshotter', 'overlayfs']);
    assert.notEqual(seekable.code, 0);
    assert.match(seekable.stderr, /did not mount this application\/vnd\.erofs\.layer\.v1\+zstd layer remotely/);
  });

  test('a converted image is rpulled as remote snapshots and runs; only a small part of it is fetched', async (t) => {
    const { ctd, serve } = await startStack(t);
    const r = await runCli(['rpull', lazyRef, '--address', ctd.address, '--namespace', ctd.namespace]);
    assert.equal(r.code, 0, `${r.stderr}\nserve: ${await serve.log()}`);
    assert.match(r.stdout, /2 layers \(2 remote, 0 applied, 0 present\), 0 B of layers downloaded/);
    const snaps = await ctd.ctrOk(['snapshots', '--snapshotter', SNAPSHOTTER, 'ls']);
    assert.equal(snaps.trim().split('\n').filter((l) => /Committed/.test(l)).length, 2, snaps);
    assert.equal((await ctd.ctrOk(['content', 'ls', '-q'])).trim().split('\n').length, 2, 'manifest and config only, no layer blobs');

    const before = await serve.metrics();
    const blobBytes = sum(perLayer(before, 'erofs_lazy_layer_blob_bytes'));
    assert.ok(blobBytes > DATA_FILES * DATA_FILE_SIZE * 0.9, `blob bytes ${blobBytes}`);
    assert.equal(before.get('erofs_lazy_remote_snapshots'), 2);

    const out = await ctd.ctrOk(['run', '--rm', '--snapshotter', SNAPSHOTTER, lazyRef, 'c-lazy', '/bin/cat', '/etc/hello', '/etc/motd']);
    assert.equal(out, HELLO + MOTD);
    const afterCat = await serve.metrics();
    const fetched = sum(perLayer(afterCat, 'erofs_lazy_fetched_bytes_total'));
    t.diagnostic(`cat fetched ${fetched} of ${blobBytes} blob bytes (${((100 * fetched) / blobBytes).toFixed(1)}%)`);
    assert.ok(fetched > 0, 'something was fetched lazily');
    assert.ok(fetched < blobBytes * SMALL_READ_MAX_FETCHED_SHARE, `fetched ${fetched} of ${blobBytes} blob bytes to run cat`);

    // A whole data file reads right, through FUSE, erofs and the container's overlay.
    const sumOut = await ctd.ctrOk(['run', '--rm', '--snapshotter', SNAPSHOTTER, lazyRef, 'c-lazy2', '/bin/sha256sum', '/data/file2.bin']);
    assert.equal(sumOut, `${dataHashes[2]}  /data/file2.bin\n`);
    const afterSum = sum(perLayer(await serve.metrics(), 'erofs_lazy_fetched_bytes_total'));
    assert.ok(afterSum >= fetched + DATA_FILE_SIZE * 0.9 && afterSum < blobBytes, `fetched ${afterSum} after reading one data file`);
  });

  test('a plain OCI image (tar+gzip layers) pulled by containerd runs through the same snapshotter', async (t) => {
    const { ctd, serve } = await startStack(t);
    await ctd.ctrOk(['images', 'pull', '--plain-http', '--snapshotter', SNAPSHOTTER, plainRef]);
    const snaps = await ctd.ctrOk(['snapshots', '--snapshotter', SNAPSHOTTER, 'ls']);
    assert.equal(snaps.trim().split('\n').filter((l) => /Committed/.test(l)).length, 2, snaps);
    const out = await ctd.ctrOk(['run', '--rm', '--snapshotter', SNAPSHOTTER, plainRef, 'c-plain', '/bin/sh', '-c', 'cat /etc/motd; sha256sum /data/file0.bin; echo written > /tmp/x; cat /tmp/x']);
    assert.equal(out, `${MOTD}${dataHashes[0]}  /data/file0.bin\nwritten\n`);
    assert.equal((await serve.metrics()).get('erofs_lazy_remote_snapshots'), 0, 'no remote snapshot for a plain image');

    // rpull of a plain image through erofs-lazy: every layer is applied by containerd's diff service.
    await ctd.ctrOk(['images', 'rm', '--sync', plainRef]);
    const r = await runCli(['rpull', plainRef, '--address', ctd.address, '--namespace', ctd.namespace]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /2 layers \(0 remote, 2 applied, 0 present\)/);
    assert.equal(await ctd.ctrOk(['run', '--rm', '--snapshotter', SNAPSHOTTER, plainRef, 'c-plain2', '/bin/cat', '/etc/hello']), HELLO);
  });

  test('serve killed with SIGKILL and restarted: snapshots and mounts come back, nothing read before is fetched again', async (t) => {
    const { ctd, serve } = await startStack(t);
    const r = await runCli(['rpull', lazyRef, '--address', ctd.address, '--namespace', ctd.namespace]);
    assert.equal(r.code, 0, `${r.stderr}\nserve: ${await serve.log()}`);
    const cmd = ['/bin/sh', '-c', 'cat /etc/hello; head -c 300000 /data/file0.bin | sha256sum'];
    const expected = `${HELLO}${sha256Hex(pseudoRandomBytes(DATA_FILE_SIZE, 'containerd-data-0').subarray(0, 300000))}  -\n`;
    assert.equal(await ctd.ctrOk(['run', '--rm', '--snapshotter', SNAPSHOTTER, lazyRef, 'c-before', ...cmd]), expected);
    const fetchedBefore = sum(perLayer(await serve.metrics(), 'erofs_lazy_fetched_bytes_total'));
    assert.ok(fetchedBefore > 0);
    const snapsBefore = await ctd.ctrOk(['snapshots', '--snapshotter', SNAPSHOTTER, 'ls']);
    // The disk cache is written behind the reads: what is still in flight at a SIGKILL is (rightly) fetched again.
    await cacheSettled(serve);

    await serve.kill();
    await serve.start();
    // The remote snapshots are there again, mounted (erofs over the FUSE layer files) under serve's root.
    const backend = ContainerdClient.connect(serve.socket);
    t.after(() => backend.close());
    const listed = await backend.snapshots.list(SNAPSHOTTER);
    assert.equal(listed.filter((s) => s.kind === 'COMMITTED').length, 2, JSON.stringify(listed));
    assert.ok(mountsUnder(serve.root).length > 0, 'mounts under serve root after the restart');
    const mountText = execFileSync('mount', { encoding: 'utf8' });
    assert.ok(mountText.split('\n').some((l) => l.includes(serve.root) && / type erofs /.test(l)), mountText);
    const m0 = sum(perLayer(await serve.metrics(), 'erofs_lazy_fetched_bytes_total'));

    // containerd reconnects after its backoff (its snapshot list asks the snapshotter to Stat each one),
    // and a new container reads the same data from the cache.
    const snapsAfter = await retry('ctr snapshots ls after the snapshotter restart', RECONNECT_WAIT_MS, () =>
      ctd.ctrOk(['snapshots', '--snapshotter', SNAPSHOTTER, 'ls']),
    );
    assert.equal(snapsAfter, snapsBefore);
    const out = await ctd.ctrOk(['run', '--rm', '--snapshotter', SNAPSHOTTER, lazyRef, 'c-after', ...cmd]);
    assert.equal(out, expected);
    const metrics = await serve.metrics();
    assert.equal(sum(perLayer(metrics, 'erofs_lazy_fetched_bytes_total')) - m0, 0, 'nothing fetched again after the restart');
    assert.ok(sum(perLayer(metrics, 'erofs_lazy_read_bytes_total')) > 0, 'the reads went through the snapshotter');
  });

  test('removing the image and garbage collection remove its snapshots, mounts and cache files', async (t) => {
    const { ctd, serve } = await startStack(t);
    const r = await runCli(['rpull', lazyRef, '--address', ctd.address, '--namespace', ctd.namespace]);
    assert.equal(r.code, 0, `${r.stderr}\nserve: ${await serve.log()}`);
    assert.equal(await ctd.ctrOk(['run', '--rm', '--snapshotter', SNAPSHOTTER, lazyRef, 'c-gc', '/bin/cat', '/etc/motd']), MOTD);
    const cacheFiles = (): string[] =>
      existsSync(serve.cacheDir) ? execFileSync('find', [serve.cacheDir, '-type', 'f'], { encoding: 'utf8' }).split('\n').filter(Boolean) : [];
    const layerHex = lazyLayers.map((d) => d.slice('sha256:'.length));
    await cacheSettled(serve);
    assert.ok(cacheFiles().some((f) => layerHex.some((h) => f.includes(h))), `cache files of the image exist: ${cacheFiles().join(' ')}`);
    assert.ok(mountsUnder(serve.root).length > 0);

    await ctd.ctrOk(['images', 'rm', '--sync', lazyRef]);
    const logs = async (): Promise<string> => `\nserve log:\n${await serve.log()}\ncontainerd log:\n${await ctd.log()}`;
    assert.equal((await ctd.ctrOk(['snapshots', '--snapshotter', SNAPSHOTTER, 'ls'])).trim().split('\n').length, 1, 'only the header line');
    const backend = ContainerdClient.connect(serve.socket);
    t.after(() => backend.close());
    assert.deepEqual(await backend.snapshots.list(SNAPSHOTTER), [], `the snapshotter removed them too${await logs()}`);
    assert.deepEqual(mountsUnder(serve.root), [], `no mounts left under serve root${await logs()}`);
    const left = cacheFiles().filter((f) => layerHex.some((h) => f.includes(h)));
    assert.deepEqual(left, [], `no cache files of the image left${await logs()}`);
    assert.equal((await serve.metrics()).get('erofs_lazy_remote_snapshots'), 0);
    assert.equal((await ctd.ctrOk(['content', 'ls', '-q'])).trim(), '');
  });
});
