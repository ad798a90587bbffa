// `erofs-lazy ls`, `cat` and `stat` end to end: real registry, converted seekable images, the reader over
// lazily fetched chunks. A converted image of more than 100 MiB (pseudo-random file data and a directory tree of
// thousands of entries) is listed while fetching under 2% of its blob bytes and a file comes back exact; the
// merged listing of a multi-layer image equals the layers applied the OCI way; stat names the chunks; oci:
// layouts work; layers that are not seekable are refused with one line.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { BrowseStats } from '../../src/cli/browseimage.js';
import type { EntryJson, StatJson } from '../../src/cli/browseformat.js';
import { openImageStore } from '../../src/fetch/index.js';
import { buildImageFromDirs, pseudoRandomBytes } from '../../src/sample/build.js';
import { compressibleText } from '../fixtures/erofs/helpers.js';
import { runCli } from '../helpers/cli.js';
import { applyLayersOci, writeTestLayers } from '../helpers/images.js';
import { startRegistry } from '../helpers/registry.js';
import type { TestRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/tmp.js';
import { snapshotTree } from '../helpers/tree.js';

const MiB = 1024 * 1024;
/** Pseudo-random data files of the big image (16 x 7 MiB = 112 MiB). */
const BIG_FILES = 16;
const BIG_FILE_BYTES = 7 * MiB;
/** The "normal" tree: directories x files of text. */
const TREE_DIRS = 40;
const TREE_FILES_PER_DIR = 60;
/** Chunk size of the big image. */
const BIG_CHUNK_SIZE = MiB;
/** `ls /` must fetch less than this fraction of the blob bytes. */
const LS_MAX_FRACTION = 0.02;

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The --stats JSON line on stderr. */
function statsOf(stderr: string): BrowseStats {
  const line = stderr.split('\n').find((l) => l.startsWith('{"stats"'));
  assert.ok(line, `no stats line in ${JSON.stringify(stderr)}`);
  return (JSON.parse(line) as { stats: BrowseStats }).stats;
}

describe('erofs-lazy ls / cat / stat', () => {
  let registry: TestRegistry;
  let work: string;
  const cleanups: Array<() => unknown> = [];
  let bigRef: string;
  let layeredRef: string;
  let layeredSrcRef: string;
  let layers: string[];
  const bigFiles = new Map<string, string>();

  before(async () => {
    registry = await startRegistry();
    work = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) });
    const big = join(work, 'big');
    await mkdir(join(big, 'data'), { recursive: true });
    for (let i = 0; i < BIG_FILES; i++) {
      const data = pseudoRandomBytes(BIG_FILE_BYTES + i * 4099, `browse-big-${i}`);
      const name = `data/blob-${String(i).padStart(2, '0')}.bin`;
      await writeFile(join(big, name), data);
      bigFiles.set(name, sha256(data));
    }
    for (let d = 0; d < TREE_DIRS; d++) {
      const dir = join(big, 'usr/share', `pkg-${d}`);
      await mkdir(join(dir, 'doc'), { recursive: true });
      for (let f = 0; f < TREE_FILES_PER_DIR; f++) await writeFile(join(dir, `file-${f}.txt`), compressibleText(200 + ((d * 131 + f * 17) % 9000), `tree-${d}-${f}`));
      await writeFile(join(dir, 'doc/README'), `package ${d}\n`);
      await symlink(`../pkg-${(d + 1) % TREE_DIRS}/doc/README`, join(dir, 'next-readme'));
    }
    for (const d of ['etc', 'bin', 'var/lib', 'tmp']) await mkdir(join(big, d), { recursive: true });
    await writeFile(join(big, 'etc/os-release'), 'PRETTY_NAME="erofs-lazy test"\nID=test\n');
    const bigSrc = `${registry.host}/browse/big:src`;
    const store = openImageStore(bigSrc, {});
    await buildImageFromDirs(store, [big], { workDir: work });
    await store.close();
    bigRef = `${registry.host}/browse/big:erofs`;
    // 1 MiB chunks: with the default 4 MiB, the chunk holding the superblock is mostly incompressible file
    // data, and that one chunk alone is 3.5% of this image's blob (see the README on chunk sizes).
    const c1 = await runCli(['convert', bigSrc, bigRef, '--chunk-size', String(BIG_CHUNK_SIZE), '--work-dir', work]);
    assert.equal(c1.code, 0, c1.stderr);

    layers = await writeTestLayers(join(work, 'layers'));
    layeredSrcRef = `${registry.host}/browse/layered:src`;
    const s2 = openImageStore(layeredSrcRef, {});
    await buildImageFromDirs(s2, layers, { workDir: work });
    await s2.close();
    layeredRef = `${registry.host}/browse/layered:erofs`;
    const c2 = await runCli(['convert', layeredSrcRef, layeredRef, '--chunk-size', String(64 * 1024), '--work-dir', work]);
    assert.equal(c2.code, 0, c2.stderr);
  });
  after(async () => {
    await registry?.stop();
    for (const c of cleanups.reverse()) await c();
  });

  test('ls / of a converted image of over 100 MiB fetches under 2% of its blob bytes', async (t) => {
    const names = await runCli(['ls', bigRef, '/', '--stats']);
    assert.equal(names.code, 0, names.stderr);
    assert.equal(names.stdout, 'bin\ndata\netc\ntmp\nusr\nvar\n');
    const res = await runCli(['ls', bigRef, '/', '--json', '--stats']);
    assert.equal(res.code, 0, res.stderr);
    const entries = JSON.parse(res.stdout) as EntryJson[];
    assert.deepEqual(entries.map((e) => e.name), ['bin', 'data', 'etc', 'tmp', 'usr', 'var']);
    assert.ok(entries.every((e) => e.type === 'dir' && e.path === `/${e.name}`));
    const stats = statsOf(res.stderr);
    assert.ok(stats.blobBytes > 100 * MiB, `blob bytes ${stats.blobBytes}`);
    const plainFetched = Number(/^fetched (\d+) bytes/m.exec(names.stderr)?.[1]);
    for (const [what, fetched] of [['ls /', plainFetched], ['ls / --json', stats.bytesFetched]] as const) {
      t.diagnostic(`${what}: fetched ${fetched} of ${stats.blobBytes} blob bytes (${((fetched / stats.blobBytes) * 100).toFixed(2)}%)`);
      assert.ok(fetched > 0 && fetched / stats.blobBytes < LS_MAX_FRACTION, `${what} fetched ${fetched} of ${stats.blobBytes} bytes`);
    }
    const long = await runCli(['ls', bigRef, '/data', '-l', '--stats']);
    assert.equal(long.code, 0, long.stderr);
    const lines = long.stdout.trim().split('\n');
    assert.equal(lines.length, BIG_FILES);
    assert.match(lines[3]!, new RegExp(`^-rw-r--r-- +1 0 +0 +${BIG_FILE_BYTES + 3 * 4099} \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d blob-03\\.bin$`));
    assert.match(long.stderr, /^fetched \d+ bytes .* in \d+ requests: [\d.]+% of /);
  });

  test('cat returns a file of the big image exactly, fetching little more than the file', async () => {
    const name = 'data/blob-05.bin';
    const res = await runCliBuffer(['cat', bigRef, `/${name}`, '--stats']);
    assert.equal(res.code, 0, res.stderr);
    assert.equal(sha256(res.stdout), bigFiles.get(name));
    const fetched = Number(/^fetched (\d+) bytes/m.exec(res.stderr)?.[1]);
    assert.ok(fetched < BIG_FILE_BYTES + 5 * 4099 + 3 * BIG_CHUNK_SIZE, `cat fetched ${fetched} bytes: ${res.stderr}`);
    const small = await runCli(['cat', bigRef, 'usr/share/pkg-3/next-readme']);
    assert.equal(small.code, 0, small.stderr);
    assert.equal(small.stdout, 'package 4\n');
  });

  test('the merged listing of a multi-layer image equals the layers applied the OCI way', async (t) => {
    const res = await runCli(['ls', layeredRef, '/', '-R', '--json']);
    assert.equal(res.code, 0, res.stderr);
    const entries = JSON.parse(res.stdout) as EntryJson[];
    const dest = join(await tempDir(t), 'applied');
    await mkdir(dest);
    applyLayersOci(layers, dest);
    const expected = await snapshotTree(dest, { skipRoot: true });
    const shown = new Map(entries.map((e) => [e.path.slice(1), e]));
    assert.deepEqual([...shown.keys()].sort(), [...expected.keys()].sort());
    for (const [path, info] of expected) {
      const e = shown.get(path)!;
      assert.equal(e.type, info.type, path);
      assert.equal(Number.parseInt(e.mode, 8), info.mode, path);
      assert.deepEqual([e.uid, e.gid], [info.uid, info.gid], path);
      if (info.size !== undefined) assert.equal(e.size, info.size, path);
      if (info.target !== undefined) assert.equal(e.target, info.target, path);
      if (info.rdev !== undefined) assert.equal(e.rdev, info.rdev, path);
      assert.equal(Math.floor(Date.parse(e.mtime) / 1000), info.mtime, path);
    }
    const cat = await runCli(['cat', layeredRef, '/data/empty-file']);
    assert.equal(cat.stdout, 'replaced in the upper layer\n');
    // One layer as it is: the upper layer's whiteout is a 0:0 character device there.
    const raw = await runCli(['ls', layeredRef, '/etc', '--layer', '1', '-l']);
    assert.equal(raw.code, 0, raw.stderr);
    assert.match(raw.stdout, /^c--------- +1 0 +0 +0, 0 .* deleted$/m);
    const gone = await runCli(['cat', layeredRef, '/etc/deleted']);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /^erofs-lazy: \/etc\/deleted: no such file or directory \(ENOENT\)\n$/);
  });

  test('stat names the layer, the inode and the chunks holding a file', async () => {
    const res = await runCli(['stat', layeredRef, '/data/big.bin', '--json']);
    assert.equal(res.code, 0, res.stderr);
    const s = JSON.parse(res.stdout) as StatJson;
    assert.equal(s.type, 'file');
    assert.equal(s.size, 3 * MiB + 123);
    assert.equal(s.layer.index, 0);
    assert.equal(s.chunkSize, 64 * 1024);
    assert.ok(s.xattrs.some((x) => x.name === 'trusted.test' && x.hex === '00ff10'));
    const dataBytes = s.extents.reduce((a, e) => a + e.length, 0);
    assert.equal(dataBytes, s.size);
    // 3 MiB of data in 64 KiB chunks: at least 48 distinct chunks, consecutive.
    assert.ok(s.chunks.length >= 48, `chunks ${s.chunks.join(',')}`);
    const text = await runCli(['stat', layeredRef, '/data/rel-link']);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /File: \/data\/rel-link -> nested\/deeper\/leaf\.txt/);
    assert.match(text.stdout, /Type: symbolic link/);
    const deref = await runCli(['stat', layeredRef, '/data/rel-link', '-L', '--json']);
    assert.equal((JSON.parse(deref.stdout) as StatJson).type, 'file');
  });

  test('an oci: layout works, and layers that are not seekable are refused with one line', async (t) => {
    const dir = await tempDir(t);
    const conv = await runCli(['convert', layeredSrcRef, `oci:${dir}/layout:v1`, '--work-dir', dir]);
    assert.equal(conv.code, 0, conv.stderr);
    const ls = await runCli(['ls', `oci:${dir}/layout:v1`, '/etc']);
    assert.equal(ls.code, 0, ls.stderr);
    assert.deepEqual(ls.stdout.trim().split('\n'), ['added', 'config']);
    const refused = await runCli(['ls', layeredSrcRef, '/']);
    assert.equal(refused.code, 1);
    assert.equal(refused.stderr.trim().split('\n').length, 1);
    assert.match(refused.stderr, /layer 0 \(sha256:[0-9a-f]{64}\) is not seekable EROFS .*tar\+gzip/);
    const dir2 = await runCli(['cat', layeredRef, '/etc']);
    assert.equal(dir2.code, 1);
    assert.match(dir2.stderr, /EISDIR/);
  });
});

/** runCli with stdout kept as bytes. */
async function runCliBuffer(args: string[]): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  const { execFile } = await import('node:child_process');
  const { CLI_PATH } = await import('../helpers/cli.js');
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI_PATH, ...args], { encoding: 'buffer', maxBuffer: 64 * MiB }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr: stderr.toString('utf8') });
    });
  });
}
