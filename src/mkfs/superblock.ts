// The superblock the EROFS writer puts at offset 1024 of block 0: magic, 4 KiB blocks, the root's nid (16
// bits), inode count, build time, total blocks, metadata and shared-xattr start blocks (both 0, as
// mkfs.erofs 1.5 writes them), the UUID, the compat features (superblock checksum, mtimes) and the crc32c of
// the block from offset 1024 with the checksum field zeroed.
import { crc32cRaw } from '../erofs/crc32c.js';
import { BLOCK_SIZE, BLOCK_SIZE_BITS, EROFS_SUPER_MAGIC, EROFS_SUPER_OFFSET, MkfsError, WRITER_FEATURE_COMPAT } from './format.js';

/** root_nid is a 16-bit field. */
export const MAX_ROOT_NID = 0xffff;
export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface SuperblockFields {
  rootNid: number;
  inodeCount: number;
  buildTime: bigint;
  blocks: number;
  uuid: string;
}

/** Block 0 of the image: zeros with the superblock at offset 1024 and its checksum filled in. */
export function encodeSuperblockBlock(f: SuperblockFields): Buffer {
  if (f.rootNid > MAX_ROOT_NID) throw new MkfsError(`root nid ${f.rootNid} does not fit the superblock's 16-bit field`);
  if (!UUID_PATTERN.test(f.uuid)) throw new MkfsError(`invalid UUID ${JSON.stringify(f.uuid)} (want lowercase 8-4-4-4-12 hex)`);
  if (f.blocks > 0xffffffff) throw new MkfsError(`image of ${f.blocks} blocks is larger than EROFS can address`);
  const block = Buffer.alloc(BLOCK_SIZE);
  const at = EROFS_SUPER_OFFSET;
  block.writeUInt32LE(EROFS_SUPER_MAGIC, at);
  block.writeUInt32LE(WRITER_FEATURE_COMPAT, at + 8);
  block.writeUInt8(BLOCK_SIZE_BITS, at + 12);
  block.writeUInt8(0, at + 13); // no superblock extension slots
  block.writeUInt16LE(f.rootNid, at + 14);
  block.writeBigUInt64LE(BigInt(f.inodeCount), at + 16);
  block.writeBigUInt64LE(BigInt.asUintN(64, f.buildTime), at + 24);
  block.writeUInt32LE(0, at + 32); // build time nanoseconds
  block.writeUInt32LE(f.blocks, at + 36);
  block.writeUInt32LE(0, at + 40); // meta_blkaddr: nids count from the image start
  block.writeUInt32LE(0, at + 44); // xattr_blkaddr: no shared xattrs
  Buffer.from(f.uuid.replace(/-/g, ''), 'hex').copy(block, at + 48);
  // volume name, incompat features, compression and device fields stay zero.
  const crc = crc32cRaw(0xffffffff, block.subarray(at));
  block.writeUInt32LE(crc, at + 4);
  return block;
}
