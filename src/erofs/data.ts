// File data of every layout: where each byte of an inode's data lives (extents) and reading it. FLAT_PLAIN
// data is contiguous from raw_blkaddr; FLAT_INLINE keeps the last (partial) block right after the inode and
// its xattrs, in the same block; CHUNK_BASED files map each chunk (block size << chunk bits) through a 4-byte
// block address or 8-byte chunk index array after the xattrs (address ~0 is a hole); compressed files go
// through ZMap and are decompressed one extent at a time (LZ4, or stored uncompressed), with a bounded cache
// of decompressed extents.
import { LRUCache } from 'lru-cache';
import { ErofsFormatError, ErofsUnsupportedError } from './errors.js';
import { CHUNK_FORMAT_BLKBITS_MASK, CHUNK_FORMAT_INDEXES, DATA_LAYOUT } from './inode.js';
import type { ErofsInode } from './inode.js';
import { lz4DecompressBlock } from './lz4.js';
import type { BlockReader } from './source.js';
import type { Superblock } from './superblock.js';
import { FEATURE_INCOMPAT_ZERO_PADDING } from './superblock.js';
import { Z_ALGORITHM_LZ4, Z_ALGORITHM_NAMES, ZMap } from './zmap.js';

/** Chunk block address meaning "no data" (a hole that reads as zeros). */
export const EROFS_NULL_ADDR = 0xffffffff;
/** Chunk sizes above this are refused (they cannot be real and would overflow offset arithmetic). */
export const MAX_CHUNK_BITS = 40;
/** Default bound of the decompressed extent cache. */
export const DEFAULT_EXTENT_CACHE_BYTES = 16 * 1024 * 1024;
/** Compression maps kept (one per recently read compressed inode). */
const ZMAP_CACHE_ENTRIES = 256;

export type ExtentKind = 'plain' | 'inline' | 'hole' | 'compressed' | 'uncompressed';

/** Where a run of an inode's data lives in the image. */
export interface DataExtent {
  /** File offset and length (logical bytes). */
  logical: number;
  length: number;
  kind: ExtentKind;
  /** Image offset and length holding these bytes (the whole pcluster for compressed extents); absent for holes. */
  physical?: number;
  physicalLength?: number;
  /** Compression algorithm name for compressed extents. */
  algorithm?: string;
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

export interface DataReaderOptions {
  /** Default DEFAULT_EXTENT_CACHE_BYTES. */
  extentCacheBytes?: number;
}

export class DataReader {
  readonly #reader: BlockReader;
  readonly #sb: Superblock;
  readonly #zmaps = new LRUCache<number, ZMap>({ max: ZMAP_CACHE_ENTRIES });
  readonly #extents: LRUCache<string, Buffer> | undefined;

  constructor(reader: BlockReader, sb: Superblock, options: DataReaderOptions = {}) {
    this.#reader = reader;
    this.#sb = sb;
    const bytes = options.extentCacheBytes ?? DEFAULT_EXTENT_CACHE_BYTES;
    this.#extents = bytes > 0 ? new LRUCache<string, Buffer>({ maxSize: bytes, sizeCalculation: (b) => Math.max(1, b.length) }) : undefined;
  }

  /** The extent holding logical byte `offset` of `inode` (0 <= offset < size). */
  async map(inode: ErofsInode, offset: number): Promise<DataExtent> {
    switch (inode.dataLayout) {
      case DATA_LAYOUT.flatPlain:
      case DATA_LAYOUT.flatInline:
        return this.#mapFlat(inode, offset);
      case DATA_LAYOUT.chunkBased:
        return this.#mapChunk(inode, offset);
      case DATA_LAYOUT.compressedFull:
      case DATA_LAYOUT.compressedCompact: {
        const z = await (await this.#zmap(inode)).map(offset);
        return {
          logical: z.logical,
          length: z.length,
          kind: z.kind,
          physical: z.physical,
          physicalLength: z.physicalLength,
          ...(z.kind === 'compressed' ? { algorithm: Z_ALGORITHM_NAMES[z.algorithm] ?? `algorithm-${z.algorithm}` } : {}),
        };
      }
      default:
        throw new ErofsFormatError('inode', inode.offset, `nid ${inode.nid}: unknown data layout ${inode.dataLayout}`);
    }
  }

  /** Every extent of the file in order; physically contiguous runs of the same kind are merged. */
  async *extents(inode: ErofsInode): AsyncGenerator<DataExtent> {
    let pending: DataExtent | undefined;
    let offset = 0;
    while (offset < inode.size) {
      const e = await this.map(inode, offset);
      const next = e.logical + e.length;
      if (next <= offset) throw new ErofsFormatError('data', inode.offset, `nid ${inode.nid}: data map makes no progress at offset ${offset}`);
      if (
        pending &&
        e.kind === pending.kind &&
        (e.kind === 'plain' || e.kind === 'hole') &&
        pending.logical + pending.length === e.logical &&
        (e.kind === 'hole' || pending.physical! + pending.physicalLength! === e.physical)
      ) {
        pending.length += e.length;
        if (e.kind === 'plain') pending.physicalLength! += e.physicalLength!;
      } else {
        if (pending) yield pending;
        pending = { ...e };
      }
      offset = next;
    }
    if (pending) yield pending;
  }

  /**
   * Exactly the file bytes [offset, offset + length) (clamped at the file size). `metadata` reads go through
   * the block cache (directories, symlinks); file data bypasses it.
   */
  async read(inode: ErofsInode, offset: number, length: number, metadata = false): Promise<Buffer> {
    const end = Math.min(inode.size, offset + length);
    if (offset >= end) return Buffer.alloc(0);
    const parts: Buffer[] = [];
    let at = offset;
    while (at < end) {
      const e = await this.map(inode, at);
      const extentEnd = e.logical + e.length;
      if (extentEnd <= at || e.logical > at) throw new ErofsFormatError('data', inode.offset, `nid ${inode.nid}: data map makes no progress at offset ${at}`);
      const take = Math.min(end, extentEnd) - at;
      parts.push(await this.#readExtent(inode, e, at - e.logical, take, metadata));
      at += take;
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  /** `length` bytes at `within` bytes into extent `e`. */
  async #readExtent(inode: ErofsInode, e: DataExtent, within: number, length: number, metadata: boolean): Promise<Buffer> {
    switch (e.kind) {
      case 'hole':
        return Buffer.alloc(length);
      case 'plain':
        if (metadata) return this.#reader.read(e.physical! + within, length, 'data', `data of nid ${inode.nid}`);
        return this.#reader.readDirect(e.physical! + within, length, 'data', `data of nid ${inode.nid}`);
      case 'inline':
        return this.#reader.read(e.physical! + within, length, 'inline-data', `inline data of nid ${inode.nid}`);
      case 'uncompressed':
      case 'compressed': {
        const data = await this.#decompressed(inode, e);
        return data.subarray(within, within + length);
      }
    }
  }

  async #decompressed(inode: ErofsInode, e: DataExtent): Promise<Buffer> {
    const key = `${inode.nid}:${e.logical}`;
    const cached = this.#extents?.get(key);
    if (cached) return cached;
    const pa = e.physical!;
    const plen = e.physicalLength!;
    const raw = await this.#reader.readDirect(pa, plen, 'pcluster', `pcluster of nid ${inode.nid}`);
    let data: Buffer;
    if (e.kind === 'uncompressed') {
      data = raw.subarray(0, e.length);
    } else {
      if (e.algorithm !== Z_ALGORITHM_NAMES[Z_ALGORITHM_LZ4]) {
        throw new ErofsUnsupportedError(`${e.algorithm} compression`, pa, `nid ${inode.nid}: only lz4 pclusters can be decompressed`);
      }
      let margin = 0;
      if (this.#sb.featureIncompat & FEATURE_INCOMPAT_ZERO_PADDING) {
        // Zero padding: the stream is right-aligned; leading zero bytes (within the first block) are skipped.
        const limit = Math.min(raw.length, this.#sb.blockSize);
        while (margin < limit && raw[margin] === 0) margin++;
        if (margin >= raw.length) throw new ErofsFormatError('pcluster', pa, `nid ${inode.nid}: pcluster holds only zero padding`);
      }
      data = lz4DecompressBlock(raw.subarray(margin), e.length, pa + margin);
    }
    this.#extents?.set(key, data);
    return data;
  }

  async #zmap(inode: ErofsInode): Promise<ZMap> {
    const cached = this.#zmaps.get(inode.nid);
    if (cached) return cached;
    const z = await ZMap.load(this.#reader, this.#sb, inode);
    this.#zmaps.set(inode.nid, z);
    return z;
  }

  #mapFlat(inode: ErofsInode, offset: number): DataExtent {
    const bs = this.#sb.blockSize;
    const size = inode.size;
    const blockData = inode.iu * bs;
    let blockBytes = size;
    if (inode.dataLayout === DATA_LAYOUT.flatInline) blockBytes = (Math.ceil(size / bs) - 1) * bs;
    if (offset < blockBytes) {
      this.#reader.check(blockData, blockBytes, 'data', `data blocks of nid ${inode.nid}`);
      return { logical: offset, length: blockBytes - offset, kind: 'plain', physical: blockData + offset, physicalLength: blockBytes - offset };
    }
    const tail = size - blockBytes;
    if ((inode.metaEnd % bs) + tail > bs) {
      throw new ErofsFormatError('inline-data', inode.metaEnd, `nid ${inode.nid}: inline tail of ${tail} bytes crosses a block boundary`);
    }
    this.#reader.check(inode.metaEnd, tail, 'inline-data', `inline data of nid ${inode.nid}`);
    const within = offset - blockBytes;
    return { logical: offset, length: tail - within, kind: 'inline', physical: inode.metaEnd + within, physicalLength: tail - within };
  }

  async #mapChunk(inode: ErofsInode, offset: number): Promise<DataExtent> {
    const bs = this.#sb.blockSize;
    const chunkBits = this.#sb.blockSizeBits + (inode.chunkFormat & CHUNK_FORMAT_BLKBITS_MASK);
    if (chunkBits > MAX_CHUNK_BITS) {
      throw new ErofsFormatError('inode', inode.offset + 16, `nid ${inode.nid}: chunk size 2^${chunkBits} is absurd`);
    }
    const chunkSize = 2 ** chunkBits;
    const indexes = (inode.chunkFormat & CHUNK_FORMAT_INDEXES) !== 0;
    const unit = indexes ? 8 : 4;
    const chunk = Math.floor(offset / chunkSize);
    const arrayStart = align(inode.metaEnd, unit);
    this.#reader.check(arrayStart, Math.ceil(inode.size / chunkSize) * unit, 'chunk-index', `chunk index array of nid ${inode.nid}`);
    const pos = arrayStart + chunk * unit;
    const entry = await this.#reader.read(pos, unit, 'chunk-index', `chunk ${chunk} of nid ${inode.nid}`);
    const blkaddr = indexes ? entry.readUInt32LE(4) : entry.readUInt32LE(0);
    const within = offset - chunk * chunkSize;
    const length = Math.min(chunkSize - within, inode.size - offset);
    if (blkaddr === EROFS_NULL_ADDR) return { logical: offset, length, kind: 'hole' };
    if (indexes && entry.readUInt16LE(2) !== 0) {
      throw new ErofsUnsupportedError('extra devices', pos, `nid ${inode.nid}: chunk ${chunk} lives on device ${entry.readUInt16LE(2)}`);
    }
    const physical = blkaddr * bs + within;
    this.#reader.check(physical, length, 'chunk-index', `chunk ${chunk} of nid ${inode.nid}`);
    return { logical: offset, length, kind: 'plain', physical, physicalLength: length };
  }
}
