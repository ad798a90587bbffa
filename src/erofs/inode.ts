// EROFS inodes: the 32-byte compact and 64-byte extended on-disk forms, decoded into one ErofsInode with the
// file type, permissions, owner, size, mtime (compact inodes take the superblock's build time), link count,
// device number, data layout and where the inline area (xattrs, then inline data / chunk or compression
// indexes) lies. The inode's location comes from its nid: meta_blkaddr * block size + nid * 32.
import { ErofsFormatError } from './errors.js';
import type { BlockReader } from './source.js';
import { readU64 } from './superblock.js';
import type { Superblock } from './superblock.js';

export const EROFS_INODE_SLOT_SIZE = 32;
export const EROFS_COMPACT_INODE_SIZE = 32;
export const EROFS_EXTENDED_INODE_SIZE = 64;
/** Size of the xattr ibody header (the first of i_xattr_icount 4-byte slots counts for 12 bytes). */
export const XATTR_IBODY_HEADER_SIZE = 12;

export const DATA_LAYOUT = {
  flatPlain: 0,
  compressedFull: 1,
  flatInline: 2,
  compressedCompact: 3,
  chunkBased: 4,
} as const;
export const DATA_LAYOUT_NAMES = ['flat-plain', 'compressed-full', 'flat-inline', 'compressed-compact', 'chunk-based'] as const;
export type DataLayoutName = (typeof DATA_LAYOUT_NAMES)[number];

/** i_format bits: version (bit 0) and data layout (bits 1-3); others must be zero. */
const I_FORMAT_KNOWN_BITS = 0x000f;
/** Chunk format: block bits (0-4) and "has 8-byte indexes" (bit 5). */
export const CHUNK_FORMAT_BLKBITS_MASK = 0x001f;
export const CHUNK_FORMAT_INDEXES = 0x0020;
const CHUNK_FORMAT_KNOWN_BITS = CHUNK_FORMAT_BLKBITS_MASK | CHUNK_FORMAT_INDEXES;

export type FileType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';

const S_IFMT = 0o170000;
/** File type by the S_IFMT bits of a mode. */
export const MODE_TYPES: ReadonlyMap<number, FileType> = new Map([
  [0o100000, 'file'],
  [0o040000, 'dir'],
  [0o120000, 'symlink'],
  [0o020000, 'char'],
  [0o060000, 'block'],
  [0o010000, 'fifo'],
  [0o140000, 'socket'],
]);

export interface DeviceNumber {
  major: number;
  minor: number;
}

export interface ErofsInode {
  nid: number;
  /** Image offset of the on-disk inode. */
  offset: number;
  extended: boolean;
  /** 32 or 64. */
  inodeSize: number;
  dataLayout: number;
  layoutName: DataLayoutName;
  type: FileType;
  /** The whole st_mode (type and permission bits). */
  mode: number;
  /** mode & 0o7777. */
  permissions: number;
  nlink: number;
  size: number;
  uid: number;
  gid: number;
  mtime: number;
  mtimeNsec: number;
  /** i_ino (32-bit stat compatibility number). */
  ino: number;
  /** Character and block devices. */
  rdev?: DeviceNumber;
  /** i_u as a 32-bit value: raw_blkaddr, compressed block count, rdev or chunk info. */
  iu: number;
  /** Chunk-based files: i_u.c.format. */
  chunkFormat: number;
  xattrIcount: number;
  /** Bytes of the xattr ibody (0 without xattrs). */
  xattrSize: number;
  /** Image offset right after the inode and its xattrs (inline data or indexes start here). */
  metaEnd: number;
}

/** Linux new_decode_dev. */
export function decodeDevice(dev: number): DeviceNumber {
  return { major: (dev & 0xfff00) >>> 8, minor: (dev & 0xff) | ((dev >>> 12) & 0xfff00) };
}

export function fileTypeOfMode(mode: number): FileType | undefined {
  return MODE_TYPES.get(mode & S_IFMT);
}

/** Image offset of inode `nid`; throws for an nid that cannot be in any image. */
export function inodeOffset(sb: Superblock, nid: number): number {
  const offset = sb.metaBlkAddr * sb.blockSize + nid * EROFS_INODE_SLOT_SIZE;
  if (!Number.isSafeInteger(nid) || nid < 0 || !Number.isSafeInteger(offset)) {
    throw new ErofsFormatError('inode', 0, `nid ${nid} out of range`);
  }
  return offset;
}

/** Reads and decodes inode `nid`. */
export async function readInode(reader: BlockReader, sb: Superblock, nid: number): Promise<ErofsInode> {
  const offset = inodeOffset(sb, nid);
  if (offset + EROFS_COMPACT_INODE_SIZE > reader.size) {
    throw new ErofsFormatError('inode', offset, `nid ${nid} lies past the end of the image (${reader.size} bytes)`);
  }
  const head = await reader.read(offset, EROFS_COMPACT_INODE_SIZE, 'inode', `inode ${nid}`);
  const format = head.readUInt16LE(0);
  if (format & ~I_FORMAT_KNOWN_BITS) {
    throw new ErofsFormatError('inode', offset, `nid ${nid}: unknown i_format bits 0x${format.toString(16)}`);
  }
  const extended = (format & 1) === 1;
  const dataLayout = (format >>> 1) & 0x7;
  const layoutName = DATA_LAYOUT_NAMES[dataLayout];
  if (layoutName === undefined) throw new ErofsFormatError('inode', offset, `nid ${nid}: unknown data layout ${dataLayout}`);
  const raw = extended ? await reader.read(offset, EROFS_EXTENDED_INODE_SIZE, 'inode', `extended inode ${nid}`) : head;
  const xattrIcount = raw.readUInt16LE(2);
  const mode = raw.readUInt16LE(4);
  const type = fileTypeOfMode(mode);
  if (type === undefined) throw new ErofsFormatError('inode', offset, `nid ${nid}: mode 0${mode.toString(8)} has no valid file type`);
  const iu = raw.readUInt32LE(16);
  const inodeSize = extended ? EROFS_EXTENDED_INODE_SIZE : EROFS_COMPACT_INODE_SIZE;
  const xattrSize = xattrIcount === 0 ? 0 : XATTR_IBODY_HEADER_SIZE + (xattrIcount - 1) * 4;
  const inode: ErofsInode = {
    nid,
    offset,
    extended,
    inodeSize,
    dataLayout,
    layoutName,
    type,
    mode,
    permissions: mode & 0o7777,
    nlink: extended ? raw.readUInt32LE(44) : raw.readUInt16LE(6),
    size: extended ? readU64(raw, 8, 'inode', offset + 8, `nid ${nid}: size`) : raw.readUInt32LE(8),
    uid: extended ? raw.readUInt32LE(24) : raw.readUInt16LE(24),
    gid: extended ? raw.readUInt32LE(28) : raw.readUInt16LE(26),
    mtime: extended ? readU64(raw, 32, 'inode', offset + 32, `nid ${nid}: mtime`) : sb.buildTime,
    mtimeNsec: extended ? raw.readUInt32LE(40) : sb.buildTimeNsec,
    ino: raw.readUInt32LE(20),
    iu,
    chunkFormat: raw.readUInt16LE(16),
    xattrIcount,
    xattrSize,
    metaEnd: offset + inodeSize + xattrSize,
  };
  if (type === 'char' || type === 'block') inode.rdev = decodeDevice(iu);
  if (dataLayout === DATA_LAYOUT.chunkBased && (inode.chunkFormat & ~CHUNK_FORMAT_KNOWN_BITS)) {
    throw new ErofsFormatError('inode', offset + 16, `nid ${nid}: unknown chunk format bits 0x${inode.chunkFormat.toString(16)}`);
  }
  if (inode.metaEnd > reader.size) {
    throw new ErofsFormatError('inode', offset, `nid ${nid}: inode and xattrs (${inodeSize + xattrSize} bytes) run past the end of the image`);
  }
  return inode;
}
