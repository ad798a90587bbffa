// The EROFS writer's start-up-ordered layout, read back with the user-space reader (src/erofs) and checked
// by fsck.erofs: directories first (hot ones and the ancestors of hot paths before the rest), then hot
// inodes in hot-path order, their data contiguous and in order right after that metadata, then cold inodes
// and cold data; hotBytes and hotInodes; an image without hot paths; identical bytes for identical input;
// errors for bad options.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { link, mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { ErofsImage, fileSource } from '../../src/erofs/index.js';
import type { DataExtent, ErofsInode } from '../../src/erofs/index.js';
import { planImage, scanTree, writeErofsImage } from '../../src/mkfs/index.js';
import { encodeInode } from '../../src/mkfs/inode.js';
import { pseudoRandomBytes } from '../../src/sample/build.js';
import { tempDir } from '../helpers/tmp.js';

const UUID = '0e0f5e1e-2000-4000-8000-0000000000b1';
const EPOCH = 1_700_000_000;
const BLOCK = 4096;
/** Cold files: enough data that the hot region is a small part of the image. */
const COLD_FILES = 40;
const COLD_FILE_BYTES = 100_000;

const HOT_PATHS = ['/usr/bin/app', 'usr/lib/libx.so', 'etc/conf', 'does/not/exist', 'usr/share', 'usr/lib/libx.so.1', 'usr/lib/liby.so'];
/** Distinct inodes the hot paths name: app, libx (twice, one inode), conf, usr/share, liby. */
const HOT_INODES = 5;
const HOT_FILES_IN_ORDER = ['usr/bin/app', 'usr/lib/libx.so', 'etc/conf', 'usr/lib/liby.so'];
/** Directories that go first: the root, the ancestors of hot paths and the hot directory. */
const HOT_DIRS = ['', 'usr', 'usr/bin', 'usr/lib', 'etc', 'usr/share'];

async function writeTree(root: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>([
    ['usr/bin/app', pseudoRandomBytes(20_000, 'app')],
    ['usr/bin/other', pseudoRandomBytes(9_000, 'other')],
    ['usr/lib/libx.so', pseudoRandomBytes(50_000, 'libx')],
    ['usr/lib/liby.so', pseudoRandomBytes(8_192, 'liby')],
    ['usr/lib/libz.so', pseudoRandomBytes(30_000, 'libz')],
    ['etc/conf', Buffer.from('hot=1\n')],
    ['etc/cold.conf', pseudoRandomBytes(12_345, 'cold-conf')],
    ['aaa/first', pseudoRandomBytes(7_000, 'first')],
  ]);
  for (let i = 0; i < COLD_FILES; i++) files.set(`usr/share/doc/f${String(i).padStart(2, '0')}`, pseudoRandomBytes(COLD_FILE_BYTES + i, `doc-${i}`));
  for (const [rel, data] of files) {
    await mkdir(join(root, rel, '..'), { recursive: true });
    await writeFile(join(root, rel), data);
  }
  await link(join(root, 'usr/lib/libx.so'), join(root, 'usr/lib/libx.so.1'));
  files.set('usr/lib/libx.so.1', files.get('usr/lib/libx.so')!);
  return files;
}

interface Opened {
  image: ErofsImage;
  bytes: Buffer;
}

async function openImage(t: { after(fn: () => unknown): void }, path: string): Promise<Opened> {
  const src = await fileSource(path);
  t.after(() => src.close());
  return { image: await ErofsImage.open(src), bytes: await readFile(path) };
}

async function lookupPath(image: ErofsImage, rel: string): Promise<ErofsInode> {
  let cur = await image.root();
  for (const seg of rel.split('/').filter(Boolean)) {
    const e = await image.lookup(cur, Buffer.from(seg));
    assert.ok(e, `${rel}: ${seg} not found`);
    cur = await image.inode(e.nid);
  }
  return cur;
}

/** Every inode with its path (first name), depth-first by name. */
async function allInodes(image: ErofsImage): Promise<Map<string, ErofsInode>> {
  const out = new Map<string, ErofsInode>();
  const seen = new Set<number>();
  const visit = async (dir: ErofsInode, rel: string): Promise<void> => {
    for await (const e of image.readdir(dir)) {
      const child = await image.inode(e.nid);
      const path = rel === '' ? e.name.toString('latin1') : `${rel}/${e.name.toString('latin1')}`;
      if (seen.has(child.nid)) continue;
      seen.add(child.nid);
      out.set(path, child);
      if (child.type === 'dir') await visit(child, path);
    }
  };
  const root = await image.root();
  out.set('', root);
  seen.add(root.nid);
  await visit(root, '');
  return out;
}

async function extentsOf(image: ErofsImage, inode: ErofsInode): Promise<DataExtent[]> {
  const out: DataExtent[] = [];
  for await (const e of image.extents(inode)) out.push(e);
  return out;
}

/** End of an inode's metadata in the image: inode, xattrs, inline tail. */
async function metaEnd(image: ErofsImage, inode: ErofsInode): Promise<number> {
  let end = inode.metaEnd;
  for (const e of await extentsOf(image, inode)) if (e.kind === 'inline') end = Math.max(end, e.physical! + e.length);
  return end;
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

test('hot files come first: directories, then hot inodes in order, then their data contiguous, then the rest', async (t) => {
  const dir = await tempDir(t);
  const tree = join(dir, 'tree');
  const files = await writeTree(tree);
  const out = join(dir, 'hot.erofs');
  const result = await writeErofsImage(tree, out, { uuid: UUID, epoch: EPOCH, hotPaths: HOT_PATHS });
  execFileSync('fsck.erofs', [out], { stdio: ['ignore', 'ignore', 'pipe'] });
  assert.equal(result.bytes, (await stat(out)).size);
  assert.equal(result.hotInodes, HOT_INODES);
  assert.equal(result.inodes, 1 + 6 + 1 + files.size - 1); // dirs: root, aaa, etc, usr, usr/bin, usr/lib, usr/share, usr/share/doc; one hard link

  const { image } = await openImage(t, out);
  assert.equal(image.superblock.uuid, UUID);
  assert.equal(image.superblock.buildTime, EPOCH);
  assert.equal(image.superblock.blocks * BLOCK, result.bytes);
  assert.equal(image.superblock.inodeCount, result.inodes);
  const inodes = await allInodes(image);
  const root = inodes.get('')!;
  assert.equal(root.offset, BLOCK, 'the root inode opens block 1');

  // Contents.
  for (const [rel, data] of files) {
    const ino = await lookupPath(image, rel);
    assert.equal(sha(await image.read(ino, 0, ino.size)), sha(data), rel);
  }
  assert.equal((await lookupPath(image, 'usr/lib/libx.so')).nid, (await lookupPath(image, 'usr/lib/libx.so.1')).nid);
  assert.equal((await lookupPath(image, 'usr/lib/libx.so')).nlink, 2);

  // Region order of inodes: hot directories, other directories, hot files (in order), cold files.
  const hotDirs = HOT_DIRS.map((p) => inodes.get(p)!);
  const coldDirs = [...inodes].filter(([p, i]) => i.type === 'dir' && !HOT_DIRS.includes(p)).map(([, i]) => i);
  const hotFiles = HOT_FILES_IN_ORDER.map((p) => inodes.get(p)!);
  const hotNids = new Set([...hotDirs, ...hotFiles].map((i) => i.nid));
  const coldFiles = [...inodes.values()].filter((i) => i.type !== 'dir' && !hotNids.has(i.nid));
  assert.ok(coldDirs.length > 0 && coldFiles.length > COLD_FILES);
  const maxOffset = (list: ErofsInode[]) => Math.max(...list.map((i) => i.offset));
  const minOffset = (list: ErofsInode[]) => Math.min(...list.map((i) => i.offset));
  assert.ok(maxOffset(hotDirs) < minOffset(coldDirs), 'hot directories before the other directories');
  assert.ok(maxOffset(coldDirs) < minOffset(hotFiles), 'every directory before the hot files');
  assert.ok(maxOffset(hotFiles) < minOffset(coldFiles), 'every hot inode before every cold inode');
  for (let i = 1; i < hotFiles.length; i++) assert.ok(hotFiles[i - 1]!.offset < hotFiles[i]!.offset, `${HOT_FILES_IN_ORDER[i]} after ${HOT_FILES_IN_ORDER[i - 1]}`);
  for (let i = 1; i < HOT_DIRS.length; i++) assert.ok(hotDirs[i - 1]!.offset < hotDirs[i]!.offset, `${HOT_DIRS[i]} after ${HOT_DIRS[i - 1]}`);

  // Hot data: right after the metadata of directories and hot inodes, contiguous, in hot-path order.
  let metadataEnd = 0;
  for (const i of [...hotDirs, ...coldDirs, ...hotFiles]) {
    metadataEnd = Math.max(metadataEnd, await metaEnd(image, i));
    if (i.type === 'dir') for (const e of await extentsOf(image, i)) if (e.kind === 'plain') metadataEnd = Math.max(metadataEnd, e.physical! + e.physicalLength!);
  }
  let expected = Math.ceil(metadataEnd / BLOCK) * BLOCK;
  let hotDataFiles = 0;
  for (const [k, ino] of hotFiles.entries()) {
    const plain = (await extentsOf(image, ino)).filter((e) => e.kind === 'plain');
    if (plain.length === 0) continue; // all inline (etc/conf)
    hotDataFiles++;
    assert.equal(plain.length, 1, `${HOT_FILES_IN_ORDER[k]}: one run of blocks`);
    assert.equal(plain[0]!.physical, expected, `${HOT_FILES_IN_ORDER[k]}: data where the previous hot data ends`);
    expected += Math.ceil(plain[0]!.physicalLength! / BLOCK) * BLOCK;
  }
  assert.equal(hotDataFiles, 3);
  assert.equal(result.hotBytes, expected, 'hotBytes ends with the last hot data block');
  assert.ok(result.hotBytes * 10 < result.bytes, `hot region ${result.hotBytes} of ${result.bytes} bytes`);
  // The small hot file's tail is inline, inside the hot region.
  const conf = await extentsOf(image, inodes.get('etc/conf')!);
  assert.deepEqual(conf.map((e) => e.kind), ['inline']);
  assert.ok(conf[0]!.physical! < result.hotBytes);
  // Cold data and cold inodes come after the hot region.
  for (const ino of coldFiles) {
    assert.ok(ino.offset >= result.hotBytes, `cold inode ${ino.nid} inside the hot region`);
    for (const e of await extentsOf(image, ino)) assert.ok(e.physical! >= result.hotBytes);
  }
});

test('without hot paths the image is valid, its data in tree order, and hot figures are zero', async (t) => {
  const dir = await tempDir(t);
  const tree = join(dir, 'tree');
  const files = await writeTree(tree);
  const out = join(dir, 'plain.erofs');
  const result = await writeErofsImage(tree, out, { uuid: UUID, epoch: EPOCH });
  execFileSync('fsck.erofs', [out], { stdio: ['ignore', 'ignore', 'pipe'] });
  assert.equal(result.hotInodes, 0);
  assert.equal(result.hotBytes, 0);
  const { image } = await openImage(t, out);
  for (const [rel, data] of files) {
    const ino = await lookupPath(image, rel);
    assert.equal(sha(await image.read(ino, 0, ino.size)), sha(data), rel);
  }
  // Tree order (depth-first, by name): aaa/first's data precedes etc/cold.conf's, which precedes usr/...'s.
  const order = ['aaa/first', 'etc/cold.conf', 'usr/bin/app', 'usr/bin/other', 'usr/lib/libx.so', 'usr/lib/liby.so', 'usr/lib/libz.so', 'usr/share/doc/f00', 'usr/share/doc/f39'];
  let last = -1;
  for (const rel of order) {
    const plain = (await extentsOf(image, await lookupPath(image, rel))).find((e) => e.kind === 'plain');
    assert.ok(plain && plain.physical! > last, `${rel} out of tree order`);
    last = plain.physical!;
  }
});

test('the same tree and options give the same bytes; other hot paths give other bytes with the same files', async (t) => {
  const dir = await tempDir(t);
  const tree = join(dir, 'tree');
  await writeTree(tree);
  const a = join(dir, 'a.erofs');
  const b = join(dir, 'b.erofs');
  const c = join(dir, 'c.erofs');
  const ra = await writeErofsImage(tree, a, { uuid: UUID, epoch: EPOCH, hotPaths: HOT_PATHS });
  const rb = await writeErofsImage(tree, b, { uuid: UUID, epoch: EPOCH, hotPaths: HOT_PATHS });
  assert.deepEqual(ra, rb);
  assert.equal(sha(await readFile(a)), sha(await readFile(b)));
  await writeErofsImage(tree, c, { uuid: UUID, epoch: EPOCH, hotPaths: ['usr/lib/libz.so'] });
  assert.notEqual(sha(await readFile(a)), sha(await readFile(c)));
  const { image: ia } = await openImage(t, a);
  const { image: ic } = await openImage(t, c);
  const fa = await allInodes(ia);
  const fc = await allInodes(ic);
  assert.deepEqual([...fa.keys()].sort(), [...fc.keys()].sort());
  for (const [p, ino] of fa) {
    if (ino.type !== 'file') continue;
    const other = fc.get(p)!;
    assert.equal(sha(await ia.read(ino, 0, ino.size)), sha(await ic.read(other, 0, other.size)), p);
  }
});

test('bad options and a missing tree are errors with context, and leave no output behind', async (t) => {
  const dir = await tempDir(t);
  const tree = join(dir, 'tree');
  await mkdir(tree);
  const out = join(dir, 'x.erofs');
  await assert.rejects(writeErofsImage(tree, out, { uuid: 'ABC', epoch: EPOCH }), /invalid UUID "ABC"/);
  await assert.rejects(writeErofsImage(tree, out, { uuid: UUID, epoch: -1 }), /invalid epoch -1/);
  await assert.rejects(writeErofsImage(join(dir, 'missing'), out, { uuid: UUID, epoch: EPOCH }), /cannot open the source tree .*missing/);
  await assert.rejects(stat(out), { code: 'ENOENT' });
  // An empty tree is a valid image: just the root.
  const r = await writeErofsImage(tree, out, { uuid: UUID, epoch: EPOCH, hotPaths: ['/'] });
  execFileSync('fsck.erofs', [out], { stdio: ['ignore', 'ignore', 'pipe'] });
  assert.equal(r.inodes, 1);
  assert.equal(r.hotInodes, 1);
  assert.equal(r.bytes, 2 * BLOCK);
});

test('a file over 4 GiB is planned with an extended inode, a 64-bit size and its blocks (sparse source, not written)', async (t) => {
  const dir = await tempDir(t);
  const tree = join(dir, 'tree');
  await mkdir(tree);
  const size = 2 ** 32 + 5000;
  const fh = await open(join(tree, 'huge'), 'w');
  await fh.truncate(size);
  await fh.close();
  await writeFile(join(tree, 'small'), 'x');
  const plan = planImage(await scanTree(tree), BigInt(EPOCH), ['huge']);
  const huge = plan.inodes.find((p) => p.src.rel.toString() === 'huge')!;
  assert.equal(huge.size, size);
  assert.equal(huge.extended, true);
  assert.equal(huge.region, 'hot');
  assert.equal(huge.nblocks, Math.floor(size / BLOCK));
  assert.equal(huge.tailBytes, size % BLOCK);
  assert.ok(plan.totalBytes > size && plan.hotBytes > size);
  assert.equal(plan.hotBytes, (huge.iu + huge.nblocks) * BLOCK);
  const raw = Buffer.alloc(64);
  encodeInode({ extended: true, layout: huge.layout, xattrIcount: 0, mode: huge.mode, nlink: 1, size, iu: huge.iu, ino: huge.ino, uid: 0, gid: 0, mtimeSec: huge.mtimeSec, mtimeNsec: huge.mtimeNsec }, raw, 0);
  assert.equal(raw.readBigUInt64LE(8), BigInt(size));
});
