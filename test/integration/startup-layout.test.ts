// A start-up-ordered image, end to end: `mount --record --record-exact` keeps the blocks a workload read, `profile paths`
// maps them back to the files (and only those files: neighbours sharing a metadata block do not count),
// `convert --hot-paths` lays those files out together at the front with erofs-lazy's own EROFS writer, and a
// cold mount of that image serves the same workload from fewer chunks than the mkfs.erofs layout, with the
// same bytes; the layer's start-up landmark makes a default mount prefetch that region by itself.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openImageStore } from '../../src/fetch/index.js';
import { parseProfile } from '../../src/prefetch/profile.js';
import { STARTUP_BYTES_ANNOTATION } from '../../src/prefetch/startup.js';
import { buildImageFromDirs, pseudoRandomBytes } from '../../src/sample/build.js';
import { runCli } from '../helpers/cli.js';
import { mountImage, type MountHandle } from '../helpers/mountcli.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/tmp.js';

const DIRS = 10;
const FILES_PER_DIR = 10;
const FILE_BYTES = 512 * 1024 + 77;
const CHUNK_BYTES = 1024 * 1024;
/** The FUSE layer's read-ahead window (src/fuse DEFAULT_READ_AHEAD_KIB): how far past a read the kernel may go. */
const KERNEL_READ_AHEAD_BYTES = 4 * 1024 * 1024;
/** The workload: one file from each of three directories far apart in name order, and a small config. */
const WORKLOAD = ['d0/f3', 'd4/f5', 'd9/f1', 'etc/app.conf'];

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

describe('start-up layout: record, profile paths, convert --hot-paths', () => {
  let registry: TestRegistry;
  let plainRef: string;
  let mkfsRef: string;
  const hashes = new Map<string, string>();
  const cleanups: Array<() => unknown> = [];

  before(async () => {
    registry = await startRegistry();
    const work = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) });
    const src = join(work, 'src');
    for (let d = 0; d < DIRS; d++) {
      await mkdir(join(src, `d${d}`), { recursive: true });
      for (let f = 0; f < FILES_PER_DIR; f++) {
        const data = pseudoRandomBytes(FILE_BYTES, `layout-${d}-${f}`);
        await writeFile(join(src, `d${d}`, `f${f}`), data);
        hashes.set(`d${d}/f${f}`, sha256(data));
      }
    }
    await mkdir(join(src, 'etc'));
    await writeFile(join(src, 'etc/app.conf'), 'answer = 42\n');
    hashes.set('etc/app.conf', sha256(Buffer.from('answer = 42\n')));
    plainRef = `${registry.host}/layout/app:src`;
    const store = openImageStore(plainRef, {});
    await buildImageFromDirs(store, [src], { workDir: work });
    await store.close();
    mkfsRef = `${registry.host}/layout/app:mkfs`;
    const c = await runCli(['convert', plainRef, mkfsRef, '--chunk-size', String(CHUNK_BYTES)]);
    assert.equal(c.code, 0, c.stderr);
  });
  after(async () => {
    await registry?.stop();
    for (const c of cleanups.reverse()) await c();
  });

  async function runWorkload(m: MountHandle): Promise<void> {
    for (const name of WORKLOAD) assert.equal(sha256(await readFile(join(m.mountpoint, name))), hashes.get(name), name);
  }

  test('the recorded workload maps back to its files, and the start-up layout serves it from fewer chunks', async (t) => {
    const dir = await tempDir(t);
    const profilePath = join(dir, 'profile.json');
    const recording = await mountImage(t, mkfsRef, ['--record', profilePath, '--record-exact', '--prefetch', 'none']);
    await runWorkload(recording);
    await recording.umount();
    const profile = parseProfile(await readFile(profilePath), profilePath);
    assert.ok(profile.ranges.length > 0, 'block ranges recorded');
    const recordedBytes = profile.ranges.reduce((n, [, , len]) => n + len, 0);
    // Read-ahead is off while recording: about the workload's bytes, not whole chunks.
    assert.ok(recordedBytes < 4 * FILE_BYTES, `${recordedBytes} bytes recorded`);

    const hotPathsFile = join(dir, 'hot-paths');
    const paths = await runCli(['profile', 'paths', mkfsRef, profilePath, '--cache-dir', recording.cacheDir, '--output', hotPathsFile]);
    assert.equal(paths.code, 0, paths.stderr);
    const hot = (await readFile(hotPathsFile, 'utf8')).split('\n').filter(Boolean);
    for (const name of WORKLOAD) assert.ok(hot.includes(`/${name}`), `/${name} in ${JSON.stringify(hot)}`);
    const unreadFiles = hot.filter((p) => /^\/d\d\/f\d$/.test(p) && !WORKLOAD.includes(p.slice(1)));
    assert.deepEqual(unreadFiles, [], 'no file the workload did not read');
    // First-read order: the data files come in the order the workload read them (a small inline file counts
    // from its inode block, which an earlier lookup may already have read).
    const order = WORKLOAD.filter((name) => name.startsWith('d')).map((name) => hot.indexOf(`/${name}`));
    assert.deepEqual(order, [...order].sort((a, b) => a - b));

    const startupRef = `${registry.host}/layout/app:startup`;
    const c = await runCli(['convert', plainRef, startupRef, '--chunk-size', String(CHUNK_BYTES), '--hot-paths', hotPathsFile]);
    assert.equal(c.code, 0, c.stderr);

    // The same workload on cold mounts of both layouts, with the kernel's usual read-ahead.
    const chunksFor = async (ref: string): Promise<number> => {
      const m = await mountImage(t, ref, ['--prefetch', 'none']);
      await runWorkload(m);
      const n = (await m.stats()).total.chunksFetched;
      if (ref === startupRef) {
        // Every file of the image is still there, byte for byte.
        for (const [name, hash] of hashes) assert.equal(sha256(await readFile(join(m.mountpoint, name))), hash, name);
      }
      await m.umount();
      return n;
    };
    const mkfsChunks = await chunksFor(mkfsRef);
    const startupChunks = await chunksFor(startupRef);

    // The converted layer carries its start-up landmark; a default mount (--prefetch auto) fetches that
    // region by itself, so the workload then asks the registry for (almost) nothing.
    const inspected = await runCli(['inspect', startupRef, '--json']);
    assert.equal(inspected.code, 0, inspected.stderr);
    const layerDesc = (JSON.parse(inspected.stdout) as { layers: Array<{ annotations: Record<string, string> }> }).layers[0]!;
    const landmark = Number(layerDesc.annotations[STARTUP_BYTES_ANNOTATION]);
    assert.ok(landmark >= 3 * FILE_BYTES && landmark < 3 * FILE_BYTES + CHUNK_BYTES, `start-up region of ${landmark} bytes`);
    const auto = await mountImage(t, startupRef);
    const until = Date.now() + 20_000;
    let s = await auto.stats();
    while (s.prefetch?.state !== 'done' && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 50));
      s = await auto.stats();
    }
    assert.equal(s.prefetch?.state, 'done', JSON.stringify(s.prefetch));
    assert.match(s.prefetch?.source ?? '', /start-up layout/);
    assert.equal(s.prefetch?.chunks, Math.ceil(landmark / CHUNK_BYTES));
    await runWorkload(auto);
    const after = await auto.stats();
    assert.ok(after.total.requests - s.total.requests <= 2, `the workload made ${after.total.requests - s.total.requests} requests of its own`);
    await auto.umount();
    // Together at the front, the three files fill 2 chunks after the metadata's; the kernel's read-ahead may
    // run on past them. Spread over the image by mkfs.erofs, each file brings its own chunks and read-ahead.
    const bound = 1 + Math.ceil((3 * FILE_BYTES + KERNEL_READ_AHEAD_BYTES) / CHUNK_BYTES);
    assert.ok(startupChunks <= bound, `start-up layout fetched ${startupChunks} chunks (bound ${bound})`);
    assert.ok(startupChunks < mkfsChunks, `start-up layout fetched ${startupChunks} chunks, mkfs layout ${mkfsChunks}`);
  });

  test('profile paths refuses a profile without ranges, and convert a malformed hot-paths file, with one line each', async (t) => {
    const dir = await tempDir(t);
    const stats = await runCli(['inspect', mkfsRef, '--json']);
    assert.equal(stats.code, 0, stats.stderr);
    const inspected = JSON.parse(stats.stdout) as { manifestDigest: string; layers: Array<{ digest: string }> };
    const old = join(dir, 'old.json');
    await writeFile(
      old,
      JSON.stringify({
        mediaType: 'application/vnd.erofs-lazy.prefetch-profile.v1+json',
        version: 1,
        image: inspected.manifestDigest,
        layers: inspected.layers.map((l) => l.digest),
        chunks: [[0, 0]],
      }),
    );
    const r = await runCli(['profile', 'paths', mkfsRef, old]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /has no block ranges/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);

    const bad = join(dir, 'hot');
    await writeFile(bad, '/ok\nrelative/path\n');
    const c = await runCli(['convert', plainRef, `${registry.host}/layout/app:bad`, '--hot-paths', bad]);
    assert.notEqual(c.code, 0);
    assert.match(c.stderr, /"relative\/path" is not an absolute path/);
  });
});
