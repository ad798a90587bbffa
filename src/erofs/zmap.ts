// The logical-to-physical map of compressed inodes (data layouts COMPRESSED_FULL and COMPRESSED_COMPACT): the
// z_erofs map header after the inode's xattrs, then one index entry per logical cluster (lcluster), either
// 8 bytes each (full) or packed into 4-byte pairs and 2-byte groups of 16 (compact). A HEAD (or PLAIN)
// lcluster starts an extent at its cluster offset and names its physical cluster (pcluster); NONHEAD
// lclusters continue it. An extent is found by looking back to its head and forward to the next head; its
// pcluster size comes from the CBLKCNT entry with big pclusters, and a tail extent may live inline after the
// indexes (ztailpacking). Every step is bounds-checked; lookbacks always move backwards, walks are capped.
import { ErofsFormatError, ErofsUnsupportedError } from './errors.js';
import { DATA_LAYOUT } from './inode.js';
import type { ErofsInode } from './inode.js';
import type { BlockReader } from './source.js';
import type { Superblock } from './superblock.js';
import { FEATURE_INCOMPAT_ZTAILPACKING } from './superblock.js';

export const Z_MAP_HEADER_SIZE = 8;
/** Full (legacy) indexes start after the map header and 8 more bytes of padding. */
const Z_FULL_INDEX_PADDING = 8;
export const Z_LCLUSTER_INDEX_SIZE = 8;

export const Z_ADVISE_COMPACTED_2B = 0x0001;
export const Z_ADVISE_BIG_PCLUSTER_1 = 0x0002;
export const Z_ADVISE_BIG_PCLUSTER_2 = 0x0004;
export const Z_ADVISE_INLINE_PCLUSTER = 0x0008;
export const Z_ADVISE_INTERLACED_PCLUSTER = 0x0010;
export const Z_ADVISE_FRAGMENT_PCLUSTER = 0x0020;

export const LCLUSTER_TYPE_PLAIN = 0;
export const LCLUSTER_TYPE_HEAD1 = 1;
export const LCLUSTER_TYPE_NONHEAD = 2;
export const LCLUSTER_TYPE_HEAD2 = 3;

/** D0_CBLKCNT: the first NONHEAD lcluster of a big pcluster stores the pcluster's block count. */
const D0_CBLKCNT = 1 << 11;
/** The largest physical cluster the format allows. */
export const Z_PCLUSTER_MAX_SIZE = 1024 * 1024;
/** The largest decompressed extent accepted (mkfs.erofs writes at most about 4 MiB). */
export const MAX_DECOMPRESSED_EXTENT_BYTES = 16 * 1024 * 1024;
/** Compression algorithm numbers (h_algorithmtype). */
export const Z_ALGORITHM_LZ4 = 0;
export const Z_ALGORITHM_NAMES = ['lz4', 'lzma', 'deflate', 'zstd'] as const;

export interface ZMapHeader {
  advise: number;
  /** Algorithm of HEAD1 and HEAD2 lclusters. */
  algorithms: [number, number];
  lclusterBits: number;
  /** ztailpacking: bytes of the inline tail pcluster. */
  idataSize: number;
  /** Image offset of the first index entry. */
  indexBase: number;
  /** Number of lclusters: ceil(size / lcluster size). */
  totalIdx: number;
  compact: boolean;
}

/** One decoded lcluster index entry. */
interface Lcluster {
  lcn: number;
  type: number;
  /** HEAD/PLAIN: where the extent starts in this lcluster; NONHEAD: the lcluster size. */
  clusterOfs: number;
  /** NONHEAD: distance back to the head (>= 1). */
  delta0: number;
  /** HEAD/PLAIN: physical block of the pcluster. */
  pblk: number;
  /** NONHEAD with CBLKCNT: blocks of the pcluster. */
  compressedBlocks: number;
  /** Image offset of the byte after this entry's pack (where an inline tail pcluster follows). */
  nextPackOff: number;
}

export type ZExtentKind = 'compressed' | 'uncompressed';

export interface ZExtent {
  /** Logical start and length (the whole extent). */
  logical: number;
  length: number;
  /** Image offset and length of the pcluster. */
  physical: number;
  physicalLength: number;
  kind: ZExtentKind;
  /** Algorithm number (Z_ALGORITHM_*), for compressed extents. */
  algorithm: number;
  /** The pcluster is inline after the indexes (ztailpacking). */
  inline: boolean;
  headLcn: number;
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** The map of one compressed inode. */
export class ZMap {
  readonly header: ZMapHeader;
  readonly #reader: BlockReader;
  readonly #sb: Superblock;
  readonly #inode: ErofsInode;
  #tail: { headLcn: number; idataOffset: number } | undefined;

  private constructor(reader: BlockReader, sb: Superblock, inode: ErofsInode, header: ZMapHeader) {
    this.#reader = reader;
    this.#sb = sb;
    this.#inode = inode;
    this.header = header;
  }

  static async load(reader: BlockReader, sb: Superblock, inode: ErofsInode): Promise<ZMap> {
    const at = align(inode.metaEnd, 8);
    const h = await reader.read(at, Z_MAP_HEADER_SIZE, 'z-map-header', `compression map header of nid ${inode.nid}`);
    const advise = h.readUInt16LE(4);
    const algo = h.readUInt8(6);
    const clusterBits = h.readUInt8(7);
    if (clusterBits & ~0x7) throw new ErofsFormatError('z-map-header', at + 7, `nid ${inode.nid}: reserved h_clusterbits bits set (0x${clusterBits.toString(16)})`);
    const lclusterBits = sb.blockSizeBits + (clusterBits & 0x7);
    if (advise & Z_ADVISE_FRAGMENT_PCLUSTER) throw new ErofsUnsupportedError('fragments', at + 4, `nid ${inode.nid} keeps its tail in a packed fragment inode`);
    if (advise & Z_ADVISE_INTERLACED_PCLUSTER) throw new ErofsUnsupportedError('interlaced pclusters', at + 4, `nid ${inode.nid} uses interlaced uncompressed pclusters`);
    if ((advise & Z_ADVISE_INLINE_PCLUSTER) && !(sb.featureIncompat & FEATURE_INCOMPAT_ZTAILPACKING)) {
      throw new ErofsFormatError('z-map-header', at + 4, `nid ${inode.nid}: inline pcluster without the ztailpacking feature`);
    }
    const compact = inode.dataLayout === DATA_LAYOUT.compressedCompact;
    const lsize = 2 ** lclusterBits;
    const header: ZMapHeader = {
      advise,
      algorithms: [algo & 0xf, algo >>> 4],
      lclusterBits,
      idataSize: h.readUInt16LE(2),
      indexBase: compact ? at + Z_MAP_HEADER_SIZE : at + Z_MAP_HEADER_SIZE + Z_FULL_INDEX_PADDING,
      totalIdx: Math.ceil(inode.size / lsize),
      compact,
    };
    const map = new ZMap(reader, sb, inode, header);
    map.checkIndexArray();
    return map;
  }

  get lclusterSize(): number {
    return 2 ** this.header.lclusterBits;
  }

  #fail(offset: number, detail: string): ErofsFormatError {
    return new ErofsFormatError('z-index', offset, `nid ${this.#inode.nid}: ${detail}`);
  }

  async #load(lcn: number): Promise<Lcluster> {
    if (!Number.isSafeInteger(lcn) || lcn < 0 || lcn >= this.header.totalIdx) {
      throw this.#fail(this.header.indexBase, `lcluster ${lcn} outside 0..${this.header.totalIdx - 1}`);
    }
    return this.header.compact ? this.#loadCompact(lcn) : this.#loadFull(lcn);
  }

  async #loadFull(lcn: number): Promise<Lcluster> {
    const pos = this.header.indexBase + lcn * Z_LCLUSTER_INDEX_SIZE;
    const e = await this.#reader.read(pos, Z_LCLUSTER_INDEX_SIZE, 'z-index', `lcluster ${lcn} of nid ${this.#inode.nid}`);
    const type = e.readUInt16LE(0) & 0x3;
    const base = { lcn, type, nextPackOff: pos + Z_LCLUSTER_INDEX_SIZE, delta0: 0, pblk: 0, compressedBlocks: 0 };
    if (type === LCLUSTER_TYPE_NONHEAD) {
      let delta0 = e.readUInt16LE(4);
      let compressedBlocks = 0;
      if (delta0 & D0_CBLKCNT) {
        compressedBlocks = delta0 & ~D0_CBLKCNT;
        delta0 = 1;
      }
      return { ...base, clusterOfs: this.lclusterSize, delta0, compressedBlocks };
    }
    const clusterOfs = e.readUInt16LE(2);
    if (clusterOfs >= this.lclusterSize) throw this.#fail(pos, `cluster offset ${clusterOfs} of lcluster ${lcn} is not inside the lcluster`);
    return { ...base, clusterOfs, pblk: e.readUInt32LE(4) };
  }

  /** Image offset of lcluster `lcnIn`'s compact entry and its entry size shift (2: 4-byte, 1: 2-byte). */
  #compactPos(lcnIn: number): { pos: number; shift: number } {
    const { indexBase, totalIdx, advise } = this.header;
    let initial4b = (32 - (indexBase % 32)) / 4;
    if (initial4b === 32 / 4) initial4b = 0;
    const compacted2b = advise & Z_ADVISE_COMPACTED_2B && initial4b < totalIdx ? Math.floor((totalIdx - initial4b) / 16) * 16 : 0;
    let lcn = lcnIn;
    let pos = indexBase;
    let shift: number;
    if (lcn < initial4b) {
      shift = 2;
    } else {
      pos += initial4b * 4;
      lcn -= initial4b;
      if (lcn < compacted2b) {
        shift = 1;
      } else {
        pos += compacted2b * 2;
        lcn -= compacted2b;
        shift = 2;
      }
    }
    return { pos: pos + lcn * 2 ** shift, shift };
  }

  /** Throws unless the whole index array (every lcluster's entry) lies inside the image. */
  checkIndexArray(): void {
    const { totalIdx, indexBase } = this.header;
    if (totalIdx === 0) return;
    const end = this.header.compact ? this.#compactPos(totalIdx - 1).pos + 4 : indexBase + totalIdx * Z_LCLUSTER_INDEX_SIZE;
    this.#reader.check(indexBase, end - indexBase, 'z-index', `${totalIdx} lcluster indexes of nid ${this.#inode.nid}`);
  }

  async #loadCompact(lcnIn: number): Promise<Lcluster> {
    const { lclusterBits, advise } = this.header;
    const { pos, shift } = this.#compactPos(lcnIn);
    let vcnt: number;
    if (shift === 2 && lclusterBits <= 14) vcnt = 2;
    else if (shift === 1 && lclusterBits === 12) vcnt = 16;
    else throw new ErofsUnsupportedError('compact indexes', pos, `nid ${this.#inode.nid}: ${2 ** shift}-byte compact indexes with ${2 ** lclusterBits}-byte lclusters`);
    const packSize = vcnt * 2 ** shift;
    const packStart = pos - (pos % packSize);
    const pack = await this.#reader.read(packStart, packSize, 'z-index', `compact index pack of nid ${this.#inode.nid}`);
    const i = (pos - packStart) / 2 ** shift;
    const lobits = Math.max(lclusterBits, 12);
    const encodeBits = ((packSize - 4) * 8) / vcnt;
    const decode = (k: number): { lo: number; type: number } => {
      const bitPos = encodeBits * k;
      const byte = bitPos >>> 3;
      // Little-endian 32-bit window; bytes past the pack read as 0 (only ever the pack's own bytes are needed).
      const v = ((pack[byte] ?? 0) | ((pack[byte + 1] ?? 0) << 8) | ((pack[byte + 2] ?? 0) << 16) | ((pack[byte + 3] ?? 0) << 24)) >>> (bitPos & 7);
      return { lo: v & ((1 << lobits) - 1), type: (v >>> lobits) & 3 };
    };
    const bigPcluster = (advise & Z_ADVISE_BIG_PCLUSTER_1) !== 0;
    const nextPackOff = packStart + packSize;
    const cur = decode(i);
    const base = { lcn: lcnIn, type: cur.type, nextPackOff, delta0: 0, pblk: 0, compressedBlocks: 0 };
    if (cur.type === LCLUSTER_TYPE_NONHEAD) {
      if (cur.lo & D0_CBLKCNT) {
        if (!bigPcluster) throw this.#fail(pos, `CBLKCNT in lcluster ${lcnIn} without big pclusters`);
        return { ...base, clusterOfs: this.lclusterSize, compressedBlocks: cur.lo & ~D0_CBLKCNT, delta0: 1 };
      }
      if (i + 1 !== vcnt) return { ...base, clusterOfs: this.lclusterSize, delta0: cur.lo };
      // The last entry of a pack stores delta[1]; delta[0] comes from the previous entry.
      let lo = 0;
      if (i > 0) {
        const prev = decode(i - 1);
        if (prev.type === LCLUSTER_TYPE_NONHEAD) lo = prev.lo & D0_CBLKCNT ? 1 : prev.lo;
      }
      return { ...base, clusterOfs: this.lclusterSize, delta0: lo + 1 };
    }
    // HEAD or PLAIN: the pack's trailing 32-bit block address plus the pclusters of the entries before it.
    let nblk: number;
    let k = i;
    if (!bigPcluster) {
      nblk = 1;
      while (k > 0) {
        --k;
        const d = decode(k);
        if (d.type === LCLUSTER_TYPE_NONHEAD) k -= d.lo;
        if (k >= 0) ++nblk;
      }
    } else {
      nblk = 0;
      while (k > 0) {
        --k;
        const d = decode(k);
        if (d.type === LCLUSTER_TYPE_NONHEAD) {
          if (d.lo & D0_CBLKCNT) {
            --k;
            nblk += d.lo & ~D0_CBLKCNT;
            continue;
          }
          if (d.lo <= 1) throw this.#fail(packStart, `bad delta ${d.lo} in a big-pcluster pack`);
          k -= d.lo - 2;
          continue;
        }
        ++nblk;
      }
    }
    return { ...base, clusterOfs: cur.lo, pblk: pack.readUInt32LE(packSize - 4) + nblk };
  }

  /** Walks back `distance` lclusters (following NONHEAD deltas) to the head lcluster. */
  async #lookback(from: number, distance: number): Promise<Lcluster> {
    let lcn = from;
    let d = distance;
    for (;;) {
      if (d < 1 || lcn < d) throw this.#fail(this.header.indexBase, `lookback of ${d} from lcluster ${lcn} leaves the file`);
      lcn -= d;
      const m = await this.#load(lcn);
      if (m.type !== LCLUSTER_TYPE_NONHEAD) return m;
      d = m.delta0;
    }
  }

  async #tailInfo(): Promise<{ headLcn: number; idataOffset: number } | undefined> {
    if (!(this.header.advise & Z_ADVISE_INLINE_PCLUSTER) || this.#inode.size === 0) return undefined;
    if (this.#tail) return this.#tail;
    const lastLcn = Math.floor((this.#inode.size - 1) / this.lclusterSize);
    const last = await this.#load(lastLcn);
    const head = await this.#headOf(last, (this.#inode.size - 1) % this.lclusterSize);
    this.#tail = { headLcn: head.lcn, idataOffset: last.nextPackOff };
    return this.#tail;
  }

  async #headOf(m: Lcluster, endoff: number): Promise<Lcluster> {
    if (m.type === LCLUSTER_TYPE_NONHEAD) return this.#lookback(m.lcn, m.delta0);
    if (endoff >= m.clusterOfs) return m;
    if (m.lcn === 0) throw this.#fail(this.header.indexBase, `lcluster 0 starts at cluster offset ${m.clusterOfs}, not 0`);
    return this.#lookback(m.lcn, 1);
  }

  /** The extent holding logical byte `offset` (0 <= offset < size). */
  async map(offset: number): Promise<ZExtent> {
    const size = this.#inode.size;
    if (offset < 0 || offset >= size) throw new RangeError(`offset ${offset} outside the file (${size} bytes)`);
    const lsize = this.lclusterSize;
    const lcn = Math.floor(offset / lsize);
    const head = await this.#headOf(await this.#load(lcn), offset % lsize);
    const logical = head.lcn * lsize + head.clusterOfs;
    // Forward to the next head (or the end of the file).
    let end = size;
    for (let next = head.lcn + 1; next * lsize < size; next++) {
      if ((next - head.lcn) * lsize > MAX_DECOMPRESSED_EXTENT_BYTES + lsize) {
        throw this.#fail(this.header.indexBase, `extent at lcluster ${head.lcn} is longer than ${MAX_DECOMPRESSED_EXTENT_BYTES} bytes`);
      }
      const m = await this.#load(next);
      if (m.type !== LCLUSTER_TYPE_NONHEAD) {
        end = Math.min(size, next * lsize + m.clusterOfs);
        break;
      }
    }
    const length = end - logical;
    if (!(logical <= offset && offset < end)) {
      throw this.#fail(this.header.indexBase, `extent [${logical}, ${end}) found for offset ${offset} does not contain it`);
    }
    if (length > MAX_DECOMPRESSED_EXTENT_BYTES) throw this.#fail(this.header.indexBase, `extent at ${logical} of ${length} bytes is too long`);
    const kind: ZExtentKind = head.type === LCLUSTER_TYPE_PLAIN ? 'uncompressed' : 'compressed';
    const algorithm = head.type === LCLUSTER_TYPE_HEAD2 ? this.header.algorithms[1] : this.header.algorithms[0];
    const tail = await this.#tailInfo();
    let physical: number;
    let physicalLength: number;
    let inline = false;
    if (tail && head.lcn === tail.headLcn) {
      physical = tail.idataOffset;
      physicalLength = this.header.idataSize;
      inline = true;
      const bs = this.#sb.blockSize;
      if ((physical % bs) + physicalLength > bs) {
        throw new ErofsFormatError('inline-data', physical, `nid ${this.#inode.nid}: inline tail pcluster of ${physicalLength} bytes crosses a block boundary`);
      }
    } else {
      physical = head.pblk * this.#sb.blockSize;
      physicalLength = await this.#pclusterLength(head);
    }
    if (kind === 'uncompressed' && length > physicalLength) {
      throw this.#fail(this.header.indexBase, `uncompressed extent of ${length} bytes in a ${physicalLength}-byte pcluster`);
    }
    this.#reader.check(physical, physicalLength, 'pcluster', `pcluster of nid ${this.#inode.nid} at lcluster ${head.lcn}`);
    return { logical, length, physical, physicalLength, kind, algorithm, inline, headLcn: head.lcn };
  }

  async #pclusterLength(head: Lcluster): Promise<number> {
    const { advise } = this.header;
    const lsize = this.lclusterSize;
    const big1 = (advise & Z_ADVISE_BIG_PCLUSTER_1) !== 0;
    const big2 = (advise & Z_ADVISE_BIG_PCLUSTER_2) !== 0;
    const next = head.lcn + 1;
    if (
      (head.type === LCLUSTER_TYPE_HEAD1 && !big1) ||
      ((head.type === LCLUSTER_TYPE_PLAIN || head.type === LCLUSTER_TYPE_HEAD2) && !big2) ||
      next * lsize >= this.#inode.size
    ) {
      return lsize;
    }
    const m = await this.#load(next);
    if (m.type !== LCLUSTER_TYPE_NONHEAD) return lsize;
    if (m.delta0 !== 1 || m.compressedBlocks === 0) throw this.#fail(this.header.indexBase, `lcluster ${next} lacks the pcluster block count (CBLKCNT)`);
    const length = m.compressedBlocks * this.#sb.blockSize;
    if (length > Z_PCLUSTER_MAX_SIZE) throw this.#fail(this.header.indexBase, `pcluster of ${length} bytes exceeds ${Z_PCLUSTER_MAX_SIZE}`);
    return length;
  }
}
