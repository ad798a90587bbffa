// The real stack: an EROFS image served from memory as a FUSE file, attached to a read-only loop device
// and mounted as erofs, must show exactly the source tree; also with `mount -o ro,loop` straight on the
// FUSE file. Then measures sequential throughput (printed, not asserted) of a 256 MiB file read through
// FUSE alone and through loop + erofs, with this module's options and with fuse-native's defaults.
//
// This process serves FUSE on its event loop, so nothing here may block it while the mount is read:
// commands run asynchronously, and the tree snapshot (which calls getfattr synchronously) runs in a
// worker thread.
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import { Worker } from 'node:worker_threads';
import { buildErofsImage } from '../../src/convert/mkfs.js';
import { forceUnmountFuse, isFuseMountpoint, LayerFilesystem } from '../../src/fuse/index.js';
import type { LayerFilesystemOptions } from '../../src/fuse/index.js';
import type { LayerFileSource } from '../../src/reader/types.js';
import { tempDir } from '../helpers/tmp.js';
import type { TreeSnapshot } from '../helpers/tree.js';
import { diffTrees, snapshotTree, writeSampleTree } from '../helpers/tree.js';

const MIB = 1024 * 1024;
/** Size of the throughput sample; FUSE_BENCH_MIB overrides it. */
const DEFAULT_BENCH_MIB = 256;
const BENCH_MIB = Number(process.env.FUSE_BENCH_MIB ?? DEFAULT_BENCH_MIB);
/** Simulated per-read latency of a lazy source (e.g. a chunk cache miss on local disk). */
const SLOW_SOURCE_DELAY_MS = 2;
const IMAGE_UUID = '6c6f6f70-6675-7365-8000-000000000001';
const canMount = process.getuid?.() === 0 && existsSync('/dev/fuse') && existsSync('/dev/loop-control');
const skip = canMount ? false : 'needs root, /dev/fuse and loop devices';

function sh(cmd: string, args: string[]): Promise<string> {
  return new Promise((res, rej) => {
    execFile(cmd, args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } }, (err, stdout, stderr) => {
      if (err) rej(new Error(`${cmd} ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else res(stdout);
    });
  });
}

type Cleanup = () => Promise<void>;

/** Cleanup stack registered first (before tempDir's rm); undoes mounts last-first and checks the result. */
function cleanups(t: TestContext): { push(fn: Cleanup): void; watch(dir: string): void } {
  const stack: Cleanup[] = [];
  const watched: string[] = [];
  t.after(async () => {
    const errors: unknown[] = [];
    while (stack.length > 0) {
      try {
        await stack.pop()!();
      } catch (err) {
        errors.push(err);
      }
    }
    const mounts = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').map((l) => l.split(' ')[4] ?? '');
    const left = mounts.filter((p) => watched.some((d) => p === d || p.startsWith(`${d}/`)));
    for (const p of left.reverse()) {
      await sh('umount', ['-l', p]).catch(() => forceUnmountFuse(p).catch((e: unknown) => errors.push(e)));
    }
    if (left.length > 0) errors.push(new Error(`left mounted: ${left.join(', ')}`));
    const loops = await sh('losetup', ['-a']).catch(() => '');
    const leftLoops = loops.split('\n').filter((l) => watched.some((d) => l.includes(d)));
    if (leftLoops.length > 0) errors.push(new Error(`loop devices left: ${leftLoops.join('; ')}`));
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, 'cleanup failed');
  });
  return { push: (fn) => stack.push(fn), watch: (dir) => watched.push(dir) };
}

function memorySource(name: string, data: Buffer, delayMs = 0): LayerFileSource {
  return {
    name,
    size: data.length,
    async read(offset, length) {
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      return data.subarray(offset, Math.min(data.length, offset + length));
    },
  };
}

/** snapshotTree in a worker thread: it runs getfattr synchronously, which must not block this loop. */
function snapshotInWorker(root: string): Promise<TreeSnapshot> {
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.module)
      .then((m) => m.snapshotTree(workerData.root))
      .then((snap) => parentPort.postMessage({ snap }), (err) => parentPort.postMessage({ error: String(err && err.stack || err) }));
  `;
  const module = new URL('../helpers/tree.js', import.meta.url).href;
  return new Promise((res, rej) => {
    const worker = new Worker(code, { eval: true, workerData: { module, root } });
    worker.once('message', (m: { snap?: TreeSnapshot; error?: string }) => {
      void worker.terminate();
      if (m.snap) res(m.snap);
      else rej(new Error(`snapshot of ${root} failed: ${m.error}`));
    });
    worker.once('error', rej);
  });
}

async function mountFuse(t: TestContext, c: ReturnType<typeof cleanups>, mnt: string, sources: LayerFileSource[], options: LayerFilesystemOptions = {}) {
  const fs = new LayerFilesystem(sources, { log: (l) => t.diagnostic(l), ...options });
  await fs.mount(mnt);
  c.push(() => fs.unmount());
  return fs;
}

/** Attaches a read-only loop device; its cleanup (also returned) is idempotent and checks the backing file. */
async function attachLoop(c: ReturnType<typeof cleanups>, file: string): Promise<{ device: string; detach: Cleanup }> {
  const device = (await sh('losetup', ['-r', '--find', '--show', file])).trim();
  assert.match(device, /^\/dev\/loop\d+$/);
  let attached = true;
  const detach = async (): Promise<void> => {
    if (!attached) return;
    attached = false;
    const backing = await readFile(`/sys/block/${device.slice('/dev/'.length)}/loop/backing_file`, 'utf8').catch(() => '');
    if (backing.trim() === file) await sh('losetup', ['-d', device]);
  };
  c.push(detach);
  return { device, detach };
}

/** Mounts erofs read-only; the returned unmount is idempotent and is also run by the cleanup. */
async function mountErofsOn(c: ReturnType<typeof cleanups>, device: string, mnt: string, extra: string[] = []): Promise<Cleanup> {
  await mkdir(mnt, { recursive: true });
  await sh('mount', ['-t', 'erofs', '-o', ['ro', ...extra].join(','), device, mnt]);
  let mounted = true;
  const unmount = async (): Promise<void> => {
    if (!mounted) return;
    mounted = false;
    await sh('umount', [mnt]);
  };
  c.push(unmount);
  return unmount;
}

async function sampleImage(dir: string): Promise<{ src: string; image: Buffer }> {
  const src = join(dir, 'src');
  await writeSampleTree(src);
  const imagePath = join(dir, 'sample.erofs');
  await buildErofsImage(src, imagePath, { uuid: IMAGE_UUID });
  return { src, image: await readFile(imagePath) };
}

test('an EROFS image served through FUSE, a read-only loop device and erofs shows exactly the source tree', { skip }, async (t) => {
  const c = cleanups(t);
  const dir = await tempDir(t, 'erofs-lazy-fuse-erofs-');
  c.watch(dir);
  const { src, image } = await sampleImage(dir);
  const fs = await mountFuse(t, c, join(dir, 'fuse'), [memorySource('layer.erofs', image)]);
  const { device } = await attachLoop(c, fs.pathOf('layer.erofs'));
  assert.equal((await sh('blockdev', ['--getro', device])).trim(), '1', 'read-only loop device');
  assert.equal(Number((await sh('blockdev', ['--getsize64', device])).trim()), image.length);
  const erofs = join(dir, 'erofs');
  await mountErofsOn(c, device, erofs);
  assert.deepEqual(diffTrees(await snapshotTree(src), await snapshotInWorker(erofs)), []);
  const s = fs.stats();
  assert.equal(s.readErrors, 0);
  assert.ok(s.reads > 0, 'erofs read through FUSE');
  t.diagnostic(`erofs mount: ${s.reads} FUSE reads, ${s.bytesRead} bytes, largest ${s.maxReadLength}, image ${image.length} bytes`);
});

test('mount -t erofs -o ro,loop works directly on the FUSE file and cleans its loop device up', { skip }, async (t) => {
  const c = cleanups(t);
  const dir = await tempDir(t, 'erofs-lazy-fuse-erofs-');
  c.watch(dir);
  const { src, image } = await sampleImage(dir);
  const fs = await mountFuse(t, c, join(dir, 'fuse'), [memorySource('layer.erofs', image)]);
  const file = fs.pathOf('layer.erofs');
  const erofs = join(dir, 'erofs');
  const unmountErofs = await mountErofsOn(c, file, erofs, ['loop']);
  assert.match(await sh('losetup', ['-j', file]), /^\/dev\/loop\d+:/, 'mount made a loop device on the FUSE file');
  assert.deepEqual(diffTrees(await snapshotTree(src), await snapshotInWorker(erofs)), []);

  // Undo in order by hand: the auto-clearing loop device goes with the erofs mount, then FUSE unmounts
  // (its busy retry covers the loop device's asynchronous release).
  await unmountErofs();
  await fs.unmount();
  assert.equal(await isFuseMountpoint(join(dir, 'fuse')), false);
  assert.ok(!(await sh('losetup', ['-a'])).includes(dir), 'no loop device left on the FUSE file');
});

interface Measurement {
  label: string;
  mibPerSec: number;
  seconds: number;
  reads: number;
  maxReadLength: number;
  maxReadsInFlight: number;
}

/** dd bs=1M of `path` to /dev/null; returns dd's own elapsed seconds. */
function ddSeconds(path: string, expectBytes: number): Promise<number> {
  return new Promise((res, rej) => {
    const child = spawn('dd', [`if=${path}`, 'of=/dev/null', 'bs=1M'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => {
      const m = /^(\d+) bytes .* copied, ([\d.]+) s/m.exec(err);
      if (code !== 0 || !m) return rej(new Error(`dd ${path} exited ${code}: ${err.trim()}`));
      if (Number(m[1]) !== expectBytes) return rej(new Error(`dd ${path} copied ${m[1]} bytes, expected ${expectBytes}`));
      res(Number(m[2]));
    });
  });
}

async function sha256Of(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * MIB })) h.update(chunk as Buffer);
  return h.digest('hex');
}

test(`sequential throughput of a ${BENCH_MIB} MiB file through FUSE, and through loop + erofs (printed)`, { skip, timeout: 600_000 }, async (t) => {
  const c = cleanups(t);
  const dir = await tempDir(t, 'erofs-lazy-fuse-bench-');
  c.watch(dir);
  const src = join(dir, 'src');
  await mkdir(src);
  const bigBytes = BENCH_MIB * MIB;
  const fh = await open(join(src, 'big'), 'w');
  const want = createHash('sha256');
  for (let done = 0; done < bigBytes; done += 16 * MIB) {
    const piece = randomBytes(Math.min(16 * MIB, bigBytes - done));
    want.update(piece);
    await fh.write(piece);
  }
  await fh.close();
  await writeFile(join(src, 'small'), 'small file\n');
  const wantSha = want.digest('hex');
  const imagePath = join(dir, 'bench.erofs');
  await buildErofsImage(src, imagePath, { uuid: IMAGE_UUID });
  const image = await readFile(imagePath);
  const imageSha = createHash('sha256').update(image).digest('hex');

  const configs: Array<{ name: string; options: LayerFilesystemOptions }> = [
    { name: 'fuse-native defaults', options: { rawOptions: [], readAheadKiB: 0 } },
    { name: 'erofs-lazy options', options: {} },
  ];
  const results: Measurement[] = [];
  let run = 0;
  for (const delay of [0, SLOW_SOURCE_DELAY_MS]) {
    for (const cfg of configs) {
      // A fresh FUSE mount per measurement: its page cache starts empty.
      const fuseDir = join(dir, `fuse${run}`);
      const fs = await mountFuse(t, c, fuseDir, [memorySource('layer.erofs', image, delay)], cfg.options);
      const file = fs.pathOf('layer.erofs');
      const rawSeconds = await ddSeconds(file, image.length);
      const raw = fs.stats();
      if (delay === 0 && cfg.options.rawOptions === undefined) assert.equal(await sha256Of(file), imageSha, 'FUSE file content');
      await fs.unmount();

      fs.resetStats();
      await fs.mount(fuseDir);
      const loop = await attachLoop(c, file);
      const erofs = join(dir, `erofs${run}`);
      const unmountErofs = await mountErofsOn(c, loop.device, erofs);
      const erofsSeconds = await ddSeconds(join(erofs, 'big'), bigBytes);
      const viaErofs = fs.stats();
      if (delay === 0 && cfg.options.rawOptions === undefined) assert.equal(await sha256Of(join(erofs, 'big')), wantSha, 'file content through erofs');
      assert.equal(raw.readErrors + viaErofs.readErrors, 0);
      await unmountErofs();
      await loop.detach();
      await fs.unmount();
      run++;

      const label = `${cfg.name}, source latency ${delay} ms`;
      results.push({ label: `${label}: FUSE file`, mibPerSec: image.length / MIB / rawSeconds, seconds: rawSeconds, reads: raw.reads, maxReadLength: raw.maxReadLength, maxReadsInFlight: raw.maxReadsInFlight });
      results.push({ label: `${label}: loop + erofs`, mibPerSec: bigBytes / MIB / erofsSeconds, seconds: erofsSeconds, reads: viaErofs.reads, maxReadLength: viaErofs.maxReadLength, maxReadsInFlight: viaErofs.maxReadsInFlight });
    }
  }
  for (const r of results) {
    const line = `${r.label}: ${r.mibPerSec.toFixed(0)} MiB/s (${r.seconds.toFixed(3)} s), ${r.reads} FUSE reads, largest ${r.maxReadLength / 1024} KiB, up to ${r.maxReadsInFlight} in flight`;
    t.diagnostic(line);
  }
  assert.equal(results.length, 8);
  for (const r of results) assert.ok(r.maxReadLength > 0 && r.maxReadLength <= 1 * MIB, r.label);
});
