// From a recorded profile's block ranges back to paths: which files, directories and symlinks of a layer own
// the bytes a workload read, in the order it first read them. `convert --hot-paths` then lays those paths out
// together at the front of the image (src/mkfs), so a later lazy mount of the converted image fetches a
// workload's start-up from a few adjacent chunks instead of from all over the image.
//
// The map is built by walking the layer's whole tree once (every inode's metadata, inline data and extents);
// for an image laid out by mkfs.erofs that walk reads metadata spread over the image, so run it with the disk
// cache of the recording mount.
import { inodeRanges } from '../erofs/index.js';
import type { ErofsImage, ErofsInode } from '../erofs/index.js';
import type { PrefetchProfile } from './profile.js';

/** Entries walked at most per layer (a larger tree is an error, not a silent partial map). */
export const MAX_HOT_PATH_WALK_ENTRIES = 5_000_000;

interface OwnedRange {
  start: number;
  end: number;
  /** Index into the layer's path list. */
  path: number;
  /** Block data of a file (not its inode, xattrs or inline tail). */
  blockData: boolean;
}

/** A path whose bytes a range touched. */
export interface TouchedPath {
  path: string;
  /** Whether the range touched the path's block data (not only its inode's metadata block). */
  blockData: boolean;
  /** Whether the path has block data at all (not everything inline in its inode). */
  hasBlockData: boolean;
}

/** The byte ranges of one layer image, each with the path of the inode owning it. */
export class LayerByteOwners {
  readonly paths: string[] = [];
  /** Per path: whether it owns block data. */
  readonly #hasBlockData: boolean[] = [];
  readonly #ranges: OwnedRange[] = [];

  private constructor() {}

  /** Walks `image` from its root; names that are not UTF-8 or hold a newline cannot be listed and are skipped. */
  static async build(image: ErofsImage, maxEntries = MAX_HOT_PATH_WALK_ENTRIES): Promise<LayerByteOwners> {
    const owners = new LayerByteOwners();
    const seen = new Set<number>();
    const root = await image.root();
    const stack: Array<[ErofsInode, string]> = [[root, '/']];
    let entries = 0;
    while (stack.length > 0) {
      const [inode, path] = stack.pop()!;
      if (seen.has(inode.nid)) continue;
      seen.add(inode.nid);
      if (++entries > maxEntries) throw new Error(`more than ${maxEntries} inodes: not mapping ranges to paths`);
      const index = owners.paths.push(path) - 1;
      owners.#hasBlockData.push(false);
      for await (const r of inodeRanges(image, inode)) {
        if (r.length <= 0) continue;
        if (r.blockData) owners.#hasBlockData[index] = true;
        owners.#ranges.push({ start: r.offset, end: r.offset + r.length, path: index, blockData: r.blockData });
      }
      if (inode.type !== 'dir') continue;
      const children: Array<[ErofsInode, string]> = [];
      for await (const d of image.readdir(inode)) {
        const name = d.name.toString('utf8');
        if (!Buffer.from(name, 'utf8').equals(d.name) || name.includes('\n')) continue;
        children.push([await image.inode(d.nid), path === '/' ? `/${name}` : `${path}/${name}`]);
      }
      // Popped in name order, so the first path of a hard-linked inode is the first in tree order.
      for (let i = children.length - 1; i >= 0; i--) stack.push(children[i]!);
    }
    owners.#ranges.sort((a, b) => a.start - b.start || a.end - b.end);
    return owners;
  }

  /** Paths owning any byte of [offset, offset + length), in image order. */
  pathsIn(offset: number, length: number): TouchedPath[] {
    const end = offset + length;
    const ranges = this.#ranges;
    // Ranges of different inodes do not overlap, so ends grow with starts: find the first range ending after
    // `offset` by binary search, then walk while ranges start before `end`.
    let lo = 0;
    let hi = ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ranges[mid]!.end <= offset) lo = mid + 1;
      else hi = mid;
    }
    const out: TouchedPath[] = [];
    for (let i = lo; i < ranges.length && ranges[i]!.start < end; i++) {
      const r = ranges[i]!;
      if (r.end > offset) out.push({ path: this.paths[r.path]!, blockData: r.blockData, hasBlockData: this.#hasBlockData[r.path]! });
    }
    return out;
  }
}

/**
 * The paths a profile's ranges touched, in first-access order, once each. `layers[i]` is the byte-owner map of
 * the profile's layer i, or undefined for a layer not mapped (its ranges are skipped).
 *
 * A metadata block holds many inodes (and their inline tails), so reading one inode records its neighbours'
 * too: a path with block data counts only when its block data was read. Paths without block data (directories
 * and small files kept inline, symlinks) count when their inode's block was read.
 */
export function hotPathsOfProfile(profile: PrefetchProfile, layers: ReadonlyArray<LayerByteOwners | undefined>): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const [layer, offset, length] of profile.ranges) {
    const owners = layers[layer];
    if (!owners) continue;
    for (const touched of owners.pathsIn(offset, length)) {
      if (seen.has(touched.path) || (touched.hasBlockData && !touched.blockData)) continue;
      seen.add(touched.path);
      out.push(touched.path);
    }
  }
  return out;
}
