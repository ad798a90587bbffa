// Directories: a directory's data is a sequence of blocks, each starting with an array of 12-byte dirents
// {nid, nameoff, file type} followed by the names. The first dirent's nameoff gives the entry count; a name ends
// where the next one starts, the last one at the end of the block's valid bytes or at a NUL. Names are sorted
// within a block and across blocks, so a lookup binary-searches the blocks by their first name, then the block.
// Every nameoff, name length and nid is checked; nothing is trusted to be sorted for listing.
import { ErofsFormatError } from './errors.js';
import type { FileType } from './inode.js';

export const EROFS_DIRENT_SIZE = 12;
export const EROFS_NAME_LEN = 255;
/** EROFS_FT_* file types of dirents. */
export const DIRENT_FILE_TYPES: ReadonlyArray<FileType | 'unknown'> = ['unknown', 'file', 'dir', 'char', 'block', 'fifo', 'socket', 'symlink'];

export interface DirEntry {
  /** Raw name bytes. */
  name: Buffer;
  nid: number;
  /** From the dirent (the inode's mode is authoritative). */
  fileType: FileType | 'unknown';
}

/**
 * Parses one directory block. `block` holds the block's valid bytes (min(block size, directory size - block
 * start)); `offset` is its image offset or the directory's logical offset for errors.
 */
export function parseDirBlock(block: Buffer, offset: number, dirNid: number): DirEntry[] {
  if (block.length < EROFS_DIRENT_SIZE) {
    throw new ErofsFormatError('directory', offset, `directory ${dirNid}: block of ${block.length} bytes cannot hold a dirent`);
  }
  const first = block.readUInt16LE(8);
  if (first < EROFS_DIRENT_SIZE || first >= block.length) {
    throw new ErofsFormatError('dirent', offset + 8, `directory ${dirNid}: first name offset ${first} outside ${EROFS_DIRENT_SIZE}..${block.length - 1}`);
  }
  const count = Math.floor(first / EROFS_DIRENT_SIZE);
  const entries: DirEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = i * EROFS_DIRENT_SIZE;
    const nid = block.readBigUInt64LE(at);
    const nameoff = block.readUInt16LE(at + 8);
    const type = block.readUInt8(at + 10);
    let nameEnd: number;
    if (i + 1 < count) {
      nameEnd = block.readUInt16LE(at + EROFS_DIRENT_SIZE + 8);
    } else {
      const nul = block.indexOf(0, nameoff);
      nameEnd = nul < 0 ? block.length : nul;
    }
    if (nameoff < first || nameoff > block.length || nameEnd > block.length || nameEnd <= nameoff || nameEnd - nameoff > EROFS_NAME_LEN) {
      throw new ErofsFormatError('dirent', offset + at, `directory ${dirNid}: entry ${i} has a bad name span [${nameoff}, ${nameEnd}) in a ${block.length}-byte block`);
    }
    if (nid > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ErofsFormatError('dirent', offset + at, `directory ${dirNid}: entry ${i} has an absurd nid ${nid}`);
    }
    entries.push({ name: block.subarray(nameoff, nameEnd), nid: Number(nid), fileType: DIRENT_FILE_TYPES[type] ?? 'unknown' });
  }
  return entries;
}
