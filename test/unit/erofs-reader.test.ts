// Unit tests of the EROFS reader's pieces: the LZ4 block decoder (against the lz4 tool's output and
// hand-made malformed streams), the typed errors for damaged superblocks, inodes, dirents and sizes, path
// resolution (symlink loops, "..", absolute targets, ENOTDIR), and prefetch-by-path ranges covering every byte
// a later read of those paths touches.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { crc32cRaw } from '../../src/erofs/crc32c.js';
import {
  bufferSource,
  chunksOfRanges,
  ErofsFormatError,
  ErofsImage,
  ErofsPathError,
  ErofsUnsupportedError,
  LayeredView,
  lz4DecompressBlock,
  MAX_SYMLINK_HOPS,
  pathRanges,
} from '../../src/erofs/index.js';
import type { ErofsSource } from '../../src/erofs/index.js';
import { pseudoRandomBytes } from '../../src/sample/build.js';
import { compressibleText, mkfsErofs } from '../fixtures/erofs/helpers.js';
import { tempDir } from '../helpers/tmp.js';

const SB = 1024;
/** lz4 legacy frames: magic, then blocks of up to 8 MiB each preceded by their compressed size. */
const LZ4_LEGACY_MAGIC = 0x184c2102;

function fixChecksum(img: Buffer): void {
  img.writeUInt32LE(0, SB + 4);
  img.writeUInt32LE(crc32cRaw(0xffffffff, img.subarray(SB, 4096)), SB + 4);
}

function isFormatError(structure: string): (e: unknown) => boolean {
  return (e) => e instanceof ErofsFormatError && e.structure === structure;
}

async function openRaw(data: Buffer): Promise<LayeredView> {
  return new LayeredView([await ErofsImage.open(bufferSource(data))], { raw: true });
}

describe('lz4 block decoder', () => {
  test('decodes what the lz4 tool writes, for random and repetitive data', async (t) => {
    const dir = await tempDir(t);
    for (const [name, data] of [
      ['random', pseudoRandomBytes(200_000, 'lz4-random')],
      ['text', compressibleText(300_000, 'lz4-text')],
      ['zeros', Buffer.alloc(150_000)],
    ] as const) {
      const file = join(dir, name);
      await writeFile(file, data);
      for (const level of ['-1', '-9']) {
        const framed = execFileSync('lz4', ['-l', level, '-c', file]);
        assert.equal(framed.readUInt32LE(0), LZ4_LEGACY_MAGIC);
        const size = framed.readUInt32LE(4);
        const block = framed.subarray(8, 8 + size);
        assert.ok(lz4DecompressBlock(block, data.length, 0).equals(data), `${name} ${level}`);
        // Asking for fewer bytes stops early with a prefix.
        assert.ok(lz4DecompressBlock(block, 1000, 0).equals(data.subarray(0, 1000)));
      }
    }
  });

  test('literals, long lengths and overlapping matches', () => {
    // 20 literals (15 + 5 extension), then a match of distance 1 and length 4 + 15 + 255 + 10.
    const lits = Buffer.from('abcdefghijklmnopqrst');
    const stream = Buffer.concat([Buffer.from([0xff, 5]), lits, Buffer.from([1, 0, 255, 10])]);
    const out = lz4DecompressBlock(stream, 20 + 4 + 15 + 255 + 10, 0);
    assert.equal(out.subarray(0, 20).toString(), 'abcdefghijklmnopqrst');
    assert.ok(out.subarray(20).every((b) => b === 't'.charCodeAt(0)));
  });

  test('malformed streams are ErofsFormatError naming the lz4 structure and offset', () => {
    const bad: Array<[string, Buffer, number]> = [
      ['empty input', Buffer.alloc(0), 10],
      ['offset 0', Buffer.from([0x10, 0x41, 0, 0]), 10],
      ['offset before output', Buffer.from([0x10, 0x41, 5, 0]), 10],
      ['literal run past input', Buffer.from([0x50, 0x41]), 10],
      ['truncated length', Buffer.from([0xf0]), 100],
      ['truncated offset', Buffer.from([0x10, 0x41, 1]), 10],
      ['stream shorter than output', Buffer.from([0x10, 0x41]), 10],
    ];
    for (const [what, input, size] of bad) {
      assert.throws(() => lz4DecompressBlock(input, size, 5000), (e: unknown) => e instanceof ErofsFormatError && e.structure === 'lz4' && e.offset >= 5000, what);
    }
  });
});

describe('typed errors and path resolution on real images', () => {
  let clean: Buffer;
  let view: LayeredView;
  let work: string;
  const cleanups: Array<() => unknown> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  before(async () => {
    work = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) });
    const tree = join(work, 'tree');
    await mkdir(join(tree, 'dir/sub'), { recursive: true });
    await writeFile(join(tree, 'dir/sub/file'), 'content\n');
    await writeFile(join(tree, 'big'), pseudoRandomBytes(50_000, 'reader-big'));
    for (let i = 0; i < 300; i++) await writeFile(join(tree, `dir/entry-${i}`), '');
    await symlink('dir/sub', join(tree, 'rel'));
    await symlink('/dir/sub/file', join(tree, 'abs'));
    await symlink('../../../../dir/sub/file', join(tree, 'dir/climb'));
    await symlink('self', join(tree, 'self'));
    await symlink('big/x', join(tree, 'through-file'));
    const image = join(work, 'r.erofs');
    mkfsErofs(tree, image);
    clean = await readFile(image);
    view = await openRaw(clean);
  });

  test('bad magic, checksum, block size and unknown features', async () => {
    const magic = Buffer.from(clean);
    magic.writeUInt32LE(0x12345678, SB);
    await assert.rejects(ErofsImage.open(bufferSource(magic)), (e: unknown) => e instanceof ErofsFormatError && e.structure === 'superblock' && e.offset === SB && /bad magic/.test(e.message));
    const sum = Buffer.from(clean);
    sum[SB + 100]! ^= 1;
    await assert.rejects(ErofsImage.open(bufferSource(sum)), (e: unknown) => e instanceof ErofsFormatError && e.offset === SB + 4 && /checksum/.test(e.message));
    const bits = Buffer.from(clean);
    bits[SB + 12] = 30;
    fixChecksum(bits);
    await assert.rejects(ErofsImage.open(bufferSource(bits)), isFormatError('superblock'));
    const feature = Buffer.from(clean);
    feature.writeUInt32LE(0x80, SB + 80);
    fixChecksum(feature);
    await assert.rejects(ErofsImage.open(bufferSource(feature)), (e: unknown) => e instanceof ErofsUnsupportedError && e.offset === SB + 80);
    await assert.rejects(ErofsImage.open(bufferSource(clean.subarray(0, 1100))), isFormatError('superblock'));
  });

  test('an inode past the image, a dirent past its block, an absurd size', async () => {
    const root = await view.root();
    const image = view.layers[0]!;
    await assert.rejects(image.inode(clean.length / 32 + 10), isFormatError('inode'));
    // The big directory's first block: point an entry's name offset past the block.
    const dir = await view.resolve('/dir');
    let block = -1;
    for await (const e of view.extents(dir)) if (e.kind === 'plain') block = e.physical!;
    assert.ok(block > 0);
    const dirent = Buffer.from(clean);
    dirent.writeUInt16LE(5000, block + 3 * 12 + 8);
    fixChecksum(dirent);
    const v2 = await openRaw(dirent);
    await assert.rejects(v2.readdir(await v2.resolve('/dir')), (e: unknown) => e instanceof ErofsFormatError && e.structure === 'dirent' && e.offset >= block && e.offset < block + 4096);
    // A file claiming an absurd size: its data would lie outside the image.
    const big = await view.resolve('/big');
    const huge = Buffer.from(clean);
    if (big.inode.extended) huge.writeBigUInt64LE(1n << 52n, big.inode.offset + 8);
    else huge.writeUInt32LE(0xfffffff0, big.inode.offset + 8);
    fixChecksum(huge);
    const v3 = await openRaw(huge);
    await assert.rejects(v3.read(await v3.resolve('/big'), 0, 10), (e: unknown) => e instanceof ErofsFormatError && (e.structure === 'data' || e.structure === 'inline-data'));
    if (big.inode.extended) {
      huge.writeBigUInt64LE(1n << 60n, big.inode.offset + 8);
      fixChecksum(huge);
      await assert.rejects((await openRaw(huge)).resolve('/big'), isFormatError('inode'));
    }
    assert.equal(root.inode.type, 'dir');
  });

  test('paths: symlinks relative and absolute, "..", loops, ENOTDIR, ENOENT', async () => {
    const read = async (p: string) => (await view.read(await view.resolve(p, { followFinal: true }), 0, 100)).toString();
    assert.equal(await read('/rel/file'), 'content\n');
    assert.equal(await read('abs'), 'content\n');
    assert.equal(await read('/dir/climb'), 'content\n');
    assert.equal(await read('/../../dir/./sub/../sub/file'), 'content\n');
    assert.equal((await view.resolve('/rel')).inode.type, 'symlink');
    assert.equal((await view.resolve('/rel', { followFinal: true })).inode.type, 'dir');
    const code = (c: string) => (e: unknown) => e instanceof ErofsPathError && e.code === c;
    await assert.rejects(view.resolve('/self', { followFinal: true }), code('ELOOP'));
    await assert.rejects(view.resolve('/self/x'), code('ELOOP'));
    await assert.rejects(view.resolve('/big/x'), code('ENOTDIR'));
    await assert.rejects(view.resolve('/through-file', { followFinal: true }), code('ENOTDIR'));
    await assert.rejects(view.resolve('/dir/nope'), code('ENOENT'));
    await assert.rejects(view.resolve(`/${'n'.repeat(300)}`), code('ENAMETOOLONG'));
    assert.equal(MAX_SYMLINK_HOPS, 40);
    // Binary search over many directory blocks finds every entry.
    const dir = await view.resolve('/dir');
    for (const i of [0, 1, 99, 150, 299]) assert.ok(await view.lookup(dir, Buffer.from(`entry-${i}`)), `entry-${i}`);
    assert.equal(await view.lookup(dir, Buffer.from('entry-300')), undefined);
    assert.equal(await view.lookup(dir, Buffer.from('a')), undefined);
    assert.equal(await view.lookup(dir, Buffer.from('zzz')), undefined);
  });

  test('prefetch ranges of some paths cover every byte reading those paths touches', async () => {
    const { ranges, missing } = await pathRanges(view, ['/rel/file', '/big', '/dir', '/nope']);
    assert.deepEqual(missing, ['/nope']);
    const covered = ranges.get(0)!;
    const touched: Array<[number, number]> = [];
    const recording: ErofsSource = {
      size: clean.length,
      read: async (offset, length) => {
        touched.push([offset, Math.min(length, clean.length - offset)]);
        return clean.subarray(offset, offset + length);
      },
    };
    // A fresh image without block cache: every read reaches the source at its exact range.
    const fresh = new LayeredView([await ErofsImage.open(recording, { cacheBytes: 0 })], { raw: true });
    touched.length = 0;
    const file = await fresh.resolve('/rel/file', { followFinal: true });
    await fresh.read(file, 0, 100);
    await fresh.read(await fresh.resolve('/big'), 0, 60_000);
    for await (const _ of fresh.walk(await fresh.resolve('/dir'), '/dir')) void _;
    // Reads are block-granular: compare at block (the smallest chunk) granularity. Block 0 (the superblock and
    // the root) is read before any path.
    const wanted = new Set(chunksOfRanges(covered, 4096));
    const read = chunksOfRanges(touched.map(([offset, length]) => ({ offset, length })), 4096);
    assert.deepEqual(read.filter((b) => b !== 0 && !wanted.has(b)), [], `prefetch blocks ${[...wanted].join(',')}`);
    assert.ok(read.length > 10);
    assert.deepEqual(chunksOfRanges([{ offset: 0, length: 1 }, { offset: 4095, length: 2 }, { offset: 10_000, length: 0 }], 4096), [0, 1]);
  });
});
