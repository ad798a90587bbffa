// On-disk inodes for the EROFS writer: the 32-byte compact form (16-bit nlink/uid/gid, 32-bit size, no mtime
// of its own: it shows the superblock's build time) and the 64-byte extended form (64-bit size and mtime,
// nanoseconds, 32-bit owners and nlink). The compact form is used whenever every field fits in it.
import {
  COMPACT_U16_MAX,
  EROFS_COMPACT_INODE_SIZE,
  EROFS_EXTENDED_INODE_SIZE,
  U32_MAX,
} from './format.js';

/** Everything an inode records. */
export interface InodeFields {
  extended: boolean;
  /** DATA_LAYOUT value. */
  layout: number;
  xattrIcount: number;
  /** The whole st_mode (type bits and permissions). */
  mode: number;
  nlink: number;
  size: number;
  /** i_u: raw_blkaddr for flat layouts, the encoded device number for devices. */
  iu: number;
  /** i_ino: a 32-bit inode number for stat compatibility. */
  ino: number;
  uid: number;
  gid: number;
  mtimeSec: bigint;
  mtimeNsec: number;
}

/** Linux new_encode_dev: the 32-bit device number EROFS stores for character and block devices. */
export function encodeDevice(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/** Whether the inode needs the extended form (the compact one cannot hold one of its fields). */
export function needsExtendedInode(f: Pick<InodeFields, 'nlink' | 'size' | 'uid' | 'gid' | 'mtimeSec' | 'mtimeNsec'>, buildTime: bigint): boolean {
  return (
    f.size > U32_MAX ||
    f.uid > COMPACT_U16_MAX ||
    f.gid > COMPACT_U16_MAX ||
    f.nlink > COMPACT_U16_MAX ||
    f.mtimeSec !== buildTime ||
    f.mtimeNsec !== 0
  );
}

export function inodeSize(extended: boolean): number {
  return extended ? EROFS_EXTENDED_INODE_SIZE : EROFS_COMPACT_INODE_SIZE;
}

/** Writes the inode into `buf` at `at` (the bytes there must be zero). */
export function encodeInode(f: InodeFields, buf: Buffer, at: number): void {
  buf.writeUInt16LE((f.extended ? 1 : 0) | (f.layout << 1), at);
  buf.writeUInt16LE(f.xattrIcount, at + 2);
  buf.writeUInt16LE(f.mode, at + 4);
  if (f.extended) {
    buf.writeBigUInt64LE(BigInt(f.size), at + 8);
    buf.writeUInt32LE(f.iu >>> 0, at + 16);
    buf.writeUInt32LE(f.ino >>> 0, at + 20);
    buf.writeUInt32LE(f.uid, at + 24);
    buf.writeUInt32LE(f.gid, at + 28);
    buf.writeBigUInt64LE(BigInt.asUintN(64, f.mtimeSec), at + 32);
    buf.writeUInt32LE(f.mtimeNsec, at + 40);
    buf.writeUInt32LE(f.nlink, at + 44);
  } else {
    buf.writeUInt16LE(f.nlink, at + 6);
    buf.writeUInt32LE(f.size, at + 8);
    buf.writeUInt32LE(f.iu >>> 0, at + 16);
    buf.writeUInt32LE(f.ino >>> 0, at + 20);
    buf.writeUInt16LE(f.uid, at + 24);
    buf.writeUInt16LE(f.gid, at + 26);
  }
}
