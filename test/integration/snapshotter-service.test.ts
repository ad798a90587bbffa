// End to end for `erofs-lazy serve`, the containerd remote snapshotter, driven by its own gRPC client (built
// from proto/): the real CLI on a temp socket, root and cache, a real registry, real FUSE, loop devices, erofs,
// bind and overlay mounts. Ordinary snapshots behave like containerd's overlayfs snapshotter; seekable layers
// are committed remotely (ALREADY_EXISTS) and read lazily; a SIGKILLed serve comes back without the registry;
// Remove frees mounts and cache. Everything below the temp dir is released at the end, even on failure.
// SNAPSHOTTER_TEST_LOGS=1 prints the serve logs at the end.
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { get } from 'node:http';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { openImageStore } from '../../src/fetch/index.js';
import type { Descriptor, ImageConfig } from '../../src/oci/types.js';
import { buildImageFromDirs, pseudoRandomBytes } from '../../src/sample/build.js';
import { loadSnapshotsService } from '../../src/snapshotter/grpc.js';
import type { WireInfo, WireMount } from '../../src/snapshotter/grpc.js';
import { CLI_PATH, runCli } from '../helpers/cli.js';
import { applyLayersOci, writeTestLayers } from '../helpers/images.js';
import { startRegistry } from '../helpers/registry.js';
import type { TestRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/tmp.js';
import { diffTrees, snapshotTree } from '../helpers/tree.js';

const execFileAsync = promisify(execFile);
const BIG_FILE_BYTES = 24 * 1024 * 1024;
const CHUNK_SIZE = 256 * 1024;
const SERVE_READY_TIMEOUT_MS = 30_000;
const SERVE_EXIT_TIMEOUT_MS = 20_000;
const LABEL_REF = 'containerd.io/snapshot.ref';

// ---- a small client of the snapshots service -------------------------------------------------------------

type Unary = (req: object, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;

class SnapshotsClient {
  readonly #client: grpc.Client & Record<string, unknown>;

  constructor(socket: string) {
    const Ctor = grpc.makeGenericClientConstructor(loadSnapshotsService(), 'Snapshots');
    this.#client = new Ctor(`unix:${socket}`, grpc.credentials.createInsecure()) as grpc.Client & Record<string, unknown>;
  }

  call<T>(method: string, request: object): Promise<T> {
    const fn = (this.#client[method] as Unary).bind(this.#client);
    return new Promise((resolve, reject) => fn(request, (err, res) => (err ? reject(err) : resolve(res as T))));
  }

  async prepare(key: string, parent = '', labels: Record<string, string> = {}): Promise<WireMount[]> {
    return (await this.call<{ mounts: WireMount[] }>('Prepare', { key, parent, labels })).mounts;
  }

  async view(key: string, parent: string): Promise<WireMount[]> {
    return (await this.call<{ mounts: WireMount[] }>('View', { key, parent, labels: {} })).mounts;
  }

  async mounts(key: string): Promise<WireMount[]> {
    return (await this.call<{ mounts: WireMount[] }>('Mounts', { key })).mounts;
  }

  commit(name: string, key: string, labels: Record<string, string> = {}): Promise<unknown> {
    return this.call('Commit', { name, key, labels });
  }

  remove(key: string): Promise<unknown> {
    return this.call('Remove', { key });
  }

  async stat(key: string): Promise<WireInfo> {
    return (await this.call<{ info: WireInfo }>('Stat', { key })).info;
  }

  usage(key: string): Promise<{ size: number; inodes: number }> {
    return this.call('Usage', { key });
  }

  list(filters: string[] = []): Promise<WireInfo[]> {
    const stream = (this.#client.List as (req: object) => grpc.ClientReadableStream<{ info: WireInfo[] }>).call(this.#client, { filters });
    return new Promise((resolve, reject) => {
      const out: WireInfo[] = [];
      stream.on('data', (d: { info: WireInfo[] }) => out.push(...d.info));
      stream.on('end', () => resolve(out));
      stream.on('error', reject);
    });
  }

  close(): void {
    this.#client.close();
  }
}

async function expectCode(promise: Promise<unknown>, code: grpc.status, what: string): Promise<void> {
  await assert.rejects(promise, (err: grpc.ServiceError) => {
    assert.equal(err.code, code, `${what}: got ${err.code} ${err.details}`);
    return true;
  });
}

// ---- the serve process ---------------------------------------------------------------------------------

interface Serve {
  child: ChildProcess;
  socket: string;
  log(): string;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
}

async function startServe(dirs: { socket: string; root: string; cache: string }, extra: string[] = []): Promise<Serve> {
  const child = spawn(process.execPath, [CLI_PATH, 'serve', '--address', dirs.socket, '--root', dirs.root, '--cache-dir', dirs.cache, '--read-timeout', '5', ...extra], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const ready = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), SERVE_READY_TIMEOUT_MS);
    const check = (): void => {
      if (stderr.includes('serving containerd snapshots')) {
        clearTimeout(timer);
        resolve(true);
      }
    };
    child.stderr!.on('data', check);
    void exited.then(() => {
      clearTimeout(timer);
      resolve(false);
    });
  });
  if (!ready) {
    child.kill('SIGKILL');
    throw new Error(`serve did not start:\n${stderr}`);
  }
  return { child, socket: dirs.socket, log: () => stderr, exited };
}

async function stopServe(s: Serve | undefined, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  if (!s || s.child.exitCode !== null || s.child.signalCode !== null) return s?.child.exitCode ?? null;
  s.child.kill(signal);
  const timer = setTimeout(() => s.child.kill('SIGKILL'), SERVE_EXIT_TIMEOUT_MS);
  try {
    return await s.exited;
  } finally {
    clearTimeout(timer);
  }
}

// ---- helpers --------------------------------------------------------------------------------------------

function managerPid(root: string): number | undefined {
  const path = join(root, 'fuse-manager.pid');
  if (!existsSync(path)) return undefined;
  const pid = Number(readFileSyncText(path).trim());
  return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Stops the FUSE manager of a root by its pid (SIGTERM, then SIGKILL), if one runs. */
async function stopManager(root: string): Promise<void> {
  const pid = managerPid(root);
  if (pid === undefined || !processAlive(pid)) return;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 100 && processAlive(pid); i++) await new Promise((r) => setTimeout(r, 100));
  if (processAlive(pid)) process.kill(pid, 'SIGKILL');
}

async function mountSpec(specs: WireMount[], target: string): Promise<void> {
  assert.equal(specs.length, 1, JSON.stringify(specs));
  const m = specs[0]!;
  await mkdir(target, { recursive: true });
  const args = m.type === 'bind' ? ['-o', m.options.join(','), m.source, target] : ['-t', m.type, '-o', m.options.join(','), m.source, target];
  await execFileAsync('mount', args);
}

async function umount(target: string): Promise<void> {
  await execFileAsync('umount', [target]);
}

function mountsUnder(dir: string): string[] {
  return readFileSyncText('/proc/self/mountinfo')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
}

function readFileSyncText(path: string): string {
  return execFileSync('cat', [path], { encoding: 'utf8' });
}

function loopsUnder(dir: string): string[] {
  const out = execFileSync('losetup', ['--noheadings', '--raw', '--output', 'NAME,BACK-FILE', '--list'], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes(` ${dir}/`));
}

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) out.push(out.length === 0 ? d : `sha256:${sha256(`${out[out.length - 1]} ${d}`)}`);
  return out;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
    s.once('error', reject);
  });
}

function fetchText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${url}: ${res.statusCode} ${body}`))));
    }).once('error', reject);
  });
}

/** Sum of a metric over its series. */
function metricSum(text: string, name: string): number {
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

interface Image {
  ref: string;
  manifestDigest: string;
  layers: Descriptor[];
  chains: string[];
}

async function describeImage(ref: string): Promise<Image> {
  const store = openImageStore(ref, {});
  try {
    const resolved = await store.resolve();
    const config = JSON.parse((await store.fetchBlob(resolved.manifest.config)).toString('utf8')) as ImageConfig;
    return { ref, manifestDigest: resolved.descriptor.digest, layers: resolved.manifest.layers, chains: chainIds(config.rootfs.diff_ids) };
  } finally {
    await store.close();
  }
}

function remoteLabels(image: Image, i: number): Record<string, string> {
  return {
    [LABEL_REF]: image.chains[i]!,
    'containerd.io/snapshot/cri.image-ref': image.ref,
    'containerd.io/snapshot/cri.layer-digest': image.layers[i]!.digest,
    'containerd.io/snapshot/cri.manifest-digest': image.manifestDigest,
  };
}

// ---- the tests ------------------------------------------------------------------------------------------

describe('erofs-lazy serve (containerd snapshots API)', () => {
  let registry: TestRegistry | undefined;
  let base = '';
  let expected = '';
  let lazy: Image;
  let plain: Image;
  let bigSha = '';
  const serves: Serve[] = [];
  /** Snapshotter roots, whose FUSE managers are stopped at the end. */
  const roots: string[] = [];
  const clients: SnapshotsClient[] = [];
  const cleanups: Array<() => unknown> = [];

  before(async () => {
    registry = await startRegistry();
    // Serves are stopped before the temp dir (and everything mounted below it) is released.
    base = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) }, 'erofs-lazy-test-snap-', async () => {
      for (const c of clients) c.close();
      for (const s of serves) await stopServe(s, 'SIGKILL');
      for (const root of roots) await stopManager(root);
    });
    const [l0, l1] = await writeTestLayers(join(base, 'src'));
    const l2 = join(base, 'src/l2');
    await mkdir(join(l2, 'big'), { recursive: true });
    const big = pseudoRandomBytes(BIG_FILE_BYTES, 'snapshotter-big');
    bigSha = sha256(big);
    await writeFile(join(l2, 'big/blob.bin'), big);
    await writeFile(join(l2, 'big/small.txt'), 'a small file next to a big one\n');
    const layers = [l0!, l1!, l2];
    const src = openImageStore(`${registry.host}/snap/app:src`, {});
    await buildImageFromDirs(src, layers, { workDir: base });
    await src.close();
    const converted = await runCli(['convert', `${registry.host}/snap/app:src`, `${registry.host}/snap/app:erofs`, '--chunk-size', String(CHUNK_SIZE)]);
    assert.equal(converted.code, 0, converted.stderr);
    lazy = await describeImage(`${registry.host}/snap/app:erofs`);
    plain = await describeImage(`${registry.host}/snap/app:src`);
    expected = join(base, 'expected');
    await mkdir(expected);
    applyLayersOci(layers, expected);
  });

  after(async () => {
    if (process.env.SNAPSHOTTER_TEST_LOGS) for (const s of serves) console.log(s.log());
    for (const c of cleanups.reverse()) await c();
    await registry?.stop();
    const left = mountsUnder(base);
    assert.deepEqual(left, [], 'mounts left behind');
  });

  test('ordinary snapshots: bind and overlay mounts, commit, view, stat, list, usage, remove', async () => {
    const dirs = { socket: join(base, 'plain/sock'), root: join(base, 'plain/root'), cache: join(base, 'plain/cache') };
    roots.push(dirs.root);
    const serve = await startServe(dirs);
    serves.push(serve);
    const c = new SnapshotsClient(dirs.socket);
    clients.push(c);
    const mnt = join(base, 'plain/mnt');

    const m0 = await c.prepare('default/1/base');
    assert.equal(m0[0]!.type, 'bind');
    assert.deepEqual(m0[0]!.options, ['rw', 'rbind']);
    await mountSpec(m0, join(mnt, 'base'));
    await writeFile(join(mnt, 'base/a.txt'), 'from the base layer\n');
    await writeFile(join(mnt, 'base/gone.txt'), 'deleted above\n');
    await umount(join(mnt, 'base'));
    await c.commit('base', 'default/1/base', { layer: '0' });

    const m1 = await c.prepare('default/2/upper', 'base');
    assert.equal(m1[0]!.type, 'overlay');
    await mountSpec(m1, join(mnt, 'upper'));
    assert.equal(await readFile(join(mnt, 'upper/a.txt'), 'utf8'), 'from the base layer\n');
    await writeFile(join(mnt, 'upper/b.txt'), 'from the upper layer\n');
    await rm(join(mnt, 'upper/gone.txt'));
    await umount(join(mnt, 'upper'));
    await c.commit('upper', 'default/2/upper');

    const v = await c.view('default/3/view', 'upper');
    assert.equal(v[0]!.type, 'overlay');
    assert.ok(v[0]!.options.every((o) => !o.startsWith('upperdir=')), 'a view has no upper dir');
    await mountSpec(v, join(mnt, 'view'));
    assert.deepEqual((await readdir(join(mnt, 'view'))).sort(), ['a.txt', 'b.txt']);
    await assert.rejects(writeFile(join(mnt, 'view/c.txt'), 'x'), { code: 'EROFS' });
    await umount(join(mnt, 'view'));
    const single = await c.view('default/4/view1', 'base');
    assert.deepEqual([single[0]!.type, single[0]!.options], ['bind', ['ro', 'rbind']]);

    const info = await c.stat('upper');
    assert.deepEqual([info.kind, info.parent, info.name], ['COMMITTED', 'base', 'upper']);
    assert.equal((await c.stat('base')).labels.layer, '0');
    assert.ok(Number(info.created_at!.seconds) > 1_600_000_000);
    const all = (await c.list()).map((i) => `${i.name}:${i.kind}`).sort();
    assert.deepEqual(all, ['base:COMMITTED', 'default/3/view:VIEW', 'default/4/view1:VIEW', 'upper:COMMITTED']);
    assert.deepEqual((await c.list(['kind==view'])).map((i) => i.name).sort(), ['default/3/view', 'default/4/view1']);
    const usage = await c.usage('upper');
    assert.ok(usage.size > 0 && usage.inodes >= 3, JSON.stringify(usage));
    const updated = await c.call<{ info: WireInfo }>('Update', { info: { name: 'base', labels: { extra: 'yes' } }, update_mask: { paths: ['labels.extra'] } });
    assert.deepEqual(updated.info.labels, { layer: '0', extra: 'yes' });

    await expectCode(c.prepare('default/1/x', 'missing'), grpc.status.NOT_FOUND, 'missing parent');
    await expectCode(c.prepare('default/3/view', 'base'), grpc.status.ALREADY_EXISTS, 'existing key');
    await expectCode(c.commit('base', 'default/3/view'), grpc.status.FAILED_PRECONDITION, 'commit of a view');
    await expectCode(c.remove('base'), grpc.status.FAILED_PRECONDITION, 'parent with children');
    await expectCode(c.stat('nope'), grpc.status.NOT_FOUND, 'stat of nothing');
    await expectCode(c.call('Update', { info: { name: 'base', labels: {} }, update_mask: { paths: ['kind'] } }), grpc.status.INVALID_ARGUMENT, 'immutable field');

    for (const key of ['default/3/view', 'default/4/view1', 'upper', 'base']) await c.remove(key);
    assert.deepEqual(await c.list(), []);
    assert.deepEqual(await readdir(join(dirs.root, 'snapshots')), []);
    await c.call('Cleanup', {});
    assert.equal(await stopServe(serve), 0, serve.log());
    assert.equal(existsSync(dirs.socket), false, 'socket removed');
    assert.deepEqual(mountsUnder(dirs.root), []);
  });

  /** Prepares every layer of `image` remotely, checking what containerd 1.6 checks; returns the top chain ID. */
  async function prepareRemoteChain(c: SnapshotsClient, image: Image, keyBase: number): Promise<string> {
    let parent = '';
    for (let i = 0; i < image.layers.length; i++) {
      await expectCode(c.prepare(`default/${keyBase + i}/extract-${i}`, parent, remoteLabels(image, i)), grpc.status.ALREADY_EXISTS, `layer ${i}`);
      const info = await c.stat(image.chains[i]!);
      assert.deepEqual([info.kind, info.parent], ['COMMITTED', parent]);
      assert.equal(info.labels[LABEL_REF], image.chains[i]);
      const found = await c.list([`labels."${LABEL_REF}"==${image.chains[i]},parent=="${parent}"`]);
      assert.deepEqual(found.map((f) => f.name), [image.chains[i]], 'the lookup containerd 1.6 makes after ALREADY_EXISTS');
      parent = image.chains[i]!;
    }
    return parent;
  }

  /** Removes the chain top-down and checks that its mounts, loop devices, tables and cached chunks are gone. */
  async function removeChainAndCheck(c: SnapshotsClient, image: Image, dirs: { root: string; cache: string }): Promise<void> {
    await expectCode(c.remove(image.chains[0]!), grpc.status.FAILED_PRECONDITION, 'parent with children');
    for (const chain of [...image.chains].reverse()) await c.remove(chain);
    assert.deepEqual(await c.list(), []);
    assert.deepEqual(mountsUnder(dirs.root), []);
    assert.deepEqual(loopsUnder(dirs.root), []);
    assert.deepEqual(await readdir(join(dirs.root, 'layers')), []);
    for (const layer of image.layers) {
      assert.equal(existsSync(join(dirs.cache, 'chunks/v1/sha256', layer.digest.slice('sha256:'.length))), false, `cached chunks of ${layer.digest}`);
    }
  }

  test('remote layers: ALREADY_EXISTS, lazy reads, clean restart, serve crash with containers kept alive by the FUSE manager, crash of both, removal', async () => {
    const dirs = { socket: join(base, 'lazy/sock'), root: join(base, 'lazy/root'), cache: join(base, 'lazy/cache') };
    roots.push(dirs.root);
    const port = await freePort();
    const metricsUrl = `http://127.0.0.1:${port}/metrics`;
    const metricsArgs = ['--metrics-address', `127.0.0.1:${port}`];
    let serve = await startServe(dirs, metricsArgs);
    serves.push(serve);
    let c = new SnapshotsClient(dirs.socket);
    clients.push(c);
    const reconnect = (): void => {
      c.close();
      c = new SnapshotsClient(dirs.socket);
      clients.push(c);
    };
    const mnt = join(base, 'lazy/mnt');
    assert.match(serve.log(), /started the FUSE manager/);
    const top = await prepareRemoteChain(c, lazy, 10);
    assert.match(serve.log(), /mounted lazily as snapshot/);
    assert.equal((await stat(dirs.socket)).mode & 0o777, 0o600, 'socket mode');

    // A container on top of the remote chain: one small file read fetches little of the image.
    const ctrMounts = await c.prepare('default/20/ctr', top);
    assert.equal(ctrMounts[0]!.type, 'overlay');
    await mountSpec(ctrMounts, join(mnt, 'ctr'));
    assert.equal(await readFile(join(mnt, 'ctr/big/small.txt'), 'utf8'), 'a small file next to a big one\n');
    let metrics = await fetchText(metricsUrl);
    const fetched = metricSum(metrics, 'erofs_lazy_fetched_bytes_total');
    const blobs = metricSum(metrics, 'erofs_lazy_layer_blob_bytes');
    assert.ok(fetched > 0 && fetched < 0.15 * blobs, `fetched ${fetched} of ${blobs} bytes`);
    assert.equal(metricSum(metrics, 'erofs_lazy_remote_snapshots'), 3);
    assert.match(metrics, /erofs_lazy_read_latency_seconds_bucket\{layer="sha256:[0-9a-f]{64}",le="\+Inf"\} [1-9]/);

    // Layers that are not seekable go the ordinary way even with the remote labels.
    const plainMounts = await c.prepare('default/22/extract-plain', '', remoteLabels(plain, 0));
    assert.equal(plainMounts[0]!.type, 'bind');
    assert.equal((await c.stat('default/22/extract-plain')).kind, 'ACTIVE');
    assert.match(serve.log(), /is not lazy: media type application\/vnd\.oci\.image\.layer\.v1\.tar\+gzip/);
    await c.remove('default/22/extract-plain');

    // A clean stop (SIGTERM) unmounts everything and stops the FUSE manager; the next start mounts again.
    await umount(join(mnt, 'ctr'));
    const manager1 = managerPid(dirs.root);
    assert.ok(manager1 !== undefined && processAlive(manager1));
    assert.equal(await stopServe(serve), 0, serve.log());
    assert.deepEqual(mountsUnder(dirs.root), []);
    assert.deepEqual(loopsUnder(dirs.root), []);
    assert.equal(processAlive(manager1), false, 'the FUSE manager stopped with serve');
    serve = await startServe(dirs, metricsArgs);
    serves.push(serve);
    reconnect();
    assert.match(serve.log(), /3 remote snapshots mounted again/);
    assert.doesNotMatch(serve.log(), /left by a previous run/);

    // serve crashes while a container runs: the FUSE manager keeps its layers readable, also data never read.
    await mountSpec(await c.mounts('default/20/ctr'), join(mnt, 'ctr'));
    const manager2 = managerPid(dirs.root)!;
    c.close();
    await stopServe(serve, 'SIGKILL');
    assert.ok(processAlive(manager2), 'the FUSE manager outlives serve');
    assert.equal(sha256(await readFile(join(mnt, 'ctr/big/blob.bin'))), bigSha, 'read while serve is down');
    serve = await startServe(dirs, metricsArgs);
    serves.push(serve);
    reconnect();
    assert.match(serve.log(), new RegExp(`adopting the FUSE manager of a previous run \\(pid ${manager2}\\) serving 3 layers`));
    assert.match(serve.log(), /3 remote snapshots mounted again/);
    assert.equal(await readFile(join(mnt, 'ctr/etc/config'), 'utf8'), 'key=value\n', 'the running container still reads');
    await mountSpec(await c.mounts('default/20/ctr'), join(mnt, 'ctr2'));
    await umount(join(mnt, 'ctr'));
    assert.deepEqual(diffTrees(await snapshotTree(expected, { skipRoot: true }), await snapshotTree(join(mnt, 'ctr2'), { skipRoot: true })), []);
    await writeFile(join(mnt, 'ctr2/written-by-container'), 'rw upper\n');
    await mountSpec(await c.view('default/21/view', top), join(mnt, 'view'));
    assert.equal(await readFile(join(mnt, 'view/etc/added'), 'utf8'), 'added by the upper layer\n');
    await umount(join(mnt, 'view'));
    assert.ok(metricSum(await fetchText(metricsUrl), 'erofs_lazy_cache_hits_total') > 0);

    // Both crash, and the registry is gone: the remote snapshots come back from the saved tables and cache.
    c.close();
    await stopServe(serve, 'SIGKILL');
    process.kill(manager2, 'SIGKILL');
    await registry!.stop({ keepData: true });
    serve = await startServe(dirs, metricsArgs);
    serves.push(serve);
    reconnect();
    assert.match(serve.log(), /left by a previous run/);
    assert.match(serve.log(), /started the FUSE manager/);
    assert.match(serve.log(), /3 remote snapshots mounted again/);
    assert.equal((await c.stat(top)).kind, 'COMMITTED');
    assert.equal((await c.list()).length, 5, 'three layers, the container and the view');
    await umount(join(mnt, 'ctr2')).catch(() => execFileAsync('umount', ['-l', join(mnt, 'ctr2')]));
    await mountSpec(await c.mounts('default/20/ctr'), join(mnt, 'ctr3'));
    assert.equal(await readFile(join(mnt, 'ctr3/written-by-container'), 'utf8'), 'rw upper\n');
    const exclude = ['written-by-container'];
    assert.deepEqual(diffTrees(await snapshotTree(expected, { skipRoot: true, exclude }), await snapshotTree(join(mnt, 'ctr3'), { skipRoot: true, exclude })), []);
    metrics = await fetchText(metricsUrl);
    assert.equal(metricSum(metrics, 'erofs_lazy_fetched_bytes_total'), 0, 'nothing fetched after the restart');
    assert.ok(metricSum(metrics, 'erofs_lazy_cache_hits_total') > 0);

    // With the registry down a new remote Prepare falls back to the ordinary path.
    const fallback = await c.prepare('default/23/extract-down', '', { ...remoteLabels(lazy, 0), [LABEL_REF]: 'sha256:not-yet-known' });
    assert.equal(fallback[0]!.type, 'bind');
    assert.match(serve.log(), /remote mount failed .*containerd will download it/);
    await c.remove('default/23/extract-down');

    // Remove everything: mounts, loop devices, saved tables and cached chunks go.
    await umount(join(mnt, 'ctr3'));
    await c.remove('default/21/view');
    await c.remove('default/20/ctr');
    await removeChainAndCheck(c, lazy, dirs);
    assert.equal(metricSum(await fetchText(metricsUrl), 'erofs_lazy_remote_snapshots'), 0);
    await registry!.restart();

    // The FUSE manager dying under a running serve makes serve exit (for its supervisor to start it again).
    const manager3 = managerPid(dirs.root)!;
    process.kill(manager3, 'SIGKILL');
    assert.equal(await withTimeout(serve.exited, 15_000, 'serve exit after its FUSE manager died'), 1);
    assert.match(serve.log(), /the FUSE manager \(pid \d+\) is gone/);
    serve = await startServe(dirs, metricsArgs);
    serves.push(serve);
    const manager4 = managerPid(dirs.root)!;
    assert.notEqual(manager4, manager3);
    assert.equal(await stopServe(serve), 0, serve.log());
    assert.deepEqual(mountsUnder(dirs.root), []);
    assert.equal(processAlive(manager4), false);
  });

  test('--no-fuse-manager: layers served by serve itself, mounted again after a crash from the saved data', async () => {
    const dirs = { socket: join(base, 'inproc/sock'), root: join(base, 'inproc/root'), cache: join(base, 'inproc/cache') };
    roots.push(dirs.root);
    let serve = await startServe(dirs, ['--no-fuse-manager']);
    serves.push(serve);
    let c = new SnapshotsClient(dirs.socket);
    clients.push(c);
    const mnt = join(base, 'inproc/mnt');
    const top = await prepareRemoteChain(c, lazy, 30);
    assert.equal(managerPid(dirs.root), undefined, 'no FUSE manager');
    await mountSpec(await c.prepare('default/40/ctr', top), join(mnt, 'ctr'));
    assert.equal(sha256(await readFile(join(mnt, 'ctr/big/blob.bin'))), bigSha);

    c.close();
    await stopServe(serve, 'SIGKILL');
    await registry!.stop({ keepData: true });
    try {
      serve = await startServe(dirs, ['--no-fuse-manager']);
      serves.push(serve);
      c = new SnapshotsClient(dirs.socket);
      clients.push(c);
      assert.match(serve.log(), /left by a previous run: detached FUSE/);
      assert.match(serve.log(), /3 remote snapshots mounted again/);
      await umount(join(mnt, 'ctr')).catch(() => execFileAsync('umount', ['-l', join(mnt, 'ctr')]));
      await mountSpec(await c.mounts('default/40/ctr'), join(mnt, 'ctr2'));
      assert.equal(sha256(await readFile(join(mnt, 'ctr2/big/blob.bin'))), bigSha, 'from the disk cache');
      await umount(join(mnt, 'ctr2'));
      await c.remove('default/40/ctr');
      await removeChainAndCheck(c, lazy, dirs);
    } finally {
      await registry!.restart();
    }
    assert.equal(await stopServe(serve), 0, serve.log());
    assert.deepEqual(mountsUnder(dirs.root), []);
  });

  test('a prefetch profile stored with the image, and --prefetch-path, are fetched as soon as their layer is mounted', async () => {
    const dirs = { socket: join(base, 'pf/sock'), root: join(base, 'pf/root'), cache: join(base, 'pf/cache') };
    roots.push(dirs.root);
    const top = lazy.layers.length - 1;
    const chunks = [3, 4, 5, 9, 10];
    const profilePath = join(base, 'pf-profile.json');
    await mkdir(join(base, 'pf'), { recursive: true });
    const profile = {
      mediaType: 'application/vnd.erofs-lazy.prefetch-profile.v1+json',
      version: 1,
      image: lazy.manifestDigest,
      layers: [lazy.layers[top]!.digest],
      chunks: chunks.map((chunk) => [0, chunk]),
    };
    await writeFile(profilePath, JSON.stringify(profile));
    const pushed = await runCli(['profile', 'push', lazy.ref, profilePath]);
    assert.equal(pushed.code, 0, pushed.stderr);
    const port = await freePort();
    const serve = await startServe(dirs, ['--no-fuse-manager', '--metrics-address', `127.0.0.1:${port}`, '--prefetch-path', '/big/blob.bin', '--prefetch-path', '/no/such']);
    serves.push(serve);
    const c = new SnapshotsClient(dirs.socket);
    clients.push(c);
    await prepareRemoteChain(c, lazy, 70);
    const until = Date.now() + SERVE_READY_TIMEOUT_MS;
    while (!/prefetched \d+ chunks/.test(serve.log()) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    assert.match(serve.log(), new RegExp(`layer ${lazy.layers[top]!.digest}: prefetched ${chunks.length} chunks of the image's profile`));
    // /big/blob.bin (24 MiB) lives in the top layer only: about 96 chunks of 256 KiB there, none elsewhere.
    while (!/prefetched \d+ chunks for the prefetch paths/.test(serve.log()) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    const pathLines = serve.log().split('\n').filter((l) => l.includes('for the prefetch paths'));
    assert.equal(pathLines.length, 1, serve.log());
    assert.match(pathLines[0]!, new RegExp(`layer ${lazy.layers[top]!.digest}: prefetched (9[6-9]|1[0-9][0-9]) chunks`));
    const metrics = await fetchText(`http://127.0.0.1:${port}/metrics`);
    assert.ok(metricSum(metrics, 'erofs_lazy_fetched_bytes_total') > 0, 'chunks fetched before anything was read');
    for (const chain of [...lazy.chains].reverse()) await c.remove(chain);
    assert.equal(await stopServe(serve), 0, serve.log());
  });
});
