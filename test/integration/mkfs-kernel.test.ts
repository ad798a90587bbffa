// Our EROFS writer (src/mkfs) against mkfs.erofs 1.5 and the kernel: a tree with every kind of entry and
// edge case, written by both (same UUID and build time), must pass fsck.erofs (also --extract), and loop
// mounts of the two images must show exactly the same tree (types, modes, owners, sizes, contents, mtimes
// with nanoseconds, link counts and hard-link groups, xattrs, symlink targets, devices); the user-space
// reader must show the same as the kernel; mkfs.erofs's SOURCE_DATE_EPOCH clamp of newer mtimes is
// reproduced. Last, the Debian + python3 tree the benchmarks cache (skipped when absent) is written by both,
// mounted and compared, with the time each took and how many 4 MiB chunks python3's start-up files touch.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildErofsImage, fsckErofsImage, newestMtimeSeconds } from '../../src/convert/mkfs.js';
import { ErofsImage, fileSource, LayeredView } from '../../src/erofs/index.js';
import type { ErofsInode } from '../../src/erofs/index.js';
import { writeErofsImage } from '../../src/mkfs/index.js';
import type { WriteErofsResult } from '../../src/mkfs/index.js';
import { snapshotView, withoutLinksAndXattrs } from '../fixtures/erofs/helpers.js';
import { diffMaps, EROFS_MAX_NAME_BYTES, LARGE_XATTR_BYTES, MANY_XATTRS, MKFS_MAX_NAME_BYTES, SAMPLE_ACL_HEX, statExtras, writeMkfsEdgeTree } from '../helpers/mkfstree.js';
import { mountErofs } from '../helpers/mounts.js';
import { tempDir } from '../helpers/tmp.js';
import { diffTrees, snapshotTree, writeSampleTree } from '../helpers/tree.js';

const UUID = '0e0f5e1e-2000-4000-8000-0000000000c1';
const BLOCK = 4096;
/** The benchmarks' cached Debian bookworm minbase + python3 tree. */
const DEBIAN_TREE = '/var/tmp/erofs-lazy-bench/trees/debian-python-v1';
/** Chunk size of lazily fetched images (the convert default). */
const CHUNK_BYTES = 4 * 1024 * 1024;
/** Files python3 reads when it starts (interpreter, loader, libraries, the modules imported by site). */
const PYTHON_HOT_PATHS = [
  'usr/bin/python3.11',
  'usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2',
  'usr/lib/x86_64-linux-gnu/libc.so.6',
  'usr/lib/x86_64-linux-gnu/libm.so.6',
  'usr/lib/x86_64-linux-gnu/libz.so.1.2.13',
  'usr/lib/x86_64-linux-gnu/libexpat.so.1.8.10',
  'etc/ld.so.cache',
  'usr/lib/locale/C.utf8/LC_CTYPE',
  'usr/lib/python3.11/encodings/__init__.py',
  'usr/lib/python3.11/encodings/aliases.py',
  'usr/lib/python3.11/encodings/utf_8.py',
  'usr/lib/python3.11/codecs.py',
  'usr/lib/python3.11/io.py',
  'usr/lib/python3.11/abc.py',
  'usr/lib/python3.11/site.py',
  'usr/lib/python3.11/os.py',
  'usr/lib/python3.11/stat.py',
  'usr/lib/python3.11/_collections_abc.py',
  'usr/lib/python3.11/posixpath.py',
  'usr/lib/python3.11/genericpath.py',
  'usr/lib/python3.11/_sitebuiltins.py',
  'usr/lib/python3.11/sitecustomize.py',
  'usr/lib/python3.11/_sysconfigdata__x86_64-linux-gnu.py',
  'usr/lib/python3/dist-packages',
];

type Ctx = { after(fn: () => unknown): void };

/** Mounts both images and returns the differences of everything a container could see. */
async function compareMounted(t: Ctx, dir: string, expectedImage: string, actualImage: string): Promise<{ treeDiff: string[]; extraDiff: string[]; entries: number; mnt: string }> {
  const m1 = await mountErofs(expectedImage, join(dir, 'mnt-expected'), t);
  const m2 = await mountErofs(actualImage, join(dir, 'mnt-actual'), t);
  const [s1, s2] = [await snapshotTree(m1), await snapshotTree(m2)];
  const [x1, x2] = [await statExtras(m1), await statExtras(m2)];
  return { treeDiff: diffTrees(s1, s2), extraDiff: diffMaps(x1, x2), entries: s2.size, mnt: m2 };
}

describe('our EROFS writer vs mkfs.erofs and the kernel', () => {
  let work: string;
  let tree: string;
  let ours: string;
  let theirs: string;
  let result: WriteErofsResult;
  const cleanups: Array<() => unknown> = [];

  before(async () => {
    work = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) });
    tree = join(work, 'tree');
    await writeMkfsEdgeTree(tree, { longNameBytes: MKFS_MAX_NAME_BYTES });
    const epoch = await newestMtimeSeconds(tree);
    ours = join(work, 'ours.erofs');
    theirs = join(work, 'mkfs.erofs');
    result = await writeErofsImage(tree, ours, {
      uuid: UUID,
      epoch,
      hotPaths: ['many/entry-00007nnnnnnn', 'edge/links/b/file-2', 'edge/long-symlink', 'edge/acl-dir', 'sizes/random-65543', 'nope'],
    });
    await buildErofsImage(tree, theirs, { uuid: UUID, epoch });
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  test('fsck.erofs accepts the image, and the superblock matches what mkfs.erofs writes', async (t) => {
    await fsckErofsImage(ours);
    assert.equal(result.bytes, (await stat(ours)).size);
    assert.equal(result.hotInodes, 5);
    const open = async (path: string) => {
      const src = await fileSource(path);
      t.after(() => src.close());
      return (await ErofsImage.open(src)).superblock;
    };
    const [a, b] = [await open(ours), await open(theirs)];
    assert.equal(a.checksumVerified, true);
    for (const f of ['featureCompat', 'featureIncompat', 'blockSize', 'buildTime', 'buildTimeNsec', 'uuid', 'metaBlkAddr', 'xattrBlkAddr', 'inodeCount', 'extSlots'] as const) {
      assert.equal(a[f], b[f], `superblock ${f}`);
    }
    assert.equal(a.blocks * BLOCK, result.bytes);
    assert.equal(a.inodeCount, result.inodes);
    assert.ok(a.rootNid <= 0xffff && a.rootNid === BLOCK / 32, `root nid ${a.rootNid}`);
    // Within a few blocks of mkfs.erofs's size.
    const theirsBytes = (await stat(theirs)).size;
    assert.ok(Math.abs(result.bytes - theirsBytes) < theirsBytes / 10, `ours ${result.bytes} bytes, mkfs.erofs ${theirsBytes}`);
  });

  test('loop mounts of our image and of mkfs.erofs\'s show exactly the same tree', async (t) => {
    const dir = await tempDir(t);
    const { treeDiff, extraDiff, entries, mnt } = await compareMounted(t, dir, theirs, ours);
    assert.deepEqual(treeDiff, []);
    assert.deepEqual(extraDiff, []);
    assert.ok(entries > 3100, `${entries} entries`);
    // The edges are really there (not just equally missing from both).
    const snap = await snapshotTree(mnt);
    const at = (p: string) => {
      const e = snap.get(p);
      assert.ok(e, `${p} missing`);
      return e;
    };
    assert.deepEqual(at('edge/links/a/file').links, ['edge/links/a/file', 'edge/links/b/file-2', 'edge/links/file-3']);
    assert.deepEqual(at('edge/links/a/dev').links, ['edge/links/a/dev', 'edge/links/b/dev-2']);
    assert.deepEqual(at('edge/links/a/sym').links, ['edge/links/a/sym', 'edge/links/b/sym-2']);
    assert.equal(at('edge/bigdev').rdev, '300:70000');
    assert.equal(at('edge/bigblk').rdev, '259:1048575');
    assert.equal(at('edge/layer/deleted').rdev, '0:0');
    assert.equal(at('edge/layer/opaque').xattrs['trusted.overlay.opaque'], '0x79');
    assert.equal(at('edge/acl-dir').xattrs['system.posix_acl_default'], SAMPLE_ACL_HEX);
    assert.equal(Object.keys(at('edge/many-xattrs').xattrs).length, MANY_XATTRS);
    assert.equal(at('edge/large-xattr').xattrs['user.large']!.length, 2 + 2 * LARGE_XATTR_BYTES);
    assert.equal(at('edge/longest-symlink').target, 'u'.repeat(4095));
    assert.equal(at(`edge/${'f'.repeat(MKFS_MAX_NAME_BYTES)}`).size, 10);
    assert.equal(at('edge/empty-dir').uid, 70000);
    assert.equal(at('edge/empty-dir').mode, 0o1777);
    assert.equal(at('edge/setuid').mode, 0o4711);
    assert.equal(at('edge/\\xff\\xfeA/inner').size, 6);
    assert.equal(at('edge/quoted/new\nline').xattrs['user.n'], `0x${Buffer.from('newline path').toString('hex')}`);
    assert.equal(at('dev/socket').type, 'socket');
    assert.equal(at('dev/fifo').type, 'fifo');
    assert.equal(at('.').xattrs['user.root'], `0x${Buffer.from('on the root').toString('hex')}`);
    const extras = await statExtras(mnt);
    assert.equal(extras.get('edge/links/a/file'), `nlink=3 mtime=${1_600_000_000n * 1_000_000_000n + 123456789n}`);
    assert.match(extras.get('edge/bigdev')!, /mtime=\d+999999999$/);
  });

  test('255-byte names (which mkfs.erofs 1.5 cannot take): the kernel mount of our image shows the source tree', async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'tree');
    await writeMkfsEdgeTree(src, { longNameBytes: EROFS_MAX_NAME_BYTES });
    const image = join(dir, 'ours.erofs');
    await writeErofsImage(src, image, { uuid: UUID, epoch: await newestMtimeSeconds(src), hotPaths: [`edge/${'d'.repeat(EROFS_MAX_NAME_BYTES)}/${'g'.repeat(EROFS_MAX_NAME_BYTES)}`] });
    await fsckErofsImage(image);
    const mnt = await mountErofs(image, join(dir, 'mnt'), t);
    const [expected, actual] = [await snapshotTree(src), await snapshotTree(mnt)];
    assert.deepEqual(diffTrees(expected, actual), []);
    assert.deepEqual(diffMaps(await statExtras(src), await statExtras(mnt)), []);
    assert.equal(actual.get(`edge/${'d'.repeat(EROFS_MAX_NAME_BYTES)}/${'g'.repeat(EROFS_MAX_NAME_BYTES)}`)?.size, 7);
    assert.equal([...actual.keys()].filter((k) => k.startsWith('edge/longnames/')).length, 40);
  });

  test('the user-space reader shows what the kernel shows of our image', async (t) => {
    const dir = await tempDir(t);
    const mnt = await mountErofs(ours, join(dir, 'mnt'), t);
    const kernel = await snapshotTree(mnt);
    const src = await fileSource(ours);
    t.after(() => src.close());
    const view = new LayeredView([await ErofsImage.open(src)], { raw: true });
    assert.deepEqual(diffTrees(kernel, await snapshotView(view)), []);
  });

  test('fsck.erofs --extract unpacks our image as it unpacks mkfs.erofs\'s', async (t) => {
    const dir = await tempDir(t);
    await fsckErofsImage(ours, { extractTo: join(dir, 'ours') });
    await fsckErofsImage(theirs, { extractTo: join(dir, 'theirs') });
    const a = await snapshotTree(join(dir, 'theirs'), { skipRoot: true });
    const b = await snapshotTree(join(dir, 'ours'), { skipRoot: true });
    assert.ok(b.size > 3100);
    assert.deepEqual(diffTrees(withoutLinksAndXattrs(a), withoutLinksAndXattrs(b)), []);
  });

  test('an epoch older than some mtimes clamps them as mkfs.erofs does', async (t) => {
    const dir = await tempDir(t);
    const small = join(dir, 'tree');
    await writeSampleTree(small);
    // writeSampleTree dates its entries a day apart from 2001 on: clamp about half of them.
    const newest = await newestMtimeSeconds(small);
    const epoch = newest - 20 * 86400;
    const a = join(dir, 'ours.erofs');
    const b = join(dir, 'mkfs.erofs');
    await writeErofsImage(small, a, { uuid: UUID, epoch });
    await buildErofsImage(small, b, { uuid: UUID, epoch });
    await fsckErofsImage(a);
    const { treeDiff, extraDiff, mnt } = await compareMounted(t, dir, b, a);
    assert.deepEqual(treeDiff, []);
    assert.deepEqual(extraDiff, []);
    const mtimes = [...(await snapshotTree(mnt)).values()].map((e) => e.mtime);
    assert.ok(mtimes.filter((m) => m === epoch).length > 1, 'some mtimes were clamped to the epoch');
    assert.ok(mtimes.every((m) => m <= epoch));
    // Clamped entries that fit are compact inodes (they show the build time), the others extended.
    const src = await fileSource(a);
    t.after(() => src.close());
    const view = new LayeredView([await ErofsImage.open(src)], { raw: true });
    const forms = { compact: 0, extended: 0 };
    for await (const { node } of view.walk(await view.root(), '.')) forms[node.inode.extended ? 'extended' : 'compact']++;
    assert.ok(forms.compact > 1 && forms.extended > 1, JSON.stringify(forms));
  });

  test('the Debian + python3 tree: same tree as mkfs.erofs, python3 start-up in fewer chunks', { skip: existsSync(DEBIAN_TREE) ? false : `${DEBIAN_TREE} is absent (run the benchmarks once to cache it)` }, async (t) => {
    const dir = await tempDir(t);
    const epoch = await newestMtimeSeconds(DEBIAN_TREE);
    const a = join(dir, 'ours.erofs');
    const b = join(dir, 'mkfs.erofs');
    const hotPaths = PYTHON_HOT_PATHS.filter((p) => existsSync(join(DEBIAN_TREE, p)));
    let t0 = performance.now();
    const r = await writeErofsImage(DEBIAN_TREE, a, { uuid: UUID, epoch, hotPaths });
    const oursMs = performance.now() - t0;
    t0 = performance.now();
    await buildErofsImage(DEBIAN_TREE, b, { uuid: UUID, epoch });
    const mkfsMs = performance.now() - t0;
    const theirsBytes = (await stat(b)).size;
    t.diagnostic(`ours ${oursMs.toFixed(0)} ms, ${r.bytes} bytes, ${r.inodes} inodes; mkfs.erofs ${mkfsMs.toFixed(0)} ms, ${theirsBytes} bytes`);
    await fsckErofsImage(a);
    const { treeDiff, extraDiff, entries } = await compareMounted(t, dir, b, a);
    assert.deepEqual(treeDiff, []);
    assert.deepEqual(extraDiff, []);
    assert.ok(entries > 5000, `${entries} entries`);
    assert.ok(r.bytes < theirsBytes * 1.01, `ours ${r.bytes} bytes vs mkfs.erofs ${theirsBytes}`);

    // Chunks touched by a start-up that reads the hot files: path walk, inodes, xattrs, data.
    const chunksTouched = async (path: string): Promise<number> => {
      const src = await fileSource(path);
      t.after(() => src.close());
      const image = await ErofsImage.open(src);
      const chunks = new Set<number>();
      const touch = (from: number, to: number) => {
        for (let c = Math.floor(from / CHUNK_BYTES); c <= Math.floor((to - 1) / CHUNK_BYTES); c++) chunks.add(c);
      };
      const touchInode = async (ino: ErofsInode) => {
        touch(ino.offset, ino.metaEnd);
        for await (const e of image.extents(ino)) if (e.physical !== undefined) touch(e.physical, e.physical + (e.physicalLength ?? e.length));
      };
      for (const p of hotPaths) {
        let cur = await image.root();
        await touchInode(cur);
        for (const seg of p.split('/')) {
          const e = await image.lookup(cur, Buffer.from(seg));
          assert.ok(e, `${p}: ${seg} not found`);
          cur = await image.inode(e.nid);
          await touchInode(cur);
        }
      }
      return chunks.size;
    };
    const [oursChunks, theirsChunks] = [await chunksTouched(a), await chunksTouched(b)];
    t.diagnostic(`python3 start-up files (${hotPaths.length} paths, hot region ${r.hotBytes} bytes): ${oursChunks} chunks of ${Math.ceil(r.bytes / CHUNK_BYTES)} in ours, ${theirsChunks} of ${Math.ceil(theirsBytes / CHUNK_BYTES)} in mkfs.erofs's`);
    assert.ok(oursChunks <= Math.ceil(r.hotBytes / CHUNK_BYTES), `${oursChunks} chunks touched, hot region is ${r.hotBytes} bytes`);
    assert.ok(oursChunks < theirsChunks, `ours ${oursChunks} chunks, mkfs.erofs ${theirsChunks}`);
  });
});

