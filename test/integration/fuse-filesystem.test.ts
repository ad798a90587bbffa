// LayerFilesystem through the kernel, with in-memory sources: directory listing, attributes, reads at
// arbitrary offsets, refused writes, ENOENT, EIO for failing or hung sources, concurrent reads (in this
// process and from many processes), busy and clean unmounts, and recovery from a crashed server's mount.
// Everything is read with asynchronous fs calls only: the FUSE handlers run on this process's event loop.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { access, constants, mkdir, open, readdir, readFile, stat, statfs, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { forceUnmountFuse, FuseBusyError, isFuseMountpoint, LayerFilesystem } from '../../src/fuse/index.js';
import type { LayerFilesystemOptions } from '../../src/fuse/index.js';
import type { LayerFileSource } from '../../src/reader/types.js';
import { tempDir } from '../helpers/tmp.js';

const FUSE_MAGIC = 0x65735546;
const KIB = 1024;
const MIB = 1024 * KIB;
const canMount = process.getuid?.() === 0 && existsSync('/dev/fuse');
const skip = canMount ? false : 'needs root and /dev/fuse';

type Cleanup = () => Promise<void>;

/**
 * A cleanup stack whose hook is registered before anything else of the test (so before tempDir's rm):
 * it undoes mounts last-first, then checks that nothing is left mounted under the watched directories.
 */
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
    const info = await readFile('/proc/self/mountinfo', 'utf8');
    const left = info
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((p) => watched.some((d) => p === d || p.startsWith(`${d}/`)));
    for (const p of left.reverse()) await forceUnmountFuse(p).catch((e: unknown) => errors.push(e));
    if (left.length > 0) errors.push(new Error(`left mounted: ${left.join(', ')}`));
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, 'cleanup failed');
  });
  return { push: (fn) => stack.push(fn), watch: (dir) => watched.push(dir) };
}

/** Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
function patternBytes(size: number, seed: number): Buffer {
  const buf = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf[i] = x & 0xff;
  }
  return buf;
}

function memorySource(name: string, data: Buffer, opts: { delayMs?: number; maxPiece?: number } = {}): LayerFileSource {
  return {
    name,
    size: data.length,
    async read(offset, length) {
      if (opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs));
      const end = Math.min(data.length, offset + Math.min(length, opts.maxPiece ?? length));
      return data.subarray(offset, end);
    },
  };
}

async function mountLayers(t: TestContext, sources: LayerFileSource[], options: LayerFilesystemOptions = {}) {
  const c = cleanups(t);
  const dir = await tempDir(t, 'erofs-lazy-fuse-');
  c.watch(dir);
  const mnt = join(dir, 'mnt');
  const log: string[] = [];
  const fs = new LayerFilesystem(sources, { log: (line) => log.push(line), ...options });
  await fs.mount(mnt);
  c.push(() => fs.unmount());
  return { fs, mnt, dir, log, cleanup: c };
}

async function readAt(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

function errorCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

/** Seeded offsets/lengths; includes ends, 128 KiB boundaries, page boundaries and past-the-end reads. */
function readPlan(size: number, count: number, seed: number): Array<[number, number]> {
  const rnd = patternBytes(count * 8, seed);
  const plan: Array<[number, number]> = [
    [0, 1],
    [0, size],
    [128 * KIB - 1, 2],
    [128 * KIB - 100, 256 * KIB + 200],
    [4095, 4097],
    [size - 1, 10],
    [size, 100],
    [size + 4096, 100],
    [size - 300 * KIB, 1 * MIB],
  ];
  for (let i = 0; i < count; i++) {
    const offset = rnd.readUInt32LE(i * 8) % (size + 8 * KIB);
    const length = 1 + (rnd.readUInt32LE(i * 8 + 4) % (600 * KIB));
    plan.push([offset, length]);
  }
  return plan.filter(([o]) => o >= 0);
}

const BIG = patternBytes(3 * MIB + 12_345, 1);
const SMALL = patternBytes(5000, 2);

test('lists the layer files and reports fixed read-only attributes', { skip }, async (t) => {
  const { mnt } = await mountLayers(t, [memorySource('big.erofs', BIG), memorySource('small.erofs', SMALL), memorySource('empty.erofs', Buffer.alloc(0))]);
  assert.deepEqual((await readdir(mnt)).sort(), ['big.erofs', 'empty.erofs', 'small.erofs']);
  const root = await stat(mnt);
  assert.ok(root.isDirectory());
  assert.equal(root.mode & 0o7777, 0o555);
  for (const [name, size] of [['big.erofs', BIG.length], ['small.erofs', SMALL.length], ['empty.erofs', 0]] as const) {
    const st = await stat(join(mnt, name));
    assert.ok(st.isFile(), name);
    assert.equal(st.mode & 0o7777, 0o444, name);
    assert.equal(st.size, size, name);
    assert.equal(st.uid, 0);
    assert.equal(st.gid, 0);
    assert.equal(st.nlink, 1);
    assert.equal(st.mtimeMs, 0, 'constant mtime');
    assert.equal(st.blocks, Math.ceil(size / 512));
  }
  const sfs = await statfs(mnt);
  assert.equal(sfs.type, FUSE_MAGIC);
  assert.equal(sfs.bsize, 4096);
  assert.equal(sfs.blocks, Math.ceil((BIG.length + SMALL.length) / 4096));
  assert.equal(sfs.bfree, 0);
  const mountLine = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === mnt);
  assert.match(mountLine ?? '', / - fuse\.erofs-lazy erofs-lazy ro,/, 'type fuse.erofs-lazy, mounted read-only');
  const device = mountLine?.split(' ')[2];
  assert.equal((await readFile(`/sys/class/bdi/${device}/read_ahead_kb`, 'utf8')).trim(), '512', 'read-ahead set to the default window');
});

test('noReadAhead turns the kernel read-ahead of the mount off (what mount --record-exact asks for)', { skip }, async (t) => {
  const { mnt } = await mountLayers(t, [memorySource('big.erofs', BIG)], { noReadAhead: true });
  const mountLine = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === mnt);
  const device = mountLine?.split(' ')[2];
  assert.equal((await readFile(`/sys/class/bdi/${device}/read_ahead_kb`, 'utf8')).trim(), '0');
  assert.ok((await readFile(join(mnt, 'big.erofs'))).equals(BIG), 'reads still work');
});

test('file pages stay in the kernel cache across opens (kernel_cache), and are dropped on open without it', { skip }, async (t) => {
  for (const kernelCache of [true, false]) {
    const { fs, mnt } = await mountLayers(t, [memorySource('big.erofs', BIG)], { kernelCache });
    const file = join(mnt, 'big.erofs');
    assert.ok((await readFile(file)).equals(BIG));
    const first = fs.stats().reads;
    assert.ok(first > 0);
    fs.resetStats();
    assert.ok((await readFile(file)).equals(BIG));
    if (kernelCache) assert.equal(fs.stats().reads, 0, 'second open served from the page cache');
    else assert.ok(fs.stats().reads > 0, 'without kernel_cache the second open reads again');
  }
});

test('reads at random offsets and lengths return exactly the source bytes', { skip }, async (t) => {
  const { fs, mnt } = await mountLayers(t, [memorySource('big.erofs', BIG), memorySource('small.erofs', SMALL), memorySource('empty.erofs', Buffer.alloc(0))]);
  for (const [name, data] of [['big.erofs', BIG], ['small.erofs', SMALL]] as const) {
    for (const [offset, length] of readPlan(data.length, 60, data.length)) {
      const got = await readAt(join(mnt, name), offset, length);
      const want = data.subarray(Math.min(offset, data.length), Math.min(offset + length, data.length));
      assert.ok(got.equals(want), `${name} at ${offset}+${length}: got ${got.length} bytes, want ${want.length}`);
    }
    assert.ok((await readFile(join(mnt, name))).equals(data), `${name} whole`);
  }
  assert.equal((await readFile(join(mnt, 'empty.erofs'))).length, 0);
  const s = fs.stats();
  assert.ok(s.reads > 0 && s.bytesRead >= BIG.length + SMALL.length, JSON.stringify(s));
  assert.equal(s.readErrors, 0);
  assert.ok(s.maxReadLength <= 1 * MIB);
  t.diagnostic(`largest kernel read request: ${s.maxReadLength} bytes over ${s.reads} requests`);
});

test('a source answering in small pieces still fills every request', { skip }, async (t) => {
  const { mnt } = await mountLayers(t, [memorySource('pieces.erofs', BIG, { maxPiece: 1000 })]);
  assert.ok((await readFile(join(mnt, 'pieces.erofs'))).equals(BIG));
  assert.ok((await readAt(join(mnt, 'pieces.erofs'), 200_000, 300_000)).equals(BIG.subarray(200_000, 500_000)));
});

test('writes, creation and removal are refused; unknown paths are ENOENT', { skip }, async (t) => {
  const { mnt } = await mountLayers(t, [memorySource('small.erofs', SMALL)]);
  const file = join(mnt, 'small.erofs');
  for (const flags of ['r+', 'w', 'a']) {
    await assert.rejects(open(file, flags), (e) => errorCode(e) === 'EROFS', flags);
  }
  await assert.rejects(access(file, constants.W_OK), (e) => errorCode(e) === 'EROFS');
  await access(file, constants.R_OK);
  await assert.rejects(writeFile(join(mnt, 'new'), 'x'), (e) => errorCode(e) === 'EROFS');
  await assert.rejects(unlink(file), (e) => errorCode(e) === 'EROFS');
  await assert.rejects(mkdir(join(mnt, 'd')), (e) => errorCode(e) === 'EROFS');
  await assert.rejects(stat(join(mnt, 'missing.erofs')), (e) => errorCode(e) === 'ENOENT');
  await assert.rejects(open(join(mnt, 'missing.erofs'), 'r'), (e) => errorCode(e) === 'ENOENT');
  await assert.rejects(readdir(file), (e) => errorCode(e) === 'ENOTDIR');
  assert.ok((await readFile(file)).equals(SMALL), 'still readable');
});

test('a failing source gives EIO with one log line per failed request; other files keep working', { skip }, async (t) => {
  const failing: LayerFileSource = {
    name: 'bad.erofs',
    size: 1 * MIB,
    read: async (offset) => {
      throw new Error(`chunk at ${offset} failed verification`);
    },
  };
  const { fs, mnt, log } = await mountLayers(t, [failing, memorySource('good.erofs', SMALL)]);
  await assert.rejects(readAt(join(mnt, 'bad.erofs'), 4096, 100), (e) => errorCode(e) === 'EIO');
  await assert.rejects(readFile(join(mnt, 'bad.erofs')), (e) => errorCode(e) === 'EIO');
  assert.ok((await readFile(join(mnt, 'good.erofs'))).equals(SMALL));
  assert.ok(log.length >= 2, log.join('\n'));
  assert.equal(fs.stats().readErrors, log.length);
  for (const line of log) {
    assert.match(line, /^erofs-lazy fuse: read failed: file=bad\.erofs offset=\d+ length=\d+: chunk at \d+ failed verification$/);
  }
});

test('a read the source never answers fails with EIO after the read timeout', { skip }, async (t) => {
  const hung: LayerFileSource = { name: 'hung.erofs', size: 64 * KIB, read: () => new Promise<Buffer>(() => undefined) };
  const { mnt, log, fs } = await mountLayers(t, [hung], { readTimeoutMs: 300 });
  const started = Date.now();
  await assert.rejects(readAt(join(mnt, 'hung.erofs'), 0, 10), (e) => errorCode(e) === 'EIO');
  assert.ok(Date.now() - started >= 250, 'waited for the timeout');
  assert.match(log[0] ?? '', /file=hung\.erofs offset=0 length=\d+: no data after 300 ms$/);
  assert.equal(fs.stats().readsInFlight, 0);
});

test('32 parallel reads through several descriptors are all correct', { skip }, async (t) => {
  const { mnt, cleanup } = await mountLayers(t, [memorySource('big.erofs', BIG, { delayMs: 5 }), memorySource('small.erofs', SMALL, { delayMs: 5 })]);
  const handles = await Promise.all([0, 1, 2, 3].map((i) => open(join(mnt, i % 2 ? 'small.erofs' : 'big.erofs'), 'r')));
  cleanup.push(async () => {
    await Promise.all(handles.map((h) => h.close()));
  });
  const plan = readPlan(BIG.length, 32, 99).slice(0, 32);
  const results = await Promise.all(
    plan.map(async ([offset, length], i) => {
      const fh = handles[i % handles.length]!;
      const data = i % 2 ? SMALL : BIG;
      const o = i % 2 ? offset % SMALL.length : offset;
      const buf = Buffer.alloc(length);
      const { bytesRead } = await fh.read(buf, 0, length, o);
      return buf.subarray(0, bytesRead).equals(data.subarray(Math.min(o, data.length), Math.min(o + length, data.length)));
    }),
  );
  assert.deepEqual(results, plan.map(() => true));
});

test('requests from many processes are answered concurrently, not one after another', { skip }, async (t) => {
  const DELAY_MS = 200;
  const READERS = 24;
  const STRIDE = 16 * MIB; // far apart, so read-ahead of one reader never covers another's block
  const data = Buffer.alloc(READERS * STRIDE);
  for (let i = 0; i < READERS; i++) patternBytes(4096, 100 + i).copy(data, i * STRIDE);
  const { fs, mnt } = await mountLayers(t, [memorySource('slow.erofs', data, { delayMs: DELAY_MS })]);
  const file = join(mnt, 'slow.erofs');
  const started = Date.now();
  const outputs = await Promise.all(
    Array.from({ length: READERS }, (_, i) =>
      new Promise<Buffer>((res, rej) => {
        const child = spawn('dd', [`if=${file}`, 'bs=4096', 'count=1', `skip=${(i * STRIDE) / 4096}`, 'status=none'], { stdio: ['ignore', 'pipe', 'pipe'] });
        const chunks: Buffer[] = [];
        child.stdout.on('data', (c: Buffer) => chunks.push(c));
        child.on('error', rej);
        child.on('close', (code) => (code === 0 ? res(Buffer.concat(chunks)) : rej(new Error(`dd ${i} exited ${code}`))));
      }),
    ),
  );
  const elapsed = Date.now() - started;
  outputs.forEach((out, i) => assert.ok(out.equals(data.subarray(i * STRIDE, i * STRIDE + 4096)), `reader ${i}`));
  const s = fs.stats();
  t.diagnostic(`${READERS} readers, ${DELAY_MS} ms per source read: ${elapsed} ms in total, at most ${s.maxReadsInFlight} reads in flight`);
  // Serialized, this would take READERS * DELAY_MS; node's own thread pool would cap it at 4.
  assert.ok(s.maxReadsInFlight >= 8, `max reads in flight ${s.maxReadsInFlight}`);
});

test('unmount is refused while a file is open, then succeeds and the mount point can be reused', { skip }, async (t) => {
  const { fs, mnt, cleanup } = await mountLayers(t, [memorySource('small.erofs', SMALL)]);
  const fh = await open(join(mnt, 'small.erofs'), 'r');
  let closed = false;
  cleanup.push(async () => {
    if (!closed) await fh.close();
  });
  await assert.rejects(fs.unmount({ busyWaitMs: 300 }), (e) => e instanceof FuseBusyError && /busy/.test(e.message));
  assert.ok(await isFuseMountpoint(mnt), 'still mounted after a busy unmount');
  const buf = Buffer.alloc(100);
  assert.equal((await fh.read(buf, 0, 100, 10)).bytesRead, 100, 'still served after a busy unmount');
  assert.ok(buf.equals(SMALL.subarray(10, 110)));
  await fh.close();
  closed = true;
  await fs.unmount();
  assert.equal(await isFuseMountpoint(mnt), false);
  assert.equal(fs.mountpoint, undefined);
  assert.ok(!(await readFile('/proc/mounts', 'utf8')).includes(mnt));

  await fs.mount(mnt);
  assert.equal(fs.pathOf('small.erofs'), join(mnt, 'small.erofs'));
  assert.ok((await readFile(join(mnt, 'small.erofs'))).equals(SMALL), 'mounted again');
  await fs.unmount();
  assert.equal(await isFuseMountpoint(mnt), false);
});

/** A server process; with argv[3] = "orphan" it first starts a child that inherits /dev/fuse. */
const CHILD_SERVER = `
import { spawn } from 'node:child_process';
import { LayerFilesystem } from ${JSON.stringify(fileURLToPath(new URL('../../src/fuse/index.js', import.meta.url)))};
const data = Buffer.from('served by a process that is about to die');
const fs = new LayerFilesystem([{ name: 'f', size: data.length, read: async (o, l) => data.subarray(o, o + l) }]);
await fs.mount(process.argv[2]);
let orphan = 0;
if (process.argv[3] === 'orphan') orphan = spawn('sleep', ['600'], { stdio: 'ignore', detached: true }).pid;
process.stdout.write('mounted ' + orphan + '\\n');
setInterval(() => {}, 1000);
`;

/**
 * Starts the server, kills it, and returns the pid of the orphan it left (0 for none). Without an
 * orphan the mount is stale (ENOTCONN); with one, the connection stays open and nobody answers it.
 */
async function crashedServerMount(t: TestContext, script: string, mnt: string, withOrphan = false): Promise<number> {
  const child: ChildProcess = spawn(process.execPath, [script, mnt, withOrphan ? 'orphan' : ''], { stdio: ['ignore', 'pipe', 'inherit'] });
  let orphan = 0;
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    if (orphan) process.kill(orphan, 'SIGKILL');
  });
  orphan = await new Promise<number>((res, rej) => {
    child.stdout!.on('data', (d: Buffer) => {
      const m = /mounted (\d+)/.exec(d.toString());
      if (m) res(Number(m[1]));
    });
    child.on('exit', (code) => rej(new Error(`server exited early with ${code}`)));
  });
  const exited = new Promise((r) => child.on('exit', r));
  child.kill('SIGKILL');
  await exited;
  // stat may still succeed from the attribute cache; statfs always asks the (dead) server.
  if (!withOrphan) await assert.rejects(statfs(mnt), (e) => errorCode(e) === 'ENOTCONN', 'stale mount after the crash');
  return orphan;
}

test('a crashed server leaves a stale mount that forceUnmount and mount() clean up', { skip }, async (t) => {
  const c = cleanups(t);
  const dir = await tempDir(t, 'erofs-lazy-fuse-');
  c.watch(dir);
  const script = join(dir, 'server.mjs');
  await writeFile(script, CHILD_SERVER);
  const mnt = join(dir, 'mnt');
  await mkdir(mnt);

  await crashedServerMount(t, script, mnt);
  await LayerFilesystem.forceUnmount(mnt);
  assert.equal(await isFuseMountpoint(mnt), false);
  await LayerFilesystem.forceUnmount(mnt); // not mounted: no error

  await crashedServerMount(t, script, mnt);
  const log: string[] = [];
  const fs = new LayerFilesystem([memorySource('small.erofs', SMALL)], { log: (l) => log.push(l) });
  await fs.mount(mnt);
  c.push(() => fs.unmount());
  assert.match(log.join('\n'), /stale FUSE mount/);
  assert.ok((await readFile(join(mnt, 'small.erofs'))).equals(SMALL));
});

test('forceUnmount aborts a dead server\'s connection that a leftover child keeps open, freeing blocked readers', { skip }, async (t) => {
  const c = cleanups(t);
  const dir = await tempDir(t, 'erofs-lazy-fuse-');
  c.watch(dir);
  const script = join(dir, 'server.mjs');
  await writeFile(script, CHILD_SERVER);
  const mnt = join(dir, 'mnt');
  await mkdir(mnt);
  const orphan = await crashedServerMount(t, script, mnt, true);
  assert.ok(orphan > 0);

  // A reader now waits forever: the orphan holds the connection, nobody reads it.
  const reader = spawn('cat', [join(mnt, 'f')], { stdio: 'ignore' });
  const readerExit = new Promise<number | null>((r) => reader.on('exit', (code) => r(code)));
  c.push(async () => {
    if (reader.exitCode === null && reader.signalCode === null) reader.kill('SIGKILL');
  });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(reader.exitCode, null, 'reader is blocked');

  const fs = new LayerFilesystem([memorySource('small.erofs', SMALL)]);
  await assert.rejects(fs.mount(mnt), /does not answer.*forceUnmount/);

  await LayerFilesystem.forceUnmount(mnt);
  assert.notEqual(await readerExit, 0, 'the blocked reader got an error');
  assert.equal(await isFuseMountpoint(mnt), false);
  await fs.mount(mnt);
  c.push(() => fs.unmount());
  assert.ok((await readFile(join(mnt, 'small.erofs'))).equals(SMALL));
});

test('mounting twice, or with an option libfuse rejects, fails with context and leaves nothing mounted', { skip }, async (t) => {
  const { fs, mnt, dir } = await mountLayers(t, [memorySource('small.erofs', SMALL)]);
  await assert.rejects(fs.mount(mnt), /already mounted/);
  const other = new LayerFilesystem([memorySource('small.erofs', SMALL)]);
  await assert.rejects(other.mount(mnt), /already a mount point \(fuse\.erofs-lazy\)/);
  const bad = new LayerFilesystem([], { rawOptions: ['no_such_option'], log: () => undefined });
  const badMnt = join(dir, 'bad');
  await assert.rejects(bad.mount(badMnt), /mounting FUSE on .*bad with -ono_such_option failed/);
  assert.equal(await isFuseMountpoint(badMnt), false);
});
