// Reads a staging tree into memory for the EROFS writer: every entry's lstat fields (owner, mode with its
// special bits, size, mtime in nanoseconds, device numbers), symlink targets, xattrs (one getfattr run for
// the whole tree), and directory listings with raw byte names. Hard links (a non-directory inode under
// several names) become one SourceInode with several parents' entries and an nlink counted in the tree.
// Symlinks are never followed; the root itself is resolved first. Every inode also gets its index in the
// "tree order": depth-first, children by name bytes, the root first. Each directory is listed and its
// entries lstat'ed with synchronous calls (several times faster than the thread pool for thousands of
// small entries), and the event loop gets a turn between directories.
import type { BigIntStats } from 'node:fs';
import { lstatSync, readdirSync, readlinkSync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import { EROFS_NAME_LEN, MAX_SYMLINK_TARGET, MkfsError } from './format.js';
import type { FileType } from './format.js';
import { readTreeXattrs } from './xattr.js';
import type { SourceXattr } from './xattr.js';

/** Entries lstat'ed synchronously before the event loop gets a turn. */
export const SCAN_SYNC_BATCH = 512;
const NS_PER_SECOND = 1_000_000_000n;
const SLASH = Buffer.from('/');

/** One inode of the source tree (a hard-linked file is one SourceInode). */
export interface SourceInode {
  type: FileType;
  /** Permission and special bits (mode & 0o7777). */
  permissions: number;
  uid: number;
  gid: number;
  /** Regular files: bytes of content; symlinks: target length; others 0 (directories get theirs later). */
  size: number;
  /** mtime, whole seconds (floor) and nanoseconds 0..999999999. */
  mtimeSec: bigint;
  mtimeNsec: number;
  /** Character and block devices. */
  rdevMajor: number;
  rdevMinor: number;
  /** Links to this inode inside the tree (for directories: 2 + subdirectories). */
  nlink: number;
  xattrs: SourceXattr[];
  /** Symlinks: the target bytes. */
  target?: Buffer;
  /** Directories: children sorted by name bytes ('.' and '..' not included). */
  children?: SourceEntry[];
  /** Absolute path of its first name (for reading data; binary bytes). */
  abs: Buffer;
  /** Relative path of its first name, '/'-separated, '' for the root (binary bytes, for errors and hot paths). */
  rel: Buffer;
  /** Position in the tree order (0 for the root). */
  order: number;
  /** Directories: the parent directory (the root's is itself). */
  parent?: SourceInode;
}

/** A name in a directory. */
export interface SourceEntry {
  name: Buffer;
  inode: SourceInode;
}

export interface SourceTree {
  root: SourceInode;
  /** Every inode once, in tree order. */
  inodes: SourceInode[];
  /** The resolved root path. */
  rootPath: string;
}

function typeOf(st: BigIntStats): FileType | undefined {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  return undefined;
}

/** Splits nanoseconds since the epoch into floor seconds and nanoseconds (also for times before 1970). */
export function splitNs(ns: bigint): { sec: bigint; nsec: number } {
  let sec = ns / NS_PER_SECOND;
  let rem = ns % NS_PER_SECOND;
  if (rem < 0n) {
    sec -= 1n;
    rem += NS_PER_SECOND;
  }
  return { sec, nsec: Number(rem) };
}

/** glibc's gnu_dev_major/minor of a dev_t. */
export function splitDev(rdev: bigint): { major: number; minor: number } {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return { major: Number(major), minor: Number(minor) };
}

function display(rel: Buffer): string {
  return rel.length === 0 ? '/' : rel.toString('latin1');
}

function statEntry(abs: Buffer, rel: Buffer): BigIntStats {
  try {
    return lstatSync(abs, { bigint: true });
  } catch (err) {
    throw new MkfsError(`cannot lstat ${display(rel)}: ${(err as Error).message}`, rel.toString('latin1'));
  }
}

function newInode(st: BigIntStats, abs: Buffer, rel: Buffer): SourceInode {
  const type = typeOf(st);
  if (type === undefined) throw new MkfsError(`${display(rel)} has an unsupported file type (mode 0${st.mode.toString(8)})`, rel.toString('latin1'));
  const { sec, nsec } = splitNs(st.mtimeNs);
  const dev = type === 'char' || type === 'block' ? splitDev(st.rdev) : { major: 0, minor: 0 };
  return {
    type,
    permissions: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: type === 'file' ? Number(st.size) : 0,
    mtimeSec: sec,
    mtimeNsec: nsec,
    rdevMajor: dev.major,
    rdevMinor: dev.minor,
    nlink: 0,
    xattrs: [],
    abs,
    rel,
    order: -1,
  };
}

/** Scans `treeDir` (see the header). */
export async function scanTree(treeDir: string): Promise<SourceTree> {
  let rootPath: string;
  try {
    rootPath = await realpath(treeDir);
  } catch (err) {
    throw new MkfsError(`cannot open the source tree ${treeDir}: ${(err as Error).message}`);
  }
  const xattrsPromise = readTreeXattrs(rootPath);
  // Awaited after the walk; if the walk fails first, the rejection must not go unhandled.
  xattrsPromise.catch(() => undefined);
  const rootAbs = Buffer.from(rootPath);
  const rootSt = statEntry(rootAbs, Buffer.alloc(0));
  if (!rootSt.isDirectory()) throw new MkfsError(`the source tree ${treeDir} is not a directory`);
  const root = newInode(rootSt, rootAbs, Buffer.alloc(0));
  root.parent = root;
  /** Hard-linked non-directories by "dev:ino". */
  const linked = new Map<string, SourceInode>();
  const byAbs = new Map<string, SourceInode>([[rootPath, root]]);

  let sinceYield = 0;
  const scanDir = async (dir: SourceInode): Promise<void> => {
    let names: Buffer[];
    try {
      names = readdirSync(dir.abs, { encoding: 'buffer' });
    } catch (err) {
      throw new MkfsError(`cannot list ${display(dir.rel)}: ${(err as Error).message}`, dir.rel.toString('latin1'));
    }
    names.sort(Buffer.compare);
    const children: SourceEntry[] = [];
    for (const name of names) {
      if (++sinceYield >= SCAN_SYNC_BATCH) {
        sinceYield = 0;
        await new Promise((resolve) => setImmediate(resolve));
      }
      const abs = Buffer.concat([dir.abs, SLASH, name]);
      const rel = dir.rel.length === 0 ? name : Buffer.concat([dir.rel, SLASH, name]);
      if (name.length > EROFS_NAME_LEN) throw new MkfsError(`${display(rel)}: name longer than ${EROFS_NAME_LEN} bytes`, rel.toString('latin1'));
      const st = statEntry(abs, rel);
      const key = `${st.dev}:${st.ino}`;
      const multi = !st.isDirectory() && st.nlink > 1n;
      let inode = multi ? linked.get(key) : undefined;
      if (inode === undefined) {
        inode = newInode(st, abs, rel);
        if (multi) linked.set(key, inode);
        byAbs.set(abs.toString('latin1'), inode);
        if (inode.type === 'symlink') {
          try {
            inode.target = readlinkSync(abs, { encoding: 'buffer' });
          } catch (err) {
            throw new MkfsError(`cannot read the symlink ${display(rel)}: ${(err as Error).message}`, rel.toString('latin1'));
          }
          if (inode.target.length === 0 || inode.target.length > MAX_SYMLINK_TARGET) {
            throw new MkfsError(`symlink ${display(rel)} has a target of ${inode.target.length} bytes`, rel.toString('latin1'));
          }
          inode.size = inode.target.length;
        }
      }
      children.push({ name, inode });
    }
    dir.children = children;
    for (const c of children) {
      if (c.inode.type === 'dir') {
        c.inode.parent = dir;
        await scanDir(c.inode);
      }
    }
  };
  await scanDir(root);

  // Tree order, link counts.
  const inodes: SourceInode[] = [];
  const visit = (dir: SourceInode): void => {
    dir.order = inodes.length;
    inodes.push(dir);
    let subdirs = 0;
    for (const c of dir.children!) {
      if (c.inode.type === 'dir') {
        subdirs++;
        visit(c.inode);
      } else {
        c.inode.nlink++;
        if (c.inode.order < 0) {
          c.inode.order = inodes.length;
          inodes.push(c.inode);
        }
      }
    }
    dir.nlink = 2 + subdirs;
  };
  visit(root);

  const xattrs = await xattrsPromise;
  for (const [path, list] of xattrs) {
    const inode = byAbs.get(path);
    if (inode === undefined) {
      // A hard link's other names, or an entry that appeared after the listing: only the first is kept.
      continue;
    }
    inode.xattrs = list;
  }
  return { root, inodes, rootPath };
}
