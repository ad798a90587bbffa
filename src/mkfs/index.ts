// Our own writer of uncompressed EROFS images (4 KiB blocks) with a start-up-ordered layout: the files a
// workload reads first ("hot paths") are put together at the front of the image, right after the
// directories, so that a lazily fetched image needs few chunks to start a container (mkfs.erofs 1.5 spreads
// them depth-first over the whole image). The image shows the same tree as mkfs.erofs's image of the same
// staging directory (names, types, modes, owners, sizes, contents, mtimes with nanoseconds, xattrs, symlink
// targets, devices, hard links), and the same UUID and build time make the same bytes.
// Modules: scan (read the tree), xattr (getfattr, xattr bodies), dirent, inode, superblock (on-disk
// encodings), layout (the region order), writer (the I/O).
import { MkfsError } from './format.js';
import { planImage } from './layout.js';
import { scanTree } from './scan.js';
import { UUID_PATTERN } from './superblock.js';
import { writePlan } from './writer.js';

export { MkfsError } from './format.js';
export { planImage } from './layout.js';
export type { ImagePlan, PlannedInode, Region } from './layout.js';
export { scanTree } from './scan.js';
export type { SourceEntry, SourceInode, SourceTree } from './scan.js';

export interface WriteErofsOptions {
  /** Lowercase 8-4-4-4-12 hex; goes into the superblock. */
  uuid: string;
  /**
   * Superblock build_time, whole seconds >= 0 (mkfs.erofs's SOURCE_DATE_EPOCH). As with mkfs.erofs 1.5, an
   * mtime at or after it is stored as exactly this time.
   */
  epoch: number;
  /**
   * '/'-separated paths relative to the tree root ('usr/bin/python3' or '/usr/bin/python3'), most urgent
   * first; unknown paths are ignored; symlinks are not followed; a directory means the directory itself (not
   * its subtree). The ancestors of every hot path also go first among the directories.
   */
  hotPaths?: string[];
}

export interface WriteErofsResult {
  /** Image size. */
  bytes: number;
  inodes: number;
  /** Distinct inodes named by hotPaths. */
  hotInodes: number;
  /** Image bytes of the hot region: from the start up to the end of the last hot file's data (0 without hot inodes). */
  hotBytes: number;
}

/** Writes `treeDir` as an EROFS image to `outPath` (replaced; removed again on failure). */
export async function writeErofsImage(treeDir: string, outPath: string, opts: WriteErofsOptions): Promise<WriteErofsResult> {
  if (!UUID_PATTERN.test(opts.uuid)) {
    throw new MkfsError(`writeErofsImage: invalid UUID ${JSON.stringify(opts.uuid)} (want lowercase 8-4-4-4-12 hex)`);
  }
  if (!Number.isSafeInteger(opts.epoch) || opts.epoch < 0) throw new MkfsError(`writeErofsImage: invalid epoch ${opts.epoch}`);
  const buildTime = BigInt(opts.epoch);
  const tree = await scanTree(treeDir);
  const plan = planImage(tree, buildTime, opts.hotPaths ?? []);
  await writePlan(plan, outPath, { uuid: opts.uuid, buildTime });
  return { bytes: plan.totalBytes, inodes: plan.inodes.length, hotInodes: plan.hotInodes, hotBytes: plan.hotBytes };
}
