// Where every byte of the image goes. The point is a start-up-ordered layout: the files a workload reads
// first ("hot paths") sit together at the front, so a lazily fetched image needs few chunks to start.
// After block 0 (the superblock):
//   (1) the root, then every directory inode with its inline dirents: hot directories first (the ancestors
//       of each hot path, then the path itself when it is a directory, in hot-path order), then the rest in
//       tree order; then the directories' full dirent blocks, in the same order;
//   (2) the inodes of hot non-directories (with xattrs and inline tails), in hot-path order;
//   (3) the data blocks of those hot entries, in the same order, contiguous;
//   (4) the remaining inodes, taken in tree order but packed best-fit into the region's blocks (inline tails
//       of all sizes would otherwise leave a quarter of the metadata blocks empty);
//   (5) the remaining data blocks, in tree order.
// Inodes are packed at 32-byte slots; an inode with its xattrs and inline tail never crosses a block
// boundary (one that cannot fit in a block gets a block of its own and no inline tail: FLAT_PLAIN). The
// last partial block of a file, symlink or directory is stored inline after its inode when it fits
// (FLAT_INLINE), otherwise in a data block. Compact inodes are used when every field fits. mkfs.erofs 1.5's
// SOURCE_DATE_EPOCH clamp is reproduced: an mtime at or after the build time becomes the build time.
import { packDirectory } from './dirent.js';
import type { DirPacking, DirentPlan } from './dirent.js';
import {
  BLOCK_SIZE,
  DATA_LAYOUT,
  DIRENT_TYPE,
  EROFS_INODE_SLOT_SIZE,
  MODE_TYPE_BITS,
  MkfsError,
  NULL_BLKADDR,
  alignUp,
} from './format.js';
import { encodeDevice, inodeSize, needsExtendedInode } from './inode.js';
import type { SourceInode, SourceTree } from './scan.js';
import { encodeXattrBody } from './xattr.js';

/** Which of the regions above an inode's metadata lives in. */
export type Region = 'dirs' | 'hot' | 'cold';

/** One inode as it will be written. */
export interface PlannedInode {
  src: SourceInode;
  region: Region;
  /** Named by a hot path (not merely an ancestor of one). */
  hot: boolean;
  extended: boolean;
  isize: number;
  xattrBody: Buffer;
  xattrIcount: number;
  mode: number;
  size: number;
  mtimeSec: bigint;
  mtimeNsec: number;
  layout: number;
  /** Data blocks of its own (full blocks; for FLAT_PLAIN the last one zero-padded). */
  nblocks: number;
  /** Bytes of the inline tail after the inode and its xattrs (FLAT_INLINE), else 0. */
  tailBytes: number;
  /** i_u: raw block address (or NULL_BLKADDR / 0), or the encoded device number. */
  iu: number;
  /** Image offset of the inode; nid = offset / 32 (meta_blkaddr is 0). */
  offset: number;
  nid: number;
  ino: number;
  /** Directories: the packed entries. */
  dir?: DirPacking;
}

export interface ImagePlan {
  /** Placement order (root first). */
  inodes: PlannedInode[];
  rootNid: number;
  totalBytes: number;
  /** Metadata byte ranges [start, end), block aligned: (1)+(2) (from 0, superblock block included), and (4). */
  metaRanges: Array<{ start: number; end: number }>;
  /** Inodes that have data blocks, in image order of those blocks. */
  dataOrder: PlannedInode[];
  hotInodes: number;
  hotBytes: number;
}

/** The plain tree-relative path segments of a hot path (leading '/', empty and '.' segments dropped). */
function segments(path: string): string[] {
  return path.split('/').filter((s) => s !== '' && s !== '.');
}

/** Finds the inode a hot path names, following no symlinks; names are tried as UTF-8, then as raw bytes. */
function resolveHot(tree: SourceTree, path: string, index: Map<SourceInode, Map<string, SourceInode>>): SourceInode[] | undefined {
  const encodings: BufferEncoding[] = /[^\x00-\xff]/.test(path) ? ['utf8'] : ['utf8', 'latin1'];
  for (const enc of encodings) {
    const chain: SourceInode[] = [tree.root];
    let ok = true;
    for (const seg of segments(path)) {
      const cur = chain[chain.length - 1]!;
      if (seg === '..') {
        if (chain.length > 1) chain.pop();
        continue;
      }
      if (cur.type !== 'dir') {
        ok = false;
        break;
      }
      let names = index.get(cur);
      if (names === undefined) {
        names = new Map(cur.children!.map((c) => [c.name.toString('latin1'), c.inode]));
        index.set(cur, names);
      }
      const next = names.get(Buffer.from(seg, enc).toString('latin1'));
      if (next === undefined) {
        ok = false;
        break;
      }
      chain.push(next);
    }
    if (ok) return chain;
  }
  return undefined;
}

/**
 * Chooses a data-bearing inode's layout (inline tail when inode + xattrs + tail fit in a block, else
 * FLAT_PLAIN) and returns the metadata bytes it needs: inode, xattrs, inline tail.
 */
function decideLayout(p: PlannedInode): number {
  const head = p.isize + p.xattrBody.length;
  const dataful = p.src.type === 'file' || p.src.type === 'dir' || p.src.type === 'symlink';
  if (!dataful) return head;
  const tail = p.size % BLOCK_SIZE;
  if (tail > 0 && head + tail <= BLOCK_SIZE) {
    p.layout = DATA_LAYOUT.flatInline;
    p.tailBytes = tail;
    p.nblocks = Math.floor(p.size / BLOCK_SIZE);
  } else {
    p.layout = DATA_LAYOUT.flatPlain;
    p.tailBytes = 0;
    p.nblocks = Math.ceil(p.size / BLOCK_SIZE);
  }
  return head + p.tailBytes;
}

/** Inode slots per block. */
const SLOTS_PER_BLOCK = BLOCK_SIZE / EROFS_INODE_SLOT_SIZE;

/**
 * Open metadata blocks by free 32-byte slots, for best-fit packing of inodes that need not keep an order
 * (mkfs.erofs packs its inodes with inline tails likewise). Deterministic: same requests, same answers.
 */
class BestFitPacker {
  /** Block start offsets by free slots (index 1..SLOTS_PER_BLOCK - 1). */
  readonly #byFree: number[][] = Array.from({ length: SLOTS_PER_BLOCK }, () => []);

  /** The offset of `need` bytes in the open block with the least room that fits, or undefined. */
  take(need: number): number | undefined {
    const slots = Math.ceil(need / EROFS_INODE_SLOT_SIZE);
    for (let free = slots; free < SLOTS_PER_BLOCK; free++) {
      const block = this.#byFree[free]!.pop();
      if (block === undefined) continue;
      const offset = block + (SLOTS_PER_BLOCK - free) * EROFS_INODE_SLOT_SIZE;
      if (free > slots) this.#byFree[free - slots]!.push(block);
      return offset;
    }
    return undefined;
  }

  /** Records the room left after `used` bytes placed at the start of the block(s) from `start`. */
  open(start: number, used: number): void {
    const lastBlock = start + Math.floor((used - 1) / BLOCK_SIZE) * BLOCK_SIZE;
    const usedSlots = Math.ceil((used - (lastBlock - start)) / EROFS_INODE_SLOT_SIZE);
    const free = SLOTS_PER_BLOCK - usedSlots;
    if (free > 0) this.#byFree[free]!.push(lastBlock);
  }
}

/** Plans the whole image (see the header). */
export function planImage(tree: SourceTree, buildTime: bigint, hotPaths: readonly string[]): ImagePlan {
  const planned = new Map<SourceInode, PlannedInode>();
  const nidOf = (src: SourceInode) => (): number => planned.get(src)!.nid;

  for (const src of tree.inodes) {
    const where = src.rel.length === 0 ? '/' : src.rel.toString('latin1');
    const { body, icount } = encodeXattrBody(src.xattrs, where);
    let dir: DirPacking | undefined;
    let size = src.size;
    if (src.type === 'dir') {
      const children: DirentPlan[] = src.children!.map((c) => ({ name: c.name, fileType: DIRENT_TYPE[c.inode.type], nid: nidOf(c.inode) }));
      dir = packDirectory(children, nidOf(src), nidOf(src.parent!), DIRENT_TYPE.dir);
      size = dir.size;
    }
    const clamped = src.mtimeSec >= buildTime;
    const mtimeSec = clamped ? buildTime : src.mtimeSec;
    const mtimeNsec = clamped ? 0 : src.mtimeNsec;
    const extended = needsExtendedInode({ nlink: src.nlink, size, uid: src.uid, gid: src.gid, mtimeSec, mtimeNsec }, buildTime);
    const p: PlannedInode = {
      src,
      region: 'cold',
      hot: false,
      extended,
      isize: inodeSize(extended),
      xattrBody: body,
      xattrIcount: icount,
      mode: MODE_TYPE_BITS[src.type] | src.permissions,
      size,
      mtimeSec,
      mtimeNsec,
      layout: DATA_LAYOUT.flatPlain,
      nblocks: 0,
      tailBytes: 0,
      iu: 0,
      offset: -1,
      nid: -1,
      ino: -1,
      ...(dir ? { dir } : {}),
    };
    if (src.type === 'char' || src.type === 'block') p.iu = encodeDevice(src.rdevMajor, src.rdevMinor);
    planned.set(src, p);
  }

  // Orders.
  const dirOrder: PlannedInode[] = [planned.get(tree.root)!];
  const hotOrder: PlannedInode[] = [];
  const seen = new Set<PlannedInode>(dirOrder);
  const index = new Map<SourceInode, Map<string, SourceInode>>();
  let hotInodes = 0;
  for (const path of hotPaths) {
    const chain = resolveHot(tree, path, index);
    if (chain === undefined) continue;
    for (const src of chain) {
      const p = planned.get(src)!;
      if (src === chain[chain.length - 1] && !p.hot) {
        p.hot = true;
        hotInodes++;
      }
      if (seen.has(p)) continue;
      seen.add(p);
      if (src.type === 'dir') {
        dirOrder.push(p);
      } else {
        hotOrder.push(p);
      }
    }
  }
  const coldOrder: PlannedInode[] = [];
  for (const src of tree.inodes) {
    const p = planned.get(src)!;
    if (seen.has(p)) continue;
    if (src.type === 'dir') dirOrder.push(p);
    else coldOrder.push(p);
  }
  for (const p of dirOrder) p.region = 'dirs';
  for (const p of hotOrder) p.region = 'hot';

  // Placement.
  const inodes: PlannedInode[] = [];
  let cursor = BLOCK_SIZE;
  const place = (p: PlannedInode, offset: number): void => {
    p.offset = offset;
    p.nid = offset / EROFS_INODE_SLOT_SIZE;
    p.ino = inodes.length;
    inodes.push(p);
  };
  /** In order: at the cursor, or at the next block when it would cross a block boundary. */
  const placeMeta = (p: PlannedInode): void => {
    const need = decideLayout(p);
    if (need > BLOCK_SIZE || (cursor % BLOCK_SIZE) + need > BLOCK_SIZE) cursor = alignUp(cursor, BLOCK_SIZE);
    place(p, cursor);
    cursor = alignUp(cursor + need, EROFS_INODE_SLOT_SIZE);
  };
  /** Best fit: into the fullest open block of the region that has room, else a new block at the cursor. */
  const packer = new BestFitPacker();
  const placePacked = (p: PlannedInode): void => {
    const need = decideLayout(p);
    const fit = packer.take(need);
    if (fit !== undefined) {
      place(p, fit);
      return;
    }
    cursor = alignUp(cursor, BLOCK_SIZE);
    place(p, cursor);
    packer.open(cursor, need);
    cursor = alignUp(cursor + need, BLOCK_SIZE);
  };
  const dataOrder: PlannedInode[] = [];
  const placeData = (p: PlannedInode): void => {
    if (p.nblocks > 0) {
      p.iu = cursor / BLOCK_SIZE;
      cursor += p.nblocks * BLOCK_SIZE;
      dataOrder.push(p);
    } else if (p.layout === DATA_LAYOUT.flatInline) {
      p.iu = NULL_BLKADDR;
    }
  };

  for (const p of dirOrder) placeMeta(p);
  cursor = alignUp(cursor, BLOCK_SIZE);
  for (const p of dirOrder) placeData(p);
  for (const p of hotOrder) placeMeta(p);
  cursor = alignUp(cursor, BLOCK_SIZE);
  const metaAEnd = cursor;
  for (const p of hotOrder) placeData(p);
  const hotEnd = cursor;
  for (const p of coldOrder) placePacked(p);
  cursor = alignUp(cursor, BLOCK_SIZE);
  const metaBStart = hotEnd;
  const metaBEnd = cursor;
  for (const p of coldOrder) placeData(p);
  const totalBytes = alignUp(cursor, BLOCK_SIZE);
  if (totalBytes / BLOCK_SIZE > 0xffffffff) throw new MkfsError(`the image would need ${totalBytes / BLOCK_SIZE} blocks, more than EROFS can address`);

  const root = planned.get(tree.root)!;
  return {
    inodes,
    rootNid: root.nid,
    totalBytes,
    metaRanges: [
      { start: 0, end: metaAEnd },
      { start: metaBStart, end: metaBEnd },
    ],
    dataOrder,
    hotInodes,
    hotBytes: hotInodes > 0 ? hotEnd : 0,
  };
}
