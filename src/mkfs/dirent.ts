// Directory data for the EROFS writer. A directory's entries ('.' and '..' included) are sorted by name
// bytes (memcmp order, a prefix first: the kernel binary-searches blocks by their first name, then the
// block), and packed greedily into blocks: each block holds its 12-byte dirents {nid, nameoff, file type}
// followed by their names, and no entry spans two blocks. Every block but the last counts 4096 bytes (the
// rest zero-filled, so a block's last name ends at a NUL); the directory's size is the bytes used up to the
// end of the last name. Packing needs only the names, so sizes are known before nids are assigned.
import { BLOCK_SIZE, EROFS_DIRENT_SIZE } from './format.js';

const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');

/** One entry to write: its name, EROFS_FT_* type and (once laid out) the nid it points to. */
export interface DirentPlan {
  name: Buffer;
  fileType: number;
  /** Resolves the nid at encoding time. */
  nid: () => number;
}

/** A directory's packed entries: which entries go in which block, and the directory size. */
export interface DirPacking {
  entries: DirentPlan[];
  /** Index of the first entry of each block (plus entries.length at the end). */
  blockStarts: number[];
  /** Directory size in bytes: full blocks before the last, then the bytes used in the last. */
  size: number;
}

/** Sorts the entries (with '.' and '..' added) and packs them into blocks. */
export function packDirectory(children: DirentPlan[], self: () => number, parent: () => number, dirFileType: number): DirPacking {
  const entries: DirentPlan[] = [
    { name: DOT, fileType: dirFileType, nid: self },
    { name: DOTDOT, fileType: dirFileType, nid: parent },
    ...children,
  ].sort((a, b) => Buffer.compare(a.name, b.name));
  const blockStarts = [0];
  let used = 0;
  for (let i = 0; i < entries.length; i++) {
    const need = EROFS_DIRENT_SIZE + entries[i]!.name.length;
    if (used + need > BLOCK_SIZE) {
      blockStarts.push(i);
      used = 0;
    }
    used += need;
  }
  blockStarts.push(entries.length);
  const blocks = blockStarts.length - 1;
  return { entries, blockStarts, size: (blocks - 1) * BLOCK_SIZE + used };
}

/** The directory's data (`packing.size` bytes): dirents with their nids resolved now. */
export function encodeDirectory(packing: DirPacking): Buffer {
  const blocks = packing.blockStarts.length - 1;
  const out = Buffer.alloc(blocks * BLOCK_SIZE);
  for (let b = 0; b < blocks; b++) {
    const first = packing.blockStarts[b]!;
    const end = packing.blockStarts[b + 1]!;
    const base = b * BLOCK_SIZE;
    let nameoff = (end - first) * EROFS_DIRENT_SIZE;
    for (let i = first; i < end; i++) {
      const e = packing.entries[i]!;
      const at = base + (i - first) * EROFS_DIRENT_SIZE;
      out.writeBigUInt64LE(BigInt(e.nid()), at);
      out.writeUInt16LE(nameoff, at + 8);
      out.writeUInt8(e.fileType, at + 10);
      e.name.copy(out, base + nameoff);
      nameoff += e.name.length;
    }
  }
  return out.subarray(0, packing.size);
}
