// Output of `ls` and `stat`: `ls -l`-style lines (type and permission string, links, owner, size or device
// numbers, UTC mtime, name, link target) with fixed-width columns so that recursive listings stream, the JSON
// shapes of entries and stat reports, and the mapping of a file's extents to the chunks of its layer.
import type { DataExtent, ErofsInode, FileType, LayeredView, ViewNode, Xattr } from '../erofs/index.js';
import { displayName } from '../erofs/index.js';

const TYPE_CHARS: Record<FileType, string> = { file: '-', dir: 'd', symlink: 'l', char: 'c', block: 'b', fifo: 'p', socket: 's' };
export const TYPE_NAMES: Record<FileType, string> = {
  file: 'regular file',
  dir: 'directory',
  symlink: 'symbolic link',
  char: 'character device',
  block: 'block device',
  fifo: 'fifo',
  socket: 'socket',
};
/** Largest |seconds| a JavaScript Date can show. */
const MAX_DATE_SECONDS = 8.64e12;

/** "drwxr-xr-x"-style mode string, with setuid/setgid/sticky as s/S and t/T. */
export function modeString(type: FileType, permissions: number): string {
  const bit = (mask: number, c: string) => (permissions & mask ? c : '-');
  const special = (exec: number, flag: number, on: string) => {
    const x = (permissions & exec) !== 0;
    if (permissions & flag) return x ? on : on.toUpperCase();
    return x ? 'x' : '-';
  };
  return (
    TYPE_CHARS[type] +
    bit(0o400, 'r') + bit(0o200, 'w') + special(0o100, 0o4000, 's') +
    bit(0o040, 'r') + bit(0o020, 'w') + special(0o010, 0o2000, 's') +
    bit(0o004, 'r') + bit(0o002, 'w') + special(0o001, 0o1000, 't')
  );
}

/** ISO 8601 UTC with nanoseconds; the raw number for times a Date cannot show. */
export function isoTime(seconds: number, nsec: number): string {
  if (!Number.isFinite(seconds) || Math.abs(seconds) > MAX_DATE_SECONDS) return `@${seconds}`;
  const base = new Date(seconds * 1000).toISOString().slice(0, 19);
  return `${base}.${String(Math.min(nsec, 999_999_999)).padStart(9, '0')}Z`;
}

/** "2023-05-06 07:08" (UTC), as ls -l shows it. */
export function shortTime(seconds: number): string {
  if (!Number.isFinite(seconds) || Math.abs(seconds) > MAX_DATE_SECONDS) return `@${seconds}`.padEnd(16);
  return new Date(seconds * 1000).toISOString().slice(0, 16).replace('T', ' ');
}

/** What `ls --json` and `stat --json` both say of an inode. */
export interface InodeJsonBase {
  path: string;
  type: FileType;
  /** Octal permission bits with setuid/setgid/sticky, e.g. "0755". */
  mode: string;
  permissions: string;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  mtime: string;
}

/** The fields of InodeJsonBase for `ino` at `path`. */
function inodeJsonBase(path: string, ino: ErofsInode): InodeJsonBase {
  return {
    path,
    type: ino.type,
    mode: octalMode(ino.permissions),
    permissions: modeString(ino.type, ino.permissions),
    uid: ino.uid,
    gid: ino.gid,
    size: ino.size,
    nlink: ino.nlink,
    mtime: isoTime(ino.mtime, ino.mtimeNsec),
  };
}

export interface EntryJson extends InodeJsonBase {
  name: string;
  target?: string;
  /** "major:minor" for devices. */
  rdev?: string;
  layer: number;
  nid: number;
}

export function octalMode(permissions: number): string {
  return `0${permissions.toString(8).padStart(3, '0')}`;
}

/** `layer` is the image's layer index (a raw one-layer view numbers its only layer 0). */
export async function entryJson(view: LayeredView, node: ViewNode, path: string, name: string, layer: number): Promise<EntryJson> {
  const ino = node.inode;
  const out: EntryJson = {
    ...inodeJsonBase(path, ino),
    name,
    layer,
    nid: ino.nid,
  };
  if (ino.type === 'symlink') out.target = displayName(await view.readlink(node));
  if (ino.rdev) out.rdev = `${ino.rdev.major}:${ino.rdev.minor}`;
  return out;
}

/** One `ls -l` line. */
export function longLine(e: EntryJson, mtimeSeconds: number, shownName: string): string {
  const sizeCol = e.rdev !== undefined ? e.rdev.replace(':', ', ') : String(e.size);
  const target = e.target !== undefined ? ` -> ${e.target}` : '';
  return `${e.permissions} ${String(e.nlink).padStart(3)} ${String(e.uid).padEnd(5)} ${String(e.gid).padEnd(5)} ${sizeCol.padStart(10)} ${shortTime(mtimeSeconds)} ${shownName}${target}`;
}

/** An xattr value as text when it is printable UTF-8, always as hex. */
export interface XattrJson {
  name: string;
  text?: string;
  hex: string;
}

export function xattrJson(x: Xattr): XattrJson {
  const text = x.value.toString('utf8');
  const printable = Buffer.from(text, 'utf8').equals(x.value) && /^[\x20-\x7e\u00a0-\uffff]*$/u.test(text);
  return { name: x.name, ...(printable ? { text } : {}), hex: x.value.toString('hex') };
}

export interface ExtentJson extends DataExtent {
  /** First and last chunk of the layer's raw image holding the extent's bytes (absent for holes). */
  chunks?: [number, number];
}

export interface StatJson extends InodeJsonBase {
  layer: { index: number; digest: string };
  nid: number;
  ino: number;
  inodeForm: 'compact' | 'extended';
  dataLayout: string;
  target?: string;
  rdev?: string;
  xattrs: XattrJson[];
  /** Where the inode itself sits. */
  inode: { offset: number; length: number; chunk: number };
  /** The layer's chunk size, when the layer is lazy. */
  chunkSize?: number;
  extents: ExtentJson[];
  /** Distinct chunks holding the inode and its data, sorted. */
  chunks: number[];
}

export interface StatInput {
  view: LayeredView;
  node: ViewNode;
  path: string;
  /** The image's index of the node's layer. */
  layerIndex: number;
  layerDigest: string;
  chunkSize: number;
  /** Extents listed at most (a fragmented huge file is summarized by its chunks). */
  maxExtents: number;
}

function chunkOf(offset: number, chunkSize: number): number {
  return Math.floor(offset / chunkSize);
}

export async function statJson(input: StatInput): Promise<StatJson & { extentsTruncated: boolean }> {
  const { view, node, chunkSize } = input;
  const ino: ErofsInode = node.inode;
  const chunks = new Set<number>();
  const metaLength = ino.metaEnd - ino.offset;
  for (let c = chunkOf(ino.offset, chunkSize); c <= chunkOf(ino.metaEnd - 1, chunkSize); c++) chunks.add(c);
  const extents: ExtentJson[] = [];
  let extentsTruncated = false;
  if (ino.type === 'file' || ino.type === 'dir' || ino.type === 'symlink') {
    for await (const e of view.extents(node)) {
      const x: ExtentJson = { ...e };
      if (e.physical !== undefined && e.physicalLength !== undefined && e.physicalLength > 0) {
        const first = chunkOf(e.physical, chunkSize);
        const last = chunkOf(e.physical + e.physicalLength - 1, chunkSize);
        x.chunks = [first, last];
        for (let c = first; c <= last; c++) chunks.add(c);
      }
      if (extents.length < input.maxExtents) extents.push(x);
      else extentsTruncated = true;
    }
  }
  const out: StatJson & { extentsTruncated: boolean } = {
    ...inodeJsonBase(input.path, ino),
    layer: { index: input.layerIndex, digest: input.layerDigest },
    nid: ino.nid,
    ino: ino.ino,
    inodeForm: ino.extended ? 'extended' : 'compact',
    dataLayout: ino.layoutName,
    xattrs: (await view.xattrs(node)).map(xattrJson),
    inode: { offset: ino.offset, length: metaLength, chunk: chunkOf(ino.offset, chunkSize) },
    chunkSize,
    extents,
    extentsTruncated,
    chunks: [...chunks].sort((a, b) => a - b),
  };
  if (ino.type === 'symlink') out.target = displayName(await view.readlink(node));
  if (ino.rdev) out.rdev = `${ino.rdev.major}:${ino.rdev.minor}`;
  return out;
}

/** Runs of consecutive chunk numbers, "3-7, 9, 12-13". */
export function chunkRuns(chunks: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < chunks.length; ) {
    let j = i;
    while (j + 1 < chunks.length && chunks[j + 1] === chunks[j]! + 1) j++;
    parts.push(i === j ? `${chunks[i]}` : `${chunks[i]}-${chunks[j]}`);
    i = j + 1;
  }
  return parts.join(', ');
}

export function statText(s: StatJson & { extentsTruncated: boolean }): string {
  const lines: string[] = [];
  lines.push(`  File: ${s.path}${s.target !== undefined ? ` -> ${s.target}` : ''}`);
  lines.push(`  Type: ${TYPE_NAMES[s.type]}${s.rdev !== undefined ? `, device ${s.rdev}` : ''}`);
  lines.push(`  Size: ${s.size}   Links: ${s.nlink}`);
  lines.push(`  Mode: ${s.mode} (${s.permissions})   Uid: ${s.uid}   Gid: ${s.gid}`);
  lines.push(`Modify: ${s.mtime}`);
  lines.push(` Inode: nid ${s.nid} (ino ${s.ino}), ${s.inodeForm}, data layout ${s.dataLayout}`);
  lines.push(` Layer: ${s.layer.index} ${s.layer.digest}`);
  for (const x of s.xattrs) lines.push(` Xattr: ${x.name}=${x.text !== undefined ? JSON.stringify(x.text) : `0x${x.hex}`}`);
  lines.push(`  Meta: ${s.inode.length} bytes at image offset ${s.inode.offset} (chunk ${s.inode.chunk})`);
  for (const e of s.extents) {
    const where = e.physical === undefined ? 'hole' : `${e.kind}${e.algorithm ? ` ${e.algorithm}` : ''} at image offset ${e.physical} (+${e.physicalLength})`;
    const chunks = e.chunks ? `, chunk${e.chunks[0] === e.chunks[1] ? ` ${e.chunks[0]}` : `s ${e.chunks[0]}-${e.chunks[1]}`}` : '';
    lines.push(`  Data: [${e.logical}, ${e.logical + e.length}) ${where}${chunks}`);
  }
  if (s.extentsTruncated) lines.push(`  Data: ... (more extents; see the chunk list)`);
  lines.push(`Chunks: ${chunkRuns(s.chunks)} of ${s.chunkSize}-byte chunks of layer ${s.layer.index}`);
  return `${lines.join('\n')}\n`;
}
