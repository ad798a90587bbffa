// Mutation fuzzing of the EROFS reader: small images of every layout mkfs.erofs writes, damaged thousands of
// times (bit flips, random bytes and 16/32-bit values in the metadata the reader touches, random superblock,
// inode and dirent fields with the superblock checksum recomputed so the damage gets past it, truncations),
// then opened and walked completely (every directory, inode, xattr, symlink, file head and tail, extent map,
// path resolution through symlinks, a merged two-layer view). Only ErofsError may escape, each mutant's work
// must stay within a time and byte budget, and the undamaged images read back exactly.
import assert from 'node:assert/strict';
import { readFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { crc32cRaw } from '../../src/erofs/crc32c.js';
import { ErofsError, ErofsImage, LayeredView } from '../../src/erofs/index.js';
import type { ErofsSource } from '../../src/erofs/index.js';
import { prng, randInt } from '../fixtures/chunktable/helpers.js';
import { compressibleText, mkfsErofs } from '../fixtures/erofs/helpers.js';
import { tempDir } from '../helpers/tmp.js';
import { execFileSync } from 'node:child_process';
import { pseudoRandomBytes } from '../../src/sample/build.js';

const VARIANTS: string[][] = [[], ['-zlz4hc'], ['--chunksize=4096'], ['-zlz4', '-Elegacy-compress'], ['-zlz4hc', '-C16384'], ['-zlz4hc', '-Eztailpacking']];
const MUTANTS_PER_VARIANT = 700;
/** One mutant's walk may take at most this long (a hang or a quadratic blow-up fails the test). */
const MUTANT_TIME_BUDGET_MS = 5000;
/** ... and ask the source for at most this many times the image size. */
const MUTANT_READ_BUDGET_FACTOR = 64;
/** Bytes of each file read (head and tail), so a mutant claiming a huge sparse file stays cheap. */
const FILE_PROBE_BYTES = 64 * 1024;
/** Entries walked per mutant at most. */
const MAX_WALK_ENTRIES = 2000;
/** Extents listed per file at most. */
const MAX_EXTENTS = 256;
const SB = 1024;
/** Superblock fields worth randomizing (offsets inside the superblock) and their widths. */
const SB_FIELDS: Array<[number, 1 | 2 | 4]> = [[8, 4], [12, 1], [13, 1], [14, 2], [16, 4], [24, 4], [36, 4], [40, 4], [44, 4], [80, 4], [84, 2], [86, 2]];
const INODE_FIELDS: Array<[number, 1 | 2 | 4]> = [[0, 2], [2, 2], [4, 2], [6, 2], [8, 4], [12, 4], [16, 4], [16, 2], [20, 4], [24, 4], [28, 4], [32, 4], [40, 4], [44, 4]];

async function writeFuzzTree(root: string): Promise<void> {
  await mkdir(join(root, 'dir/sub'), { recursive: true });
  await mkdir(join(root, 'big'));
  for (let i = 0; i < 120; i++) await writeFile(join(root, `big/name-${i}-${'x'.repeat(i % 20)}`), i % 10 === 0 ? `${i}` : '');
  await writeFile(join(root, 'dir/text'), compressibleText(70_000, 'fuzz-text'));
  await writeFile(join(root, 'dir/random'), pseudoRandomBytes(9000, 'fuzz-random'));
  await writeFile(join(root, 'dir/sub/small'), 'small\n');
  await writeFile(join(root, 'empty'), '');
  await symlink('dir/sub/small', join(root, 'link'));
  await symlink('loop2', join(root, 'loop1'));
  await symlink('loop1', join(root, 'loop2'));
  execFileSync('mknod', [join(root, 'chr'), 'c', '1', '3']);
  execFileSync('mknod', [join(root, 'wh'), 'c', '0', '0']);
  execFileSync('mkfifo', [join(root, 'fifo')]);
  for (const f of ['dir/text', 'dir/random', 'empty']) execFileSync('setfattr', ['-n', 'user.shared', '-v', 'v'.repeat(100), join(root, f)]);
  execFileSync('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', join(root, 'dir')]);
  execFileSync('setfattr', ['-n', 'user.long', '-v', 'L'.repeat(700), join(root, 'dir/sub/small')]);
}

interface Recorded {
  /** Image offsets the reader read while walking the clean image. */
  readOffsets: number[];
  inodeOffsets: number[];
  dirBlocks: number[];
}

function countingSource(data: Buffer, counter: { bytes: number }, recorded?: Set<number>): ErofsSource {
  return {
    size: data.length,
    read: async (offset, length) => {
      counter.bytes += length;
      if (recorded) for (let o = offset; o < Math.min(offset + length, data.length); o += 16) recorded.add(o);
      return data.subarray(Math.min(offset, data.length), Math.min(offset + length, data.length));
    },
  };
}

/** Opens and walks everything; returns a digest-like summary (for the clean-image check). */
async function exercise(data: Buffer, rand: () => number, merge: boolean, record?: Recorded, seen?: Set<number>): Promise<string[]> {
  const counter = { bytes: 0 };
  const image = await ErofsImage.open(countingSource(data, counter, seen), { cacheBytes: 64 * 1024, extentCacheBytes: 256 * 1024 });
  const summary: string[] = [];
  const view = new LayeredView([image], { raw: true });
  let entries = 0;
  for await (const { path, node } of view.walk(await view.root(), '')) {
    if (++entries > MAX_WALK_ENTRIES) break;
    const ino = node.inode;
    record?.inodeOffsets.push(ino.offset);
    const xattrs = await view.xattrs(node);
    let line = `${path} ${ino.type} ${ino.size} ${xattrs.map((x) => `${x.name}=${x.value.length}`).join(',')}`;
    if (ino.type === 'symlink') line += ` -> ${(await view.readlink(node)).toString()}`;
    if (ino.type === 'file' || ino.type === 'dir') {
      let n = 0;
      for await (const e of view.extents(node)) {
        if (++n > MAX_EXTENTS) break;
        if (record && ino.type === 'dir' && e.physical !== undefined) record.dirBlocks.push(e.physical);
      }
    }
    if (ino.type === 'file') {
      const head = await view.read(node, 0, FILE_PROBE_BYTES);
      const tail = await view.read(node, Math.max(0, ino.size - FILE_PROBE_BYTES), FILE_PROBE_BYTES);
      const mid = await view.read(node, Math.floor(rand() * ino.size), 5000);
      line += ` ${head.length} ${tail.length} ${mid.length} ${head.subarray(0, 16).toString('hex')}`;
    }
    summary.push(line);
  }
  for (const p of ['/link', '/dir/sub/../sub/small', '/loop1', '/big/name-7-xxxxxxx', '/nope']) {
    try {
      await view.resolve(p, { followFinal: true });
    } catch (err) {
      if (!(err instanceof ErofsError)) throw err;
      summary.push(`${p}: ${(err as ErofsError).name}`);
    }
  }
  // The image over itself, merged: whiteouts and opaque dirs of the damaged image are interpreted too.
  if (merge) {
    const merged = new LayeredView([image, image]);
    let m = 0;
    for await (const { node } of merged.walk(await merged.root(), '')) {
      await merged.xattrs(node);
      if (++m > MAX_WALK_ENTRIES) break;
    }
  }
  if (counter.bytes > MUTANT_READ_BUDGET_FACTOR * Math.max(data.length, 64 * 1024)) {
    throw new Error(`read ${counter.bytes} bytes of a ${data.length}-byte image`);
  }
  return summary;
}

function fixChecksum(img: Buffer): void {
  if (img.length < 4096 || !(img.readUInt32LE(SB + 8) & 1)) return;
  img.writeUInt32LE(0, SB + 4);
  img.writeUInt32LE(crc32cRaw(0xffffffff, img.subarray(SB, 4096)), SB + 4);
}

function writeRandom(img: Buffer, at: number, width: 1 | 2 | 4, rand: () => number): void {
  if (at < 0 || at + width > img.length) return;
  // Half the time a small value (counts, offsets that land inside the image), half the time anything.
  const value = rand() < 0.5 ? randInt(rand, 64) : Math.floor(rand() * 2 ** (8 * width));
  if (width === 1) img.writeUInt8(value & 0xff, at);
  else if (width === 2) img.writeUInt16LE(value & 0xffff, at);
  else img.writeUInt32LE(value >>> 0, at);
}

function mutate(clean: Buffer, rec: Recorded, rand: () => number): { img: Buffer; what: string } {
  const pick = <T>(xs: T[]): T => xs[randInt(rand, xs.length)]!;
  const kind = randInt(rand, 7);
  if (kind === 0) {
    const len = randInt(rand, clean.length);
    return { img: Buffer.from(clean.subarray(0, len)), what: `truncate to ${len}` };
  }
  const img = Buffer.from(clean);
  let what = '';
  const n = 1 + randInt(rand, 3);
  for (let k = 0; k < n; k++) {
    switch (kind) {
      case 1: {
        const at = pick(rec.readOffsets) + randInt(rand, 16);
        if (at < img.length) img[at]! ^= 1 << randInt(rand, 8);
        what += `flip@${at} `;
        break;
      }
      case 2: {
        const at = pick(rec.readOffsets) + randInt(rand, 16);
        if (at < img.length) img[at] = randInt(rand, 256);
        what += `byte@${at} `;
        break;
      }
      case 3: {
        const width = rand() < 0.5 ? 2 : 4;
        const at = (pick(rec.readOffsets) + randInt(rand, 16)) & ~(width - 1);
        writeRandom(img, at, width, rand);
        what += `u${width * 8}@${at} `;
        break;
      }
      case 4: {
        const [off, width] = pick(SB_FIELDS);
        writeRandom(img, SB + off, width, rand);
        what += `sb+${off} `;
        break;
      }
      case 5: {
        const [off, width] = pick(INODE_FIELDS);
        const at = pick(rec.inodeOffsets) + off;
        writeRandom(img, at, width, rand);
        what += `inode+${off}@${at} `;
        break;
      }
      default: {
        const block = pick(rec.dirBlocks);
        const entry = randInt(rand, 8);
        const [off, width] = pick<[number, 1 | 2 | 4]>([[0, 4], [4, 4], [8, 2], [10, 1]]);
        writeRandom(img, block + entry * 12 + off, width, rand);
        what += `dirent${entry}+${off}@${block} `;
      }
    }
  }
  if (kind !== 4 || rand() < 0.9) {
    if (rand() < 0.85) fixChecksum(img);
  }
  return { img, what };
}

for (const [v, args] of VARIANTS.entries()) {
  test(`fuzz: ${MUTANTS_PER_VARIANT} damaged ${args.join(' ') || 'plain'} images raise only ErofsError, within budget`, async (t) => {
    const dir = await tempDir(t);
    await writeFuzzTree(join(dir, 'tree'));
    const file = join(dir, 'fuzz.erofs');
    mkfsErofs(join(dir, 'tree'), file, args);
    const clean = await readFile(file);
    const rec: Recorded = { readOffsets: [], inodeOffsets: [], dirBlocks: [] };
    const seen = new Set<number>();
    const reference = await exercise(clean, prng(1), true, rec, seen);
    assert.ok(reference.length > 130, `clean walk saw ${reference.length} entries`);
    assert.ok(reference.some((l) => l.startsWith('/dir/text file 70000')));
    assert.ok(reference.some((l) => l.includes('/loop1: ErofsPathError')));
    rec.readOffsets = [...seen];
    const rand = prng(1000 + v);
    const outcomes = { ok: 0, typed: 0 };
    const names = new Map<string, number>();
    for (let i = 0; i < MUTANTS_PER_VARIANT; i++) {
      const { img, what } = mutate(clean, rec, rand);
      const started = Date.now();
      try {
        await exercise(img, rand, i % 4 === 0);
        outcomes.ok++;
      } catch (err) {
        if (!(err instanceof ErofsError)) {
          await writeFile(join(dir, 'failing.erofs'), img);
          assert.fail(`mutant ${i} (${what.trim()}) raised ${(err as Error)?.stack ?? String(err)}`);
        }
        outcomes.typed++;
        names.set(err.name, (names.get(err.name) ?? 0) + 1);
      }
      const took = Date.now() - started;
      assert.ok(took < MUTANT_TIME_BUDGET_MS, `mutant ${i} (${what.trim()}) took ${took} ms`);
    }
    t.diagnostic(`${args.join(' ') || 'plain'}: ${outcomes.ok} walked fine, ${outcomes.typed} typed errors ${JSON.stringify(Object.fromEntries(names))}`);
    // The mutations must actually reach the parser: plenty of both outcomes.
    assert.ok(outcomes.typed > MUTANTS_PER_VARIANT / 10, `only ${outcomes.typed} mutants were rejected`);
    assert.ok(outcomes.ok > MUTANTS_PER_VARIANT / 20, `only ${outcomes.ok} mutants still walked`);
  });
}
