// One EROFS image read through an ErofsSource: the superblock, inodes (bounded LRU with single flight),
// directories (streamed block by block; lookups binary-search the sorted blocks so that only the blocks on the
// search path are read), symlink targets, xattrs, file data and its extents. Format errors raised here carry
// the image's label (e.g. the layer digest) in front of their message.
import { LRUCache } from 'lru-cache';
import { DataReader } from './data.js';
import type { DataExtent, DataReaderOptions } from './data.js';
import { parseDirBlock } from './dir.js';
import type { DirEntry } from './dir.js';
import { ErofsError, ErofsFormatError, ErofsPathError } from './errors.js';
import { readInode } from './inode.js';
import type { ErofsInode } from './inode.js';
import { BlockReader } from './source.js';
import type { BlockReaderOptions, ErofsSource } from './source.js';
import { EROFS_SUPER_OFFSET, EROFS_SUPERBLOCK_SIZE, parseSuperblock } from './superblock.js';
import type { Superblock } from './superblock.js';
import { readXattrs } from './xattr.js';
import type { Xattr } from './xattr.js';

/** Default number of parsed inodes kept per image. */
export const DEFAULT_INODE_CACHE_ENTRIES = 16384;
/** Longest symlink target accepted (PATH_MAX - 1). */
export const MAX_SYMLINK_BYTES = 4095;
/** Bytes per piece when streaming file data. */
export const DEFAULT_STREAM_CHUNK_BYTES = 1024 * 1024;
/** Bytes read to find the superblock (then the whole first block when the checksum must be verified). */
const SUPERBLOCK_PROBE_BYTES = EROFS_SUPER_OFFSET + EROFS_SUPERBLOCK_SIZE;

export interface ErofsImageOptions extends BlockReaderOptions, DataReaderOptions {
  /** Prefix of error messages, e.g. "layer 1 (sha256:...)". */
  label?: string;
  /** Default DEFAULT_INODE_CACHE_ENTRIES. */
  inodeCacheEntries?: number;
}

const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');

export function isDotEntry(name: Buffer): boolean {
  return name.equals(DOT) || name.equals(DOTDOT);
}

export class ErofsImage {
  readonly source: ErofsSource;
  readonly superblock: Superblock;
  readonly label: string | undefined;
  readonly blocks: BlockReader;
  readonly #data: DataReader;
  readonly #inodes: LRUCache<number, Promise<ErofsInode>>;

  private constructor(source: ErofsSource, superblock: Superblock, options: ErofsImageOptions) {
    this.source = source;
    this.superblock = superblock;
    this.label = options.label;
    this.blocks = new BlockReader(source, superblock.blockSize, options);
    this.#data = new DataReader(this.blocks, superblock, options);
    // Bounded by entry count through maxSize (a `max` bound would preallocate its arrays on every open).
    this.#inodes = new LRUCache<number, Promise<ErofsInode>>({ maxSize: options.inodeCacheEntries ?? DEFAULT_INODE_CACHE_ENTRIES, sizeCalculation: () => 1 });
  }

  /** Reads and checks the superblock. */
  static async open(source: ErofsSource, options: ErofsImageOptions = {}): Promise<ErofsImage> {
    const label = options.label;
    return withLabel(label, async () => {
      if (!Number.isSafeInteger(source.size) || source.size < 0) throw new RangeError(`image size ${source.size} is not a byte count`);
      let head = await source.read(0, SUPERBLOCK_PROBE_BYTES);
      if (head.length >= SUPERBLOCK_PROBE_BYTES) {
        const bits = head.readUInt8(EROFS_SUPER_OFFSET + 12);
        const blockSize = bits >= 9 && bits <= 16 ? 2 ** bits : 0;
        if (blockSize > SUPERBLOCK_PROBE_BYTES && head.readUInt32LE(EROFS_SUPER_OFFSET + 8) & 1) head = await source.read(0, blockSize);
      }
      const sb = parseSuperblock(head);
      const image = new ErofsImage(source, sb, options);
      await image.root();
      return image;
    });
  }

  #guard<T>(fn: () => Promise<T>): Promise<T> {
    return withLabel(this.label, fn);
  }

  inode(nid: number): Promise<ErofsInode> {
    const cached = this.#inodes.get(nid);
    if (cached) return cached;
    const p = this.#guard(() => readInode(this.blocks, this.superblock, nid));
    this.#inodes.set(nid, p);
    p.catch(() => {
      if (this.#inodes.get(nid) === p) this.#inodes.delete(nid);
    });
    return p;
  }

  async root(): Promise<ErofsInode> {
    const root = await this.inode(this.superblock.rootNid);
    if (root.type !== 'dir') {
      throw this.#label(new ErofsFormatError('inode', root.offset, `root nid ${root.nid} is a ${root.type}, not a directory`));
    }
    return root;
  }

  #label<E extends ErofsError>(err: E): E {
    return addLabel(this.label, err);
  }

  #requireDir(dir: ErofsInode): void {
    if (dir.type !== 'dir') throw new ErofsPathError('ENOTDIR', `nid ${dir.nid}`, 'not a directory');
  }

  /** Entries of directory block `index` (the block's valid bytes only). */
  async #dirBlock(dir: ErofsInode, index: number): Promise<DirEntry[]> {
    const bs = this.superblock.blockSize;
    const start = index * bs;
    const data = await this.#data.read(dir, start, bs, true);
    const where = await this.#data.map(dir, start);
    return parseDirBlock(data, where.physical ?? start, dir.nid);
  }

  /** Every dirent of `dir` in on-disk order, "." and ".." included. */
  async *readdirRaw(dir: ErofsInode): AsyncGenerator<DirEntry> {
    this.#requireDir(dir);
    const blocks = Math.ceil(dir.size / this.superblock.blockSize);
    for (let i = 0; i < blocks; i++) yield* await this.#guard(() => this.#dirBlock(dir, i));
  }

  /** The entries of `dir` without "." and "..". */
  async *readdir(dir: ErofsInode): AsyncGenerator<DirEntry> {
    for await (const e of this.readdirRaw(dir)) if (!isDotEntry(e.name)) yield e;
  }

  /** The entry `name` of `dir`, by binary search over the sorted blocks; undefined when absent. */
  lookup(dir: ErofsInode, name: Buffer): Promise<DirEntry | undefined> {
    return this.#guard(async () => {
      this.#requireDir(dir);
      const blocks = Math.ceil(dir.size / this.superblock.blockSize);
      let lo = 0;
      let hi = blocks - 1;
      let candidate: DirEntry[] | undefined;
      while (lo <= hi) {
        const mid = (lo + hi) >>> 1;
        const entries = await this.#dirBlock(dir, mid);
        const cmp = Buffer.compare(name, entries[0]!.name);
        if (cmp === 0) return entries[0];
        if (cmp > 0) {
          candidate = entries;
          lo = mid + 1;
        } else {
          hi = mid - 1;
        }
      }
      if (!candidate) return undefined;
      let a = 0;
      let b = candidate.length - 1;
      while (a <= b) {
        const mid = (a + b) >>> 1;
        const cmp = Buffer.compare(name, candidate[mid]!.name);
        if (cmp === 0) return candidate[mid];
        if (cmp > 0) a = mid + 1;
        else b = mid - 1;
      }
      return undefined;
    });
  }

  /** A symlink's target bytes. */
  readlink(inode: ErofsInode): Promise<Buffer> {
    return this.#guard(async () => {
      if (inode.type !== 'symlink') throw new ErofsPathError('EINVAL', `nid ${inode.nid}`, 'not a symbolic link');
      if (inode.size === 0 || inode.size > MAX_SYMLINK_BYTES) {
        throw new ErofsFormatError('symlink', inode.offset, `nid ${inode.nid}: symlink target of ${inode.size} bytes (want 1..${MAX_SYMLINK_BYTES})`);
      }
      return Buffer.from(await this.#data.read(inode, 0, inode.size, true));
    });
  }

  /** Bytes [offset, offset + length) of a file's data (clamped at its size). */
  read(inode: ErofsInode, offset: number, length: number): Promise<Buffer> {
    return this.#guard(() => this.#data.read(inode, offset, length));
  }

  /** The whole data of `inode`, in pieces of at most `chunkBytes`. */
  async *stream(inode: ErofsInode, chunkBytes = DEFAULT_STREAM_CHUNK_BYTES): AsyncGenerator<Buffer> {
    for (let at = 0; at < inode.size; at += chunkBytes) {
      const piece = await this.read(inode, at, Math.min(chunkBytes, inode.size - at));
      yield piece;
    }
  }

  xattrs(inode: ErofsInode): Promise<Xattr[]> {
    return this.#guard(() => readXattrs(this.blocks, this.superblock, inode));
  }

  /** Where the file's data lives: extents in file order (contiguous plain runs merged). */
  async *extents(inode: ErofsInode): AsyncGenerator<DataExtent> {
    const it = this.#data.extents(inode);
    for (;;) {
      const r = await this.#guard(() => it.next());
      if (r.done) return;
      yield r.value;
    }
  }
}

function addLabel<E extends Error>(label: string | undefined, err: E): E {
  if (label && err instanceof ErofsError && !(err instanceof ErofsPathError) && !err.message.startsWith(`${label}: `)) {
    err.message = `${label}: ${err.message}`;
  }
  return err;
}

async function withLabel<T>(label: string | undefined, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw err instanceof Error ? addLabel(label, err) : err;
  }
}
