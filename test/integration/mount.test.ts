// End to end for `erofs-lazy mount`: real registry, real FUSE, loop devices, erofs and overlayfs.
// Every test mounts with its own state and cache dirs and checks that nothing is left behind.
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { openImageStore } from '../../src/fetch/index.js';
import type { MountStats } from '../../src/mount/stats.js';
import { buildImageFromDirs, pseudoRandomBytes } from '../../src/sample/build.js';
import { MEDIA_TYPE } from '../../src/oci/types.js';
import { runCli } from '../helpers/cli.js';
import { applyLayersOci, writeTestLayers } from '../helpers/images.js';
import { startFaultProxy } from '../helpers/faultproxy.js';
import { startRegistry } from '../helpers/registry.js';
import type { TestRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/tmp.js';
import { assertNothingLeft, mountImage } from '../helpers/mountcli.js';
import type { MountHandle } from '../helpers/mountcli.js';
import { diffTrees, snapshotTree } from '../helpers/tree.js';

const execFileAsync = promisify(execFile);
const BIG_FILE_SIZE = 120 * 1024 * 1024;
const SMALL_FILES = 40;
/** Short read deadline for the fault tests (seconds). */
const FAULT_READ_TIMEOUT_S = 4;
/** How long reads may take to notice that the registry is back. */
const RECOVERY_WAIT_S = 5;

/** Reads 4 KiB of big.bin at `mib` MiB and checks them against the source bytes. */
async function readBigAt(fh: FileHandle, big: Buffer, mib: number): Promise<void> {
  const buf = Buffer.alloc(4096);
  const { bytesRead } = await fh.read(buf, 0, buf.length, mib * 1024 * 1024);
  assert.equal(bytesRead, buf.length);
  assert.ok(buf.equals(big.subarray(mib * 1024 * 1024, mib * 1024 * 1024 + 4096)), `bytes at ${mib} MiB`);
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

describe('erofs-lazy mount', () => {
  let registry: TestRegistry;
  let work: string;
  let layers: string[];
  const cleanups: Array<() => unknown> = [];
  let smallRef: string;
  let bigRef: string;
  let plainRef: string;
  const bigFiles = new Map<string, string>();

  before(async () => {
    registry = await startRegistry();
    work = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) });
    layers = await writeTestLayers(join(work, 'src'));
    const srcStore = openImageStore(`${registry.host}/mount/small:src`, {});
    await buildImageFromDirs(srcStore, layers, { workDir: work });
    await srcStore.close();
    plainRef = `${registry.host}/mount/small:src`;
    smallRef = `${registry.host}/mount/small:erofs`;
    const c1 = await runCli(['convert', plainRef, smallRef, '--chunk-size', String(256 * 1024)]);
    assert.equal(c1.code, 0, c1.stderr);

    // A single-layer image of > 64 MiB: one big file and many small ones.
    const bigDir = join(work, 'big');
    await mkdir(join(bigDir, 'small'), { recursive: true });
    const big = pseudoRandomBytes(BIG_FILE_SIZE, 'mount-big');
    await writeFile(join(bigDir, 'big.bin'), big);
    bigFiles.set('big.bin', sha256(big));
    for (let i = 0; i < SMALL_FILES; i++) {
      const data = pseudoRandomBytes(1000 + i * 997, `small-${i}`);
      await writeFile(join(bigDir, 'small', `f${i}`), data);
      bigFiles.set(`small/f${i}`, sha256(data));
    }
    const bigStore = openImageStore(`${registry.host}/mount/big:src`, {});
    await buildImageFromDirs(bigStore, [bigDir], { workDir: work });
    await bigStore.close();
    bigRef = `${registry.host}/mount/big:erofs`;
    const c2 = await runCli(['convert', `${registry.host}/mount/big:src`, bigRef]);
    assert.equal(c2.code, 0, c2.stderr);
  });
  after(async () => {
    await registry?.stop();
    for (const c of cleanups.reverse()) await c();
  });

  test('a converted multi-layer image mounts and shows exactly the source tree, whiteouts applied', async (t) => {
    const m = await mountImage(t, smallRef);
    const expected = join(await tempDir(t), 'expected');
    await mkdir(expected);
    applyLayersOci(layers, expected);
    assert.deepEqual(diffTrees(await snapshotTree(expected), await snapshotTree(m.mountpoint)), []);
    const s = await m.stats();
    assert.equal(s.layers.length, 2);
    assert.ok(s.layers.every((l) => l.lazy));
    assert.ok(s.total.bytesServed > 0 && s.total.bytesFetched > 0);
    await m.umount();
  });

  test('reading one small file fetches under 10% of the blob; a warm disk cache fetches nothing', async (t) => {
    const base = await tempDir(t);
    const cacheDir = join(base, 'shared-cache');
    const m1 = await mountImage(t, bigRef, [], { cacheDir });
    const data = await readFile(join(m1.mountpoint, 'small/f7'));
    assert.equal(sha256(data), bigFiles.get('small/f7'));
    const s1 = await m1.stats();
    assert.ok(s1.total.bytesFetched > 0);
    assert.ok(s1.total.bytesFetched < 0.1 * s1.total.blobSize, `fetched ${s1.total.bytesFetched} of ${s1.total.blobSize}`);
    await m1.umount();

    execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
    const m2 = await mountImage(t, bigRef, [], { cacheDir });
    assert.equal(sha256(await readFile(join(m2.mountpoint, 'small/f7'))), bigFiles.get('small/f7'));
    const s2 = await m2.stats();
    assert.equal(s2.total.bytesFetched, 0, 'warm cache: nothing fetched');
    assert.ok(s2.total.diskHits > 0);
    await m2.umount();
  });

  test('16 concurrent readers of different and overlapping files all get correct data', async (t) => {
    const m = await mountImage(t, bigRef);
    const names = [...bigFiles.keys()];
    const picks = Array.from({ length: 16 }, (_, i) => names[(i * 7) % names.length]!);
    picks[0] = 'big.bin';
    picks[1] = 'big.bin';
    const results = await Promise.all(
      picks.map((name) => execFileAsync('sha256sum', [join(m.mountpoint, name)], { maxBuffer: 1 << 20 }).then((r) => r.stdout.split(' ')[0])),
    );
    picks.forEach((name, i) => assert.equal(results[i], bigFiles.get(name), name));
    await m.umount();
  });

  test('registry stopped: uncached reads fail with EIO within the deadline, cached ones work, and reads recover', async (t) => {
    const m = await mountImage(t, bigRef, ['--read-timeout', String(FAULT_READ_TIMEOUT_S)]);
    assert.equal(sha256(await readFile(join(m.mountpoint, 'small/f1'))), bigFiles.get('small/f1'));
    await registry.stop({ keepData: true });
    try {
      const started = Date.now();
      await assert.rejects(readFile(join(m.mountpoint, 'big.bin')), (err: NodeJS.ErrnoException) => err.code === 'EIO');
      const elapsed = (Date.now() - started) / 1000;
      assert.ok(elapsed < FAULT_READ_TIMEOUT_S * 3 + 5, `EIO after ${elapsed} s`);
      assert.equal(sha256(await readFile(join(m.mountpoint, 'small/f1'))), bigFiles.get('small/f1'));
    } finally {
      await registry.restart();
    }
    // Recovery is noticed by the next probe (at most RECOVERY_WAIT_S later), with no remount.
    let recovered: Buffer | undefined;
    for (const started = Date.now(); !recovered && Date.now() - started < RECOVERY_WAIT_S * 1000; ) {
      recovered = await readFile(join(m.mountpoint, 'big.bin')).catch(() => undefined);
      if (!recovered) await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(recovered, `reads did not recover within ${RECOVERY_WAIT_S} s`);
    assert.equal(sha256(recovered), bigFiles.get('big.bin'));
    const s = await m.stats();
    assert.ok(s.total.readErrors > 0);
    await m.umount();
  });

  test('a corrupted blob byte in the registry storage gives EIO and a verification failure', async (t) => {
    const store = openImageStore(bigRef, {});
    const resolved = await store.resolve();
    await store.close();
    const layer = resolved.manifest.layers[0]!;
    const hex = layer.digest.slice('sha256:'.length);
    const blobPath = join(registry.dir, 'data/docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
    const original = await readFile(blobPath);
    const fh = await open(blobPath, 'r+');
    const at = Math.floor(original.length / 2);
    try {
      await fh.write(Buffer.from([original[at]! ^ 0x5a]), 0, 1, at);
    } finally {
      await fh.close();
    }
    try {
      const m = await mountImage(t, bigRef, ['--read-timeout', String(FAULT_READ_TIMEOUT_S)]);
      await assert.rejects(readFile(join(m.mountpoint, 'big.bin')), (err: NodeJS.ErrnoException) => err.code === 'EIO');
      const s = await m.stats();
      assert.ok(s.total.verificationFailures >= 1, JSON.stringify(s.total));
      await m.umount();
    } finally {
      await writeFile(blobPath, original);
    }
  });

  test('--rw adds a writable layer that is discarded at unmount', async (t) => {
    const base = await tempDir(t);
    const stateDir = join(base, 'state');
    const m = await mountImage(t, smallRef, ['--rw'], { stateDir });
    await writeFile(join(m.mountpoint, 'etc/written'), 'scratch');
    assert.equal(await readFile(join(m.mountpoint, 'etc/written'), 'utf8'), 'scratch');
    await m.umount();
    const again = await mountImage(t, smallRef, [], { stateDir });
    await assert.rejects(stat(join(again.mountpoint, 'etc/written')), { code: 'ENOENT' });
    await again.umount();
  });

  test('a busy mount refuses to unmount with a clear message, and a later umount finishes', async (t) => {
    const m = await mountImage(t, smallRef);
    const holder = spawn('sleep', ['60'], { cwd: join(m.mountpoint, 'etc'), stdio: 'ignore' });
    t.after(() => holder.kill('SIGKILL'));
    await new Promise((r) => setTimeout(r, 200));
    const busy = await runCli(['umount', m.mountpoint, '--state-dir', m.stateDir]);
    assert.notEqual(busy.code, 0);
    assert.match(busy.stderr, /busy/);
    assert.equal(busy.stderr.trim().split('\n').length, 1, busy.stderr);
    assert.equal(await readFile(join(m.mountpoint, 'etc/config'), 'utf8'), 'key=value\n', 'still served');
    holder.kill('SIGKILL');
    await new Promise((r) => holder.once('exit', r));
    await m.umount();
  });

  test('umount --all cleans up after the serving process was killed', async (t) => {
    const m = await mountImage(t, smallRef);
    const state = JSON.parse(await readFile(join(m.stateDir, 'mounts', (await readdir(join(m.stateDir, 'mounts')))[0]!, 'state.json'), 'utf8')) as { pid: number };
    process.kill(state.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    const res = await runCli(['umount', '--all', '--state-dir', m.stateDir]);
    assert.equal(res.code, 0, res.stderr);
    await assertNothingLeft([join(m.mountpoint, '..'), m.stateDir]);
  });

  test('an image with plain tar+gzip layers is mounted whole, saying why it is not lazy', async (t) => {
    const m = await mountImage(t, plainRef);
    const expected = join(await tempDir(t), 'expected');
    await mkdir(expected);
    applyLayersOci(layers, expected);
    assert.deepEqual(diffTrees(await snapshotTree(expected), await snapshotTree(m.mountpoint)), []);
    const s = await m.stats();
    assert.ok(s.layers.every((l) => !l.lazy && /not seekable|media type/.test(l.notLazyReason ?? '')));
    await m.umount();
  });

  test('a damaged disk-cache file is detected and fetched again, never served', async (t) => {
    const base = await tempDir(t);
    const cacheDir = join(base, 'cache');
    const m1 = await mountImage(t, bigRef, [], { cacheDir });
    assert.equal(sha256(await readFile(join(m1.mountpoint, 'small/f3'))), bigFiles.get('small/f3'));
    await m1.umount();
    // Flip one byte in the middle of every cached chunk file.
    const files = execFileSync('find', [join(cacheDir, 'chunks'), '-type', 'f'], { encoding: 'utf8' }).split('\n').filter(Boolean);
    assert.ok(files.length > 0);
    for (const f of files) {
      const bytes = await readFile(f);
      bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
      await writeFile(f, bytes);
    }
    execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
    const m2 = await mountImage(t, bigRef, [], { cacheDir });
    assert.equal(sha256(await readFile(join(m2.mountpoint, 'small/f3'))), bigFiles.get('small/f3'));
    const s = await m2.stats();
    assert.ok(s.diskCache.corruptEntries > 0, 'damaged entries were noticed');
    assert.ok(s.total.bytesFetched > 0, 'and fetched again');
    await m2.umount();
  });

  test('EROFS layers that are not seekable (plain zstd stream, raw) are mounted whole', async (t) => {
    const dir = await tempDir(t);
    // Take the raw EROFS images out of the converted small image, and push them as the other two forms.
    const src = openImageStore(smallRef, {});
    const resolved = await src.resolve();
    const config = JSON.parse((await src.fetchBlob(resolved.manifest.config)).toString()) as { rootfs: { diff_ids: string[] } };
    const dst = openImageStore(`${registry.host}/mount/nonseekable:v1`, {});
    t.after(() => Promise.all([src.close(), dst.close()]));
    const newLayers = [];
    for (const [i, layer] of resolved.manifest.layers.entries()) {
      const blob = join(dir, `l${i}.blob`);
      const raw = join(dir, `l${i}.erofs`);
      await writeFile(blob, await src.fetchBlob(layer));
      execFileSync('zstd', ['-q', '-d', '-f', blob, '-o', raw]);
      let bytes: Buffer;
      let mediaType: string;
      if (i === 0) {
        execFileSync('zstd', ['-q', '-f', '-3', raw, '-o', `${raw}.zst`]);
        bytes = await readFile(`${raw}.zst`);
        mediaType = MEDIA_TYPE.erofsZstd;
      } else {
        bytes = await readFile(raw);
        mediaType = MEDIA_TYPE.erofs;
      }
      const desc = { mediaType, digest: `sha256:${sha256(bytes)}`, size: bytes.length };
      await dst.pushBlob(desc, { bytes });
      newLayers.push(desc);
    }
    const configBytes = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: config.rootfs.diff_ids } }));
    const configDesc = { mediaType: MEDIA_TYPE.ociConfig, digest: `sha256:${sha256(configBytes)}`, size: configBytes.length };
    await dst.pushBlob(configDesc, { bytes: configBytes });
    await dst.pushManifest(MEDIA_TYPE.ociManifest, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config: configDesc, layers: newLayers })));

    const m = await mountImage(t, `${registry.host}/mount/nonseekable:v1`);
    const expected = join(await tempDir(t), 'expected');
    await mkdir(expected);
    applyLayersOci(layers, expected);
    assert.deepEqual(diffTrees(await snapshotTree(expected), await snapshotTree(m.mountpoint)), []);
    const s = await m.stats();
    assert.deepEqual(s.layers.map((l) => l.lazy), [false, false]);
    assert.match(s.layers[0]!.notLazyReason ?? '', /chunk_table_offset|sequential|annotation/);
    assert.match(s.layers[1]!.notLazyReason ?? '', /media type/);
    const log = await readFile(join(m.stateDir, 'logs', (await readdir(join(m.stateDir, 'logs')))[0]!), 'utf8');
    assert.match(log, /is not lazy/);
    await m.umount();
  });

  test('through a faulty registry link a lazy mount returns exactly the right bytes or EIO, never wrong bytes', async (t) => {
    const proxy = await startFaultProxy({ upstream: registry.host });
    t.after(() => proxy.close());
    const blobs = /\/v2\/.+\/blobs\//;
    const ref = `${proxy.host}/mount/big:erofs`;
    const m = await mountImage(t, ref, ['--read-timeout', String(FAULT_READ_TIMEOUT_S)]);
    const big = pseudoRandomBytes(BIG_FILE_SIZE, 'mount-big');
    const fh = await open(join(m.mountpoint, 'big.bin'), 'r');
    t.after(() => fh.close().catch(() => undefined));
    // Each positioned read touches a new chunk of big.bin, so each one is a new blob request.
    const readAt = (mib: number): Promise<void> => readBigAt(fh, big, mib);
    // Transient faults the client rides out: a cut body, 503 with Retry-After, 500.
    proxy.setFaults([
      { kind: 'drop-mid-body', path: blobs, afterBytes: 1000, count: 1 },
      { kind: 'status', status: 503, headers: { 'retry-after': '1' }, path: blobs, count: 1 },
      { kind: 'status', status: 500, path: blobs, count: 1 },
    ]);
    for (const mib of [10, 30, 50]) await readAt(mib);
    const s1 = await m.stats();
    assert.ok((s1.registry?.retries ?? 0) >= 2, JSON.stringify(s1.registry));
    // Flipped bytes on every blob read: EIO, counted, and nothing wrong is ever returned.
    proxy.setFaults([{ kind: 'flip-bytes', path: blobs }]);
    await assert.rejects(readAt(70), (err: NodeJS.ErrnoException) => err.code === 'EIO');
    assert.ok((await m.stats()).total.verificationFailures >= 1);
    proxy.clearFaults();
    let recovered = false;
    for (const started = Date.now(); !recovered && Date.now() - started < RECOVERY_WAIT_S * 1000; ) {
      recovered = await readAt(70).then(() => true, () => false);
    }
    assert.ok(recovered, 'reads recover once the link is clean');
    // A redirect to blob storage: followed, and the rest of the file comes through the remembered target.
    proxy.setFaults([{ kind: 'redirect', path: blobs, count: 1 }]);
    await readAt(90);
    assert.equal(sha256(await readFile(join(m.mountpoint, 'big.bin'))), bigFiles.get('big.bin'));
    const s2 = await m.stats();
    assert.ok((s2.registry?.redirectsFollowed ?? 0) >= 1, JSON.stringify(s2.registry));
    assert.equal(proxy.storage.authorizationHeadersSeen, 0);
    await fh.close();
    await m.umount();
  });

  test('a stalled registry, 429s and a registry that ignores Range: right bytes or EIO within the deadline', async (t) => {
    const proxy = await startFaultProxy({ upstream: registry.host });
    t.after(() => proxy.close());
    const blobs = /\/v2\/.+\/blobs\//;
    const m = await mountImage(t, `${proxy.host}/mount/big:erofs`, ['--read-timeout', String(FAULT_READ_TIMEOUT_S), '--prefetch', 'none']);
    const big = pseudoRandomBytes(BIG_FILE_SIZE, 'mount-big');
    const fh = await open(join(m.mountpoint, 'big.bin'), 'r');
    t.after(() => fh.close().catch(() => undefined));
    const readAt = (mib: number): Promise<void> => readBigAt(fh, big, mib);
    // A registry that stops answering: EIO within the read deadline (plus the kernel's own retry), never a hang.
    proxy.setFaults([{ kind: 'stall', path: blobs }]);
    const started = Date.now();
    await assert.rejects(readAt(20), (err: NodeJS.ErrnoException) => err.code === 'EIO');
    assert.ok(Date.now() - started < (FAULT_READ_TIMEOUT_S * 3 + 2) * 1000, `EIO after ${Date.now() - started} ms`);
    proxy.clearFaults();
    let recovered = false;
    for (const begun = Date.now(); !recovered && Date.now() - begun < RECOVERY_WAIT_S * 1000; ) {
      recovered = await readAt(20).then(() => true, () => false);
    }
    assert.ok(recovered, 'reads recover once the registry answers again');
    // 429 with Retry-After: waited out, right bytes.
    proxy.setFaults([{ kind: 'status', status: 429, headers: { 'retry-after': '1' }, path: blobs, count: 2 }]);
    await readAt(40);
    // A registry that ignores Range: the whole-blob answer is cut after the wanted bytes; right bytes, counted.
    proxy.setFaults([{ kind: 'ignore-range', path: blobs }]);
    await readAt(8);
    const s = await m.stats();
    assert.ok((s.registry?.rangeIgnored ?? 0) >= 1, JSON.stringify(s.registry));
    assert.ok((s.registry?.rangeIgnoredBytes ?? 0) < BIG_FILE_SIZE / 2, 'the whole blob was not downloaded');
    assert.ok((s.registry?.retries ?? 0) >= 1, JSON.stringify(s.registry));
    proxy.clearFaults();
    await fh.close();
    await m.umount();
  });

  test('--hosts-dir: a mount pulls through the mirror named in hosts.toml', async (t) => {
    const mirror = await startFaultProxy({ upstream: registry.host });
    t.after(() => mirror.close());
    const hostsDir = await tempDir(t);
    await mkdir(join(hostsDir, registry.host));
    await writeFile(
      join(hostsDir, registry.host, 'hosts.toml'),
      `server = "http://${registry.host}"\n\n[host."http://${mirror.host}"]\n  capabilities = ["pull", "resolve"]\n`,
    );
    const m = await mountImage(t, smallRef, ['--hosts-dir', hostsDir]);
    assert.equal(await readFile(join(m.mountpoint, 'etc/config'), 'utf8'), 'key=value\n');
    assert.ok(mirror.log.some((r) => r.url.includes('/manifests/')), 'manifest resolved through the mirror');
    assert.ok(mirror.log.some((r) => r.url.includes('/blobs/') && r.range), 'chunks fetched through the mirror');
    await m.umount();
  });

  test('an unreachable registry fails the mount quickly with a clear one-line error', async (t) => {
    const base = await tempDir(t);
    const started = Date.now();
    const res = await runCli(['mount', '127.0.0.1:1/nothing:here', join(base, 'mnt'), '--state-dir', join(base, 'state'), '--cache-dir', join(base, 'cache'), '--mount-timeout', '5']);
    assert.notEqual(res.code, 0);
    assert.match(res.stderr, /unreachable|ECONNREFUSED|no answer/);
    assert.equal(res.stderr.trim().split('\n').length, 1, res.stderr);
    assert.ok(Date.now() - started < 20_000);
    await assertNothingLeft([base]);
  });
});
