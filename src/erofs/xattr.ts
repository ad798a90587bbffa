// Extended attributes of an inode: the ibody after the inode holds a 12-byte header (shared xattr count), the
// ids of shared xattrs (4-byte slots into the shared xattr area at xattr_blkaddr), then inline entries; each
// entry is {name length, name index, value size, name, value} padded to 4 bytes. The name index picks the
// prefix ("user.", "trusted.", "security.", the POSIX ACL names); entries with an unknown index are skipped,
// as the kernel skips them.
import { ErofsFormatError, ErofsUnsupportedError } from './errors.js';
import { XATTR_IBODY_HEADER_SIZE } from './inode.js';
import type { ErofsInode } from './inode.js';
import type { BlockReader } from './source.js';
import type { Superblock } from './superblock.js';

export const XATTR_ENTRY_HEADER_SIZE = 4;
/** Prefixes of the name indexes (EROFS_XATTR_INDEX_*). */
export const XATTR_PREFIXES: ReadonlyMap<number, string> = new Map([
  [1, 'user.'],
  [2, 'system.posix_acl_access'],
  [3, 'system.posix_acl_default'],
  [4, 'trusted.'],
  [5, 'lustre.'],
  [6, 'security.'],
]);
/** Index bit of long (superblock-defined) prefixes, a feature this reader does not implement. */
const XATTR_LONG_PREFIX_BIT = 0x80;

export interface Xattr {
  /** Full name with its prefix, e.g. "user.comment". */
  name: string;
  value: Buffer;
  /** Whether it came from the shared xattr area. */
  shared: boolean;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

interface RawEntry {
  nameLen: number;
  index: number;
  valueSize: number;
}

function entryHeader(buf: Buffer, at: number): RawEntry {
  return { nameLen: buf.readUInt8(at), index: buf.readUInt8(at + 1), valueSize: buf.readUInt16LE(at + 2) };
}

function fullName(e: RawEntry, name: Buffer, offset: number): string | undefined {
  if (e.index & XATTR_LONG_PREFIX_BIT) {
    throw new ErofsUnsupportedError('xattr long prefixes', offset, `xattr name index 0x${e.index.toString(16)} refers to a long prefix table`);
  }
  const prefix = XATTR_PREFIXES.get(e.index);
  return prefix === undefined ? undefined : prefix + name.toString('latin1');
}

/** All xattrs of `inode`, inline ones first, then shared ones (the kernel's listxattr order). Names are byte strings (latin1). */
export async function readXattrs(reader: BlockReader, sb: Superblock, inode: ErofsInode): Promise<Xattr[]> {
  if (inode.xattrIcount === 0) return [];
  const base = inode.offset + inode.inodeSize;
  if (inode.xattrSize < XATTR_IBODY_HEADER_SIZE) {
    throw new ErofsFormatError('xattr', base, `nid ${inode.nid}: xattr ibody of ${inode.xattrSize} bytes is smaller than its header`);
  }
  const body = await reader.read(base, inode.xattrSize, 'xattr', `xattrs of nid ${inode.nid}`);
  const sharedCount = body.readUInt8(4);
  const sharedEnd = XATTR_IBODY_HEADER_SIZE + sharedCount * 4;
  if (sharedEnd > body.length) {
    throw new ErofsFormatError('xattr', base + 4, `nid ${inode.nid}: ${sharedCount} shared xattr ids do not fit in an ibody of ${body.length} bytes`);
  }
  const out: Xattr[] = [];
  let at = sharedEnd;
  while (at < body.length) {
    if (at + XATTR_ENTRY_HEADER_SIZE > body.length) {
      throw new ErofsFormatError('xattr', base + at, `nid ${inode.nid}: truncated inline xattr entry header`);
    }
    const e = entryHeader(body, at);
    const size = align4(XATTR_ENTRY_HEADER_SIZE + e.nameLen + e.valueSize);
    if (at + XATTR_ENTRY_HEADER_SIZE + e.nameLen + e.valueSize > body.length) {
      throw new ErofsFormatError('xattr', base + at, `nid ${inode.nid}: inline xattr entry (${e.nameLen}-byte name, ${e.valueSize}-byte value) runs past the ibody`);
    }
    const nameStart = at + XATTR_ENTRY_HEADER_SIZE;
    const name = fullName(e, body.subarray(nameStart, nameStart + e.nameLen), base + at);
    if (name !== undefined) {
      out.push({ name, value: Buffer.from(body.subarray(nameStart + e.nameLen, nameStart + e.nameLen + e.valueSize)), shared: false });
    }
    at += size;
  }
  for (let k = 0; k < sharedCount; k++) {
    const id = body.readUInt32LE(XATTR_IBODY_HEADER_SIZE + k * 4);
    const x = await readSharedXattr(reader, sb, id, base + XATTR_IBODY_HEADER_SIZE + k * 4);
    if (x) out.push(x);
  }
  return out;
}

async function readSharedXattr(reader: BlockReader, sb: Superblock, id: number, refOffset: number): Promise<Xattr | undefined> {
  const offset = sb.xattrBlkAddr * sb.blockSize + id * 4;
  if (offset + XATTR_ENTRY_HEADER_SIZE > reader.size) {
    throw new ErofsFormatError('shared-xattr', refOffset, `shared xattr id ${id} points past the end of the image`);
  }
  const head = await reader.read(offset, XATTR_ENTRY_HEADER_SIZE, 'shared-xattr', `shared xattr ${id}`);
  const e = entryHeader(head, 0);
  const rest = await reader.read(offset + XATTR_ENTRY_HEADER_SIZE, e.nameLen + e.valueSize, 'shared-xattr', `shared xattr ${id}`);
  const name = fullName(e, rest.subarray(0, e.nameLen), offset);
  return name === undefined ? undefined : { name, value: Buffer.from(rest.subarray(e.nameLen)), shared: true };
}
