// Test helper for the EROFS writer (src/mkfs): a source tree with every edge the writer must get right (on
// top of the reader tests' every-kind tree: 255-byte names, names sorting before '.', names that getfattr
// must quote, hard links across directories to files, devices and symlinks, a tail that cannot be inline
// next to its inode, many and large xattrs, POSIX ACLs, whiteouts and opaque directories, nanosecond
// mtimes, big device numbers, long symlink targets), and the stat fields that snapshotTree leaves out (link
// counts, mtime nanoseconds) as a comparable map.
import { execFileSync } from 'node:child_process';
import { link, lstat, mkdir, readdir, realpath, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pseudoRandomBytes } from '../../src/sample/build.js';
import { writeEveryKindTree } from '../fixtures/erofs/helpers.js';
import { displayName } from './tree.js';

/** A POSIX ACL (xattr form): user::rw-, user:1000:rw-, group::r--, mask::rw-, other::r--. */
export const SAMPLE_ACL_HEX = '0x0200000001000600ffffffff02000600e803000004000400ffffffff10000600ffffffff20000400ffffffff';
/** Names that getfattr quotes (backslash, '=', newline, tab) or that sort before '.' in a directory. */
export const QUOTED_NAMES: readonly string[] = ['back\\slash', 'eq=uals', 'new\nline', 'tab\there', '-dash', '!bang', '+plus', ' space', '-'];
/** Entries of the directory of 255-byte names (about 15 per directory block). */
export const LONG_NAME_ENTRIES = 40;
export const MANY_XATTRS = 40;
export const LARGE_XATTR_BYTES = 3000;
/** The longest name EROFS allows. */
export const EROFS_MAX_NAME_BYTES = 255;
/** mkfs.erofs 1.5 fails on a 255-byte name ("Could not format the device: No such file or directory"). */
export const MKFS_MAX_NAME_BYTES = 254;

export interface EdgeTreeOptions {
  /** Length of the long names (default EROFS_MAX_NAME_BYTES; MKFS_MAX_NAME_BYTES for a tree mkfs.erofs must take). */
  longNameBytes?: number;
}

function run(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function setxattr(path: string, name: string, value: string, noDeref = false): void {
  run('setfattr', [...(noDeref ? ['-h'] : []), '-n', name, '-v', value, path]);
}

/** Sets an exact mtime with nanoseconds (Node's utimes rounds through a double), symlinks not followed. */
export function touchNs(path: string, seconds: number, nanoseconds: number): void {
  run('touch', ['-h', '-m', '-d', `@${seconds}.${String(nanoseconds).padStart(9, '0')}`, path]);
}

/** Writes the writer's edge tree into `root` (created). */
export async function writeMkfsEdgeTree(root: string, opts: EdgeTreeOptions = {}): Promise<void> {
  const longest = opts.longNameBytes ?? EROFS_MAX_NAME_BYTES;
  await writeEveryKindTree(root);
  const p = (rel: string) => join(root, rel);
  await mkdir(p('edge/empty-dir'), { recursive: true });
  setxattr(root, 'user.root', 'on the root');
  // A 4000-byte file with a 1000-byte xattr: inode + xattrs + tail exceed a block, so no inline tail.
  await writeFile(p('edge/no-inline-tail'), pseudoRandomBytes(4000, 'no-inline'));
  setxattr(p('edge/no-inline-tail'), 'user.big', `0x${'ab'.repeat(1000)}`);
  // Many xattrs, and one large value; an ACL pair on a directory and an access ACL on a file.
  await writeFile(p('edge/many-xattrs'), 'many xattrs\n');
  for (let i = 0; i < MANY_XATTRS; i++) setxattr(p('edge/many-xattrs'), `user.attr-${String(i).padStart(2, '0')}`, `value ${i}`);
  await writeFile(p('edge/large-xattr'), pseudoRandomBytes(5000, 'large-xattr'));
  setxattr(p('edge/large-xattr'), 'user.large', `0x${pseudoRandomBytes(LARGE_XATTR_BYTES, 'xattr-value').toString('hex')}`);
  setxattr(p('edge/large-xattr'), 'trusted.small', 'x');
  await mkdir(p('edge/acl-dir'));
  setxattr(p('edge/acl-dir'), 'system.posix_acl_access', SAMPLE_ACL_HEX);
  setxattr(p('edge/acl-dir'), 'system.posix_acl_default', SAMPLE_ACL_HEX);
  await writeFile(p('edge/acl-dir/file'), 'acl\n');
  setxattr(p('edge/acl-dir/file'), 'system.posix_acl_access', SAMPLE_ACL_HEX);
  // Longest names: a file, a directory, and a directory full of them (several dirent blocks).
  await writeFile(p(`edge/${'f'.repeat(longest)}`), 'long name\n');
  await mkdir(p(`edge/${'d'.repeat(longest)}`));
  await writeFile(p(`edge/${'d'.repeat(longest)}/${'g'.repeat(longest)}`), 'inside\n');
  await mkdir(p('edge/longnames'));
  for (let i = 0; i < LONG_NAME_ENTRIES; i++) {
    await writeFile(p(`edge/longnames/${String(i).padStart(3, '0')}${'L'.repeat(longest - 3)}`), i % 2 === 0 ? `${i}\n` : '');
  }
  // Names that need quoting or sort before '.'; xattrs on one of them (the getfattr parser must map it back).
  await mkdir(p('edge/quoted'));
  for (const n of QUOTED_NAMES) await writeFile(p(`edge/quoted/${n}`), `${n}\n`);
  setxattr(p('edge/quoted/back\\slash'), 'user.q', 'quoted path');
  setxattr(p('edge/quoted/new\nline'), 'user.n', 'newline path');
  // A non-UTF-8 directory name with a file inside.
  const odd = Buffer.concat([Buffer.from(p('edge/')), Buffer.from([0xff, 0xfe, 0x41])]);
  await mkdir(odd);
  await writeFile(Buffer.concat([odd, Buffer.from('/inner')]), 'inner\n');
  // Hard links across directories: a file (3 names), a char device, a symlink.
  await mkdir(p('edge/links/a'), { recursive: true });
  await mkdir(p('edge/links/b'));
  await writeFile(p('edge/links/a/file'), pseudoRandomBytes(6000, 'linked'));
  await link(p('edge/links/a/file'), p('edge/links/b/file-2'));
  await link(p('edge/links/a/file'), p('edge/links/file-3'));
  run('mknod', [p('edge/links/a/dev'), 'c', '5', '1']);
  await link(p('edge/links/a/dev'), p('edge/links/b/dev-2'));
  await symlink('file', p('edge/links/a/sym'));
  run('ln', ['-P', p('edge/links/a/sym'), p('edge/links/b/sym-2')]);
  // Whiteouts (0:0 char devices) and an opaque directory.
  await mkdir(p('edge/layer/opaque'), { recursive: true });
  run('mknod', [p('edge/layer/deleted'), 'c', '0', '0']);
  run('mknod', [p('edge/layer/opaque/gone'), 'c', '0', '0']);
  setxattr(p('edge/layer/opaque'), 'trusted.overlay.opaque', 'y');
  // Device numbers beyond 8 bits.
  run('mknod', [p('edge/bigdev'), 'c', '300', '70000']);
  run('mknod', [p('edge/bigblk'), 'b', '259', '1048575']);
  // Long symlink targets: one that fits inline, one that needs a block.
  await symlink('t'.repeat(3900), p('edge/long-symlink'));
  await symlink('u'.repeat(4095), p('edge/longest-symlink'));
  // Owners above 16 bits on a directory and a device; setuid + sticky modes.
  execFileSync('chown', ['-h', '70000:80000', p('edge/empty-dir'), p('edge/bigdev')]);
  await writeFile(p('edge/setuid'), '#!/bin/sh\n');
  execFileSync('chmod', ['4711', p('edge/setuid')]);
  execFileSync('chmod', ['1777', p('edge/empty-dir')]);
  // Nanosecond mtimes (set last, children before their directories).
  const stamps: Array<[string, number]> = [
    ['edge/links/a/file', 123456789],
    ['edge/long-symlink', 1],
    ['edge/bigdev', 999999999],
    ['edge/quoted/new\nline', 500000000],
    ['edge/quoted', 42],
    ['edge/longnames', 7],
    ['edge', 314159265],
  ];
  for (const [i, [rel, ns]] of stamps.entries()) touchNs(p(rel), 1_600_000_000 + i * 1000, ns);
}

/** Per path (snapshotTree keys): link count and mtime in nanoseconds, symlinks not followed. */
export async function statExtras(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const visit = async (rel: string, abs: Buffer): Promise<void> => {
    const st = await lstat(abs, { bigint: true });
    out.set(rel, `nlink=${st.nlink} mtime=${st.mtimeNs}`);
    if (st.isDirectory()) {
      for (const name of (await readdir(abs, { encoding: 'buffer' })).sort(Buffer.compare)) {
        const shown = displayName(name);
        await visit(rel === '.' ? shown : `${rel}/${shown}`, Buffer.concat([abs, Buffer.from('/'), name]));
      }
    }
  };
  await visit('.', Buffer.from(await realpath(root)));
  return out;
}

/** Lines "path: a != b" for every path whose value differs (or exists in one map only). */
export function diffMaps(a: Map<string, string>, b: Map<string, string>): string[] {
  const out: string[] = [];
  for (const k of [...new Set([...a.keys(), ...b.keys()])].sort()) {
    if (a.get(k) !== b.get(k)) out.push(`${JSON.stringify(k)}: ${a.get(k) ?? '(none)'} != ${b.get(k) ?? '(none)'}`);
  }
  return out;
}
