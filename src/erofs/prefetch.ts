// Prefetch by path: the image byte ranges that reading some paths will touch, per layer, so that a mount can
// fetch their chunks before the kernel asks. A file contributes its inode (with xattrs and inline data) and
// its data extents; a directory its inode, its blocks (every layer copy merged into it) and, recursively,
// everything below it; a symlink its target. The metadata needed to find these (path lookups, directory
// listings) is read through the view while resolving, so it is fetched (and cached) by this call itself.
import type { ErofsImage } from './image.js';
import type { ErofsInode } from './inode.js';
import type { LayeredView, ViewNode } from './layered.js';
import { ErofsPathError } from './errors.js';

/** Entries visited at most by one prefetch resolution (a whole-image path is cut off there). */
export const DEFAULT_PREFETCH_MAX_ENTRIES = 200_000;

export interface ImageRange {
  offset: number;
  length: number;
}

export interface PathRangesResult {
  /** Layer index (0 = bottom) -> sorted, merged image ranges. */
  ranges: Map<number, ImageRange[]>;
  /** Paths that did not resolve (they are skipped, not fatal). */
  missing: string[];
  /** Whether maxEntries cut the walk short. */
  truncated: boolean;
}

export function mergeRanges(ranges: ImageRange[]): ImageRange[] {
  const sorted = ranges.filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  const out: ImageRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else {
      out.push({ ...r });
    }
  }
  return out;
}

/** Chunk indexes (of `chunkSize`-byte chunks of the raw image) covering `ranges`, sorted. */
export function chunksOfRanges(ranges: ImageRange[], chunkSize: number): number[] {
  const chunks = new Set<number>();
  for (const r of ranges) {
    if (r.length <= 0) continue;
    for (let c = Math.floor(r.offset / chunkSize); c <= Math.floor((r.offset + r.length - 1) / chunkSize); c++) chunks.add(c);
  }
  return [...chunks].sort((a, b) => a - b);
}

/** An image range an inode occupies; `blockData` marks its data blocks (not its inode, xattrs or inline tail). */
export interface InodeRange extends ImageRange {
  blockData: boolean;
}

/** The image ranges of one inode: the inode with its xattrs, then its data extents (files, directories, symlinks). */
export async function* inodeRanges(image: ErofsImage, inode: ErofsInode): AsyncGenerator<InodeRange> {
  yield { offset: inode.offset, length: inode.metaEnd - inode.offset, blockData: false };
  if (inode.type !== 'file' && inode.type !== 'dir' && inode.type !== 'symlink') return;
  for await (const e of image.extents(inode)) {
    if (e.physical !== undefined && e.physicalLength !== undefined) yield { offset: e.physical, length: e.physicalLength, blockData: e.kind !== 'inline' };
  }
}

/** The ranges reading `paths` (files or directories, symlinks followed) will touch. */
export async function pathRanges(view: LayeredView, paths: string[], maxEntries = DEFAULT_PREFETCH_MAX_ENTRIES): Promise<PathRangesResult> {
  const perLayer = new Map<number, ImageRange[]>();
  const add = (layer: number, r: ImageRange) => {
    const list = perLayer.get(layer) ?? [];
    list.push(r);
    perLayer.set(layer, list);
  };
  const addExtents = async (layer: number, inode: ErofsInode) => {
    for await (const r of inodeRanges(view.layers[layer]!, inode)) add(layer, { offset: r.offset, length: r.length });
  };
  const missing: string[] = [];
  let entries = 0;
  let truncated = false;
  const visit = async (node: ViewNode) => {
    await addExtents(node.layer, node.inode);
    for (const d of node.dirs) if (d.layer !== node.layer || d.inode.nid !== node.inode.nid) await addExtents(d.layer, d.inode);
  };
  for (const path of paths) {
    let start: ViewNode;
    try {
      start = await view.resolve(path, { followFinal: true });
    } catch (err) {
      if (err instanceof ErofsPathError) {
        missing.push(path);
        continue;
      }
      throw err;
    }
    for await (const { node } of view.walk(start, path)) {
      if (++entries > maxEntries) {
        truncated = true;
        break;
      }
      await visit(node);
    }
    if (truncated) break;
  }
  const ranges = new Map<number, ImageRange[]>();
  for (const [layer, list] of [...perLayer].sort((a, b) => a[0] - b[0])) ranges.set(layer, mergeRanges(list));
  return { ranges, missing, truncated };
}
