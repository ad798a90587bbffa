// On-disk constants of the EROFS writer (uncompressed images, 4 KiB blocks), taken from the reader's
// definitions in src/erofs where it has them (mode type bits and dirent file types are the reader's tables
// turned around), plus the few the writer alone needs: the null block address, limits, and its errors.
import { DIRENT_FILE_TYPES, EROFS_DIRENT_SIZE, EROFS_NAME_LEN } from '../erofs/dir.js';
import { DATA_LAYOUT, EROFS_COMPACT_INODE_SIZE, EROFS_EXTENDED_INODE_SIZE, EROFS_INODE_SLOT_SIZE, MODE_TYPES, XATTR_IBODY_HEADER_SIZE } from '../erofs/inode.js';
import type { FileType } from '../erofs/inode.js';
import { EROFS_SUPER_MAGIC, EROFS_SUPER_OFFSET, EROFS_SUPERBLOCK_SIZE, FEATURE_COMPAT_MTIME, FEATURE_COMPAT_SB_CHKSUM } from '../erofs/superblock.js';
import { XATTR_ENTRY_HEADER_SIZE, XATTR_PREFIXES } from '../erofs/xattr.js';

export {
  DATA_LAYOUT,
  EROFS_COMPACT_INODE_SIZE,
  EROFS_DIRENT_SIZE,
  EROFS_EXTENDED_INODE_SIZE,
  EROFS_INODE_SLOT_SIZE,
  EROFS_NAME_LEN,
  EROFS_SUPER_MAGIC,
  EROFS_SUPER_OFFSET,
  EROFS_SUPERBLOCK_SIZE,
  XATTR_ENTRY_HEADER_SIZE,
  XATTR_IBODY_HEADER_SIZE,
  XATTR_PREFIXES,
};
export type { FileType };

/** The only block size written (as mkfs.erofs 1.5). */
export const BLOCK_SIZE_BITS = 12;
export const BLOCK_SIZE = 1 << BLOCK_SIZE_BITS;
/** raw_blkaddr of an inode that has no data blocks of its own (mkfs.erofs writes the same). */
export const NULL_BLKADDR = 0xffffffff;
/** Superblock compat features set on every image: a superblock checksum, and mtimes in the inodes. */
export const WRITER_FEATURE_COMPAT = FEATURE_COMPAT_SB_CHKSUM | FEATURE_COMPAT_MTIME;
/** Largest value of the 16-bit inode fields of a compact inode (nlink, uid, gid). */
export const COMPACT_U16_MAX = 0xffff;
export const U32_MAX = 0xffffffff;
/** i_xattr_icount is 16 bits: the largest inline xattr body is 12 + (65535 - 1) * 4 bytes. */
export const MAX_XATTR_ICOUNT = 0xffff;
/** An xattr entry's name length is 8 bits, its value size 16 bits. */
export const MAX_XATTR_NAME_LEN = 0xff;
export const MAX_XATTR_VALUE_SIZE = 0xffff;
/** Longest symlink target (PATH_MAX - 1). */
export const MAX_SYMLINK_TARGET = 4095;

/** Mode type bits (S_IFMT) by node kind: the reader's MODE_TYPES turned around. */
export const MODE_TYPE_BITS = Object.fromEntries([...MODE_TYPES].map(([bits, type]) => [type, bits])) as Readonly<Record<FileType, number>>;

/** EROFS_FT_* dirent file types by node kind: the reader's DIRENT_FILE_TYPES turned around. */
export const DIRENT_TYPE = Object.fromEntries(
  DIRENT_FILE_TYPES.flatMap((type, ft) => (type === 'unknown' ? [] : [[type, ft]])),
) as Readonly<Record<FileType, number>>;

/** n rounded up to a multiple of `to` (a power of two or any positive integer). */
export function alignUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** A problem with the source tree or the options that makes the image impossible to write. */
export class MkfsError extends Error {
  override name = 'MkfsError';
  constructor(
    message: string,
    /** The tree path (relative, binary string) the problem is about, when there is one. */
    readonly path?: string,
  ) {
    super(message);
  }
}
