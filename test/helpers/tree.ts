// Test helper: a snapshot of a directory tree as a Map from relative path to what a container would see
// there (type, mode with special bits, owner, size, mtime, content hash, symlink target, device numbers,
// hard-link siblings, xattrs), and a readable diff of two snapshots. Symlinks are never followed (the
// root itself is resolved first, so a mountpoint given as a symlink works).
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { BigIntStats } from 'node:fs';
import { chmod, chown, link, lstat, lutimes, mkdir, readdir, readlink, realpath, symlink, writeFile } from 'node:fs/promises';
import { displayName } from '../../src/erofs/layered.js';

/** A path's bytes as a key: the UTF-8 text when valid, otherwise with \xNN for every byte >= 0x80. */
export { displayName };

export type EntryType = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';

export interface EntryInfo {
  type: EntryType;
  /** Permission bits including setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Regular files and symlinks only (directory sizes differ between filesystems). */
  size?: number;
  /** Seconds (floor). */
  mtime: number;
  /** Regular files: hex sha256 of the content. */
  sha256?: string;
  /** Symlinks. */
  target?: string;
  /** Devices: "major:minor". */
  rdev?: string;
  /** Non-directories with more than one link: every path of the tree sharing the inode, sorted. */
  links?: string[];
  /** name -> hex value; includes trusted.* and security.* (we run as root). */
  xattrs: Record<string, string>;
}

export type TreeSnapshot = Map<string, EntryInfo>;

export interface SnapshotOptions {
  /** Leave out the root entry (".")? Default false: it is included. */
  skipRoot?: boolean;
  /** Paths (relative) to leave out, with everything under them. */
  exclude?: string[];
}

const ROOT_KEY = '.';
const NS_PER_SECOND = 1_000_000_000n;
/** getfattr output can be large for big trees. */
const GETFATTR_MAX_BUFFER = 256 * 1024 * 1024;

function typeOf(st: BigIntStats): EntryType {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

function majorMinor(rdev: bigint): string {
  // Linux dev_t encoding (glibc gnu_dev_major/minor).
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

function floorSeconds(ns: bigint): number {
  const q = ns / NS_PER_SECOND;
  return Number(ns < 0n && q * NS_PER_SECOND !== ns ? q - 1n : q);
}

async function sha256File(path: Buffer): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Undoes getfattr's quoting (\ooo octal escapes) of a binary (latin1) string. */
function unquote(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/** All xattrs under `root` with one getfattr process: absolute path (binary string) -> (name -> hex). */
function readAllXattrs(root: string): Promise<Map<string, Record<string, string>>> {
  return new Promise((resolve, reject) => {
    execFile(
      'getfattr',
      ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root],
      { encoding: 'latin1', maxBuffer: GETFATTR_MAX_BUFFER, env: { ...process.env, LC_ALL: 'C' } },
      (err, stdout, stderr) => {
        // getfattr exits 1 when some file had no readable xattrs; anything printed is still valid.
        if (err && stdout === '' && stderr.trim() !== '') {
          reject(new Error(`getfattr failed on ${root}: ${stderr.trim()}`));
          return;
        }
        const out = new Map<string, Record<string, string>>();
        let current: Record<string, string> | undefined;
        for (const line of stdout.split('\n')) {
          if (line.startsWith('# file: ')) {
            current = {};
            out.set(unquote(line.slice('# file: '.length)), current);
          } else if (current && line.includes('=')) {
            const eq = line.indexOf('=');
            const value = line.slice(eq + 1);
            current[unquote(line.slice(0, eq))] = value === '' || value === '""' ? '0x' : value;
          }
        }
        resolve(out);
      },
    );
  });
}

/** Walks `root` without following symlinks. Keys are relative paths ("." for the root). */
export async function snapshotTree(root: string, opts: SnapshotOptions = {}): Promise<TreeSnapshot> {
  const realRoot = Buffer.from(await realpath(root));
  const excluded = new Set(opts.exclude ?? []);
  const xattrs = await readAllXattrs(realRoot.toString());
  const snap: TreeSnapshot = new Map();
  /** "dev:ino" -> paths, and path -> "dev:ino", for non-directories with several links. */
  const inodes = new Map<string, string[]>();
  const inodeOf = new Map<string, string>();

  const visit = async (rel: string, abs: Buffer): Promise<void> => {
    const st = await lstat(abs, { bigint: true });
    const type = typeOf(st);
    const info: EntryInfo = {
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtime: floorSeconds(st.mtimeNs),
      xattrs: xattrs.get(abs.toString('latin1')) ?? {},
    };
    if (type === 'file') {
      info.size = Number(st.size);
      info.sha256 = await sha256File(abs);
    } else if (type === 'symlink') {
      info.size = Number(st.size);
      info.target = displayName(await readlink(abs, { encoding: 'buffer' }));
    } else if (type === 'char' || type === 'block') {
      info.rdev = majorMinor(st.rdev);
    }
    if (type !== 'dir' && st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      inodes.set(key, [...(inodes.get(key) ?? []), rel]);
      inodeOf.set(rel, key);
    }
    if (!(rel === ROOT_KEY && opts.skipRoot)) snap.set(rel, info);
    if (type === 'dir') {
      const names = (await readdir(abs, { encoding: 'buffer' })).sort(Buffer.compare);
      for (const name of names) {
        const shown = displayName(name);
        const childRel = rel === ROOT_KEY ? shown : `${rel}/${shown}`;
        if (excluded.has(childRel)) continue;
        await visit(childRel, Buffer.concat([abs, Buffer.from('/'), name]));
      }
    }
  };
  await visit(ROOT_KEY, realRoot);

  for (const [rel, key] of inodeOf) {
    const group = inodes.get(key)!;
    const info = snap.get(rel);
    if (info && group.length > 1) info.links = [...group].sort();
  }
  return snap;
}

function describe(info: EntryInfo): string {
  return `${info.type} ${info.mode.toString(8).padStart(4, '0')} ${info.uid}:${info.gid}`;
}

/** Human-readable differences between two snapshots ("a" expected, "b" actual); empty when equal. */
export function diffTrees(a: TreeSnapshot, b: TreeSnapshot): string[] {
  const out: string[] = [];
  const paths = [...new Set([...a.keys(), ...b.keys()])].sort();
  for (const p of paths) {
    const x = a.get(p);
    const y = b.get(p);
    if (!x) {
      out.push(`${p}: only in second (${describe(y!)})`);
      continue;
    }
    if (!y) {
      out.push(`${p}: only in first (${describe(x)})`);
      continue;
    }
    const fields: Array<keyof EntryInfo> = ['type', 'mode', 'uid', 'gid', 'size', 'mtime', 'sha256', 'target', 'rdev'];
    for (const f of fields) {
      if (x[f] !== y[f]) {
        const show = (v: unknown) => (f === 'mode' && typeof v === 'number' ? `0${v.toString(8)}` : JSON.stringify(v));
        out.push(`${p}: ${f} ${show(x[f])} != ${show(y[f])}`);
      }
    }
    const lx = (x.links ?? []).join(', ');
    const ly = (y.links ?? []).join(', ');
    if (lx !== ly) out.push(`${p}: hard links [${lx}] != [${ly}]`);
    const names = [...new Set([...Object.keys(x.xattrs), ...Object.keys(y.xattrs)])].sort();
    for (const n of names) {
      if (x.xattrs[n] !== y.xattrs[n]) out.push(`${p}: xattr ${n} ${x.xattrs[n] ?? '(none)'} != ${y.xattrs[n] ?? '(none)'}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// A sample tree with every kind of node a layer can hold, for conversion tests.

/** Bytes of the large sample file: a few MiB, so content spans many EROFS blocks. */
export const SAMPLE_BIG_FILE_BYTES = 3 * 1024 * 1024 + 4321;
/** A raw security.capability value (v2, cap_net_raw in permitted+effective). */
export const SAMPLE_CAPABILITY_HEX = '0x0100000200200000000000000000000000000000';
/** A name that is not valid UTF-8 (latin1 "née"). */
export const SAMPLE_NON_UTF8_NAME: Buffer = Buffer.from([0x6e, 0xe9, 0x65]);

function sampleBytes(n: number, seed: string): Buffer {
  const out = Buffer.alloc(n);
  let block = createHash('sha256').update(seed).digest();
  for (let off = 0; off < n; off += block.length) {
    block.copy(out, off);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

function run(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * Writes the sample tree into `root` (created): regular files (empty, small, a few MiB), nested
 * directories, relative/absolute/dangling symlinks, a hard link pair, char and block devices, a fifo,
 * setuid/setgid/sticky modes, odd and large owners, long names and targets, a non-UTF-8 name, xattrs
 * (user.*, binary trusted.*, security.capability, on a directory and on a symlink, an empty value), and
 * distinct past mtimes everywhere.
 */
export async function writeSampleTree(root: string): Promise<void> {
  const p = (rel: string) => `${root}/${rel}`;
  for (const d of ['etc', 'bin', 'tmp', 'data/nested/deeper', 'dev', 'odd', `long/${'x'.repeat(120)}`]) {
    await mkdir(p(d), { recursive: true });
  }
  await writeFile(p('etc/config'), 'key=value\n');
  await chown(p('etc/config'), 1234, 5678);
  run('setfattr', ['-n', 'user.test', '-v', 'hello xattr', p('etc/config')]);
  run('setfattr', ['-n', 'trusted.foo', '-v', '0x00ff80c3', p('etc/config')]);
  run('setfattr', ['-n', 'user.dir', '-v', 'on a directory', p('etc')]);
  await writeFile(p('bin/suid'), '#!/bin/sh\necho suid\n');
  await chmod(p('bin/suid'), 0o4755);
  run('setfattr', ['-n', 'security.capability', '-v', SAMPLE_CAPABILITY_HEX, p('bin/suid')]);
  await writeFile(p('bin/sgid'), 'sgid\n');
  await chown(p('bin/sgid'), 0, 50);
  await chmod(p('bin/sgid'), 0o2711);
  await chmod(p('tmp'), 0o1777);
  await writeFile(p('data/empty'), '');
  run('setfattr', ['-n', 'user.empty', '-v', '""', p('data/empty')]);
  await writeFile(p('data/big.bin'), sampleBytes(SAMPLE_BIG_FILE_BYTES, 'sample'));
  await writeFile(p('data/nested/deeper/leaf.txt'), 'leaf\n');
  await link(p('data/nested/deeper/leaf.txt'), p('data/hardlink'));
  await symlink('nested/deeper/leaf.txt', p('data/rel-link'));
  await symlink('/etc/config', p('data/abs-link'));
  run('setfattr', ['-h', '-n', 'trusted.sym', '-v', '0x01', p('data/abs-link')]);
  await symlink('/nonexistent/target', p('data/dangling'));
  await symlink(`../${'t'.repeat(150)}`, p('data/long-target'));
  await writeFile(p('data/biguid'), 'owned by large ids\n');
  await chown(p('data/biguid'), 3000000, 4000000);
  await chmod(p('data/biguid'), 0o640);
  run('mknod', [p('dev/null-like'), 'c', '1', '3']);
  run('mknod', [p('dev/blk'), 'b', '7', '200']);
  run('mknod', [p('dev/fifo'), 'p']);
  await chmod(p('dev/fifo'), 0o620);
  await writeFile(Buffer.concat([Buffer.from(p('odd/')), SAMPLE_NON_UTF8_NAME]), 'latin1 name\n');
  await writeFile(p('odd/ünïcödé'), 'utf-8 name\n');
  await writeFile(p(`long/${'x'.repeat(120)}/${'y'.repeat(110)}`), 'long path\n');

  // Distinct past mtimes, children before parents (setting a child's does not touch the parent's).
  const all = execFileSync('find', [root, '-depth', '-print0']).toString('latin1').split('\0').filter(Boolean);
  let t = Date.UTC(2001, 0, 1) / 1000;
  for (const rel of all) {
    t += 86400 + 17;
    await lutimes(Buffer.from(rel, 'latin1'), t, t);
  }
}
