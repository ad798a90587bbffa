// Extraction of one layer tar into a staging directory that mkfs.erofs then turns into the layer's EROFS
// image. Every file kind, owner, mode (setuid/setgid/sticky included), mtime and xattr is reproduced; hard
// links are real links (mkfs.erofs then shares the inode). OCI whiteouts become their overlayfs form, so
// that stacking the per-layer images with overlayfs gives the image's view:
//   DIR/.wh.NAME        -> character device 0:0 at DIR/NAME
//   DIR/.wh..wh..opq    -> xattr trusted.overlay.opaque=y on DIR
//   DIR/.wh..wh.<other> -> ignored (aufs bookkeeping such as .wh..wh.plnk; counted in stats)
// A whiteout for a path that this same layer also creates does not hide that path (OCI: whiteouts only
// apply to lower layers); when that path is a directory it is made opaque instead, which is what
// "delete the lower directory, then create it" means once stacked.
//
// Safety: entry names are normalised ("./", leading "/"), and an entry whose path climbs out of the
// root, whose parent path goes through a symlink or a non-directory, or a hard link whose target escapes
// or does not exist, is rejected with LayerEntryError. Nothing is ever created through a symlink: parents
// are checked with lstat, files are opened O_EXCL|O_NOFOLLOW, devices are made under a temporary name in
// the staging root and renamed into place.
//
// Names are handled as bytes: a path is kept as a "binary string" (one char per byte, latin1), so names
// that are not valid UTF-8 survive. Raw pax records are read from tar-stream's pax parser (its own
// decoding is UTF-8 and would corrupt binary xattr values such as security.capability).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import type { Stats } from 'node:fs';
import { chmod, lchown, link, lstat, lutimes, mkdir, open, readdir, rename, rm, symlink, unlink } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import tarStream from 'tar-stream';
import type { Header as TarHeader } from 'tar-stream';

// ---------------------------------------------------------------------------------------------------
// Defaults and constants

/** Metadata of directories that the tar does not list but that must exist as parents. */
export const DEFAULT_IMPLICIT_DIR_MODE = 0o755;
export const DEFAULT_IMPLICIT_DIR_UID = 0;
export const DEFAULT_IMPLICIT_DIR_GID = 0;
/** Fixed (not "now") so that the image is reproducible. */
export const DEFAULT_IMPLICIT_DIR_MTIME = 0;
/** Mode of whiteout devices (as Docker's and containerd's overlay appliers make them). */
export const WHITEOUT_MODE = 0;
export const WHITEOUT_PREFIX = '.wh.';
export const WHITEOUT_META_PREFIX = '.wh..wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';
export const OPAQUE_XATTR = 'trusted.overlay.opaque';
export const OPAQUE_XATTR_VALUE: Buffer = Buffer.from('y');
/** xattrs under this prefix in a tar are dropped: they would steer overlayfs (redirect, metacopy, ...). */
export const OVERLAY_XATTR_PREFIX = 'trusted.overlay.';
/** pax keys carrying xattrs: raw value, and libarchive's percent-encoded name with a base64 value. */
export const PAX_XATTR_SCHILY = 'SCHILY.xattr.';
export const PAX_XATTR_LIBARCHIVE = 'LIBARCHIVE.xattr.';
export const PAX_GNU_SPARSE_PREFIX = 'GNU.sparse.';
/** xattr namespaces a Linux filesystem accepts from us; anything else is dropped (and counted). */
const XATTR_NAMESPACES: readonly string[] = ['user.', 'trusted.', 'security.'];
const XATTR_SYSTEM_NAMES: ReadonlySet<string> = new Set(['system.posix_acl_access', 'system.posix_acl_default']);
/** File contents are written in pieces of about this size (memory stays bounded). */
const WRITE_BUFFER_BYTES = 1 << 20;
/** Permission bits of a tar mode field that are applied (rwx for all, setuid, setgid, sticky). */
const MODE_MASK = 0o7777;
/** Mode new nodes get until their own is applied (after chown, which would clear setuid bits). */
const CREATE_MODE = 0o600;
const CREATE_DIR_MODE = 0o700;
/** Name prefix for device nodes made in the staging root before being renamed into place. */
const TEMP_NODE_PREFIX = '.erofs-lazy-node-';
/** Bytes of command stderr kept for error messages. */
const STDERR_TAIL_BYTES = 2000;

// ---------------------------------------------------------------------------------------------------
// Public types

export interface DirMetadata {
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch (may be fractional). */
  mtime: number;
}

export interface ExtractOptions {
  /** Named in every error. */
  layerDigest?: string;
  /**
   * Metadata for a directory that the tar does not list but that an entry needs as a parent (path is
   * relative to the root, "" for the root itself, as a binary string; see `pathFromBinary`). With
   * overlayfs such a directory shadows the lower layers' attributes of the same directory, so a caller
   * that knows them (from lower layers) can pass them here. Defaults: DEFAULT_IMPLICIT_DIR_*.
   */
  implicitDirMetadata?: (relPath: string) => DirMetadata | undefined;
}

export interface ExtractStats {
  /** Tar entries read (pax and GNU long-name headers not counted). */
  entries: number;
  regularFiles: number;
  directories: number;
  symlinks: number;
  hardLinks: number;
  charDevices: number;
  blockDevices: number;
  fifos: number;
  /** `.wh.NAME` entries turned into character devices 0:0. */
  whiteouts: number;
  /** `.wh.NAME` entries not made because this layer itself has NAME (see the module header). */
  whiteoutsShadowed: number;
  /** Directories carrying trusted.overlay.opaque=y. */
  opaqueDirs: number;
  /** `.wh..wh.*` entries other than the opaque marker, ignored. */
  ignoredWhiteoutMeta: number;
  /** Parent directories created without an entry of their own. */
  implicitDirs: number;
  /** Bytes of regular file content written. */
  contentBytes: number;
  /** xattrs set (the opaque markers included). */
  xattrs: number;
  /** xattrs dropped: trusted.overlay.*, user.* on a node other than a file or directory, unknown namespaces. */
  droppedXattrs: number;
  /** Largest mtime set on any node, seconds. */
  maxMtime: number;
}

/** Extraction failed for the layer as a whole (corrupt stream, tool failure). */
export class LayerExtractError extends Error {
  override name = 'LayerExtractError';
  constructor(
    message: string,
    readonly layerDigest?: string,
    options?: { cause?: unknown },
  ) {
    super(`${layerDigest ? `layer ${layerDigest}: ` : ''}${message}`, options);
  }
}

/** One entry is unsafe or cannot be represented. */
export class LayerEntryError extends LayerExtractError {
  override name = 'LayerEntryError';
  constructor(
    /** The entry's name as in the tar, made printable. */
    readonly entryPath: string,
    readonly reason: string,
    layerDigest?: string,
    options?: { cause?: unknown },
  ) {
    super(`tar entry ${JSON.stringify(entryPath)}: ${reason}`, layerDigest, options);
  }
}

/** A binary path string (one char per byte) as text for messages and for UTF-8 names. */
export function pathFromBinary(p: string): string {
  return Buffer.from(p, 'latin1').toString('utf8');
}

// ---------------------------------------------------------------------------------------------------
// Path normalisation

type Normalised = { ok: true; path: string } | { ok: false; reason: string };

/**
 * Normalises a tar name (binary string) to a root-relative path without "." or ".." components or
 * slashes at either end; "" is the root. ".." is resolved lexically and may not climb above the root.
 */
export function normaliseEntryPath(name: string): Normalised {
  if (name.includes('\0')) return { ok: false, reason: 'name contains a NUL byte' };
  const out: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length === 0) return { ok: false, reason: 'path escapes the layer root ("..")' };
      out.pop();
      continue;
    }
    out.push(part);
  }
  return { ok: true, path: out.join('/') };
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}

function baseOf(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1);
}

function joinRel(dir: string, name: string): string {
  return dir === '' ? name : `${dir}/${name}`;
}

function isSameOrUnder(p: string, dir: string): boolean {
  return dir === '' || p === dir || p.startsWith(`${dir}/`);
}

// ---------------------------------------------------------------------------------------------------
// Raw pax records

type PaxRecords = Map<string, Buffer>;

/** Parses pax extended header data ("LEN KEY=VALUE\n" records) keeping values as bytes. */
export function parsePaxRecords(buf: Buffer): PaxRecords {
  const out: PaxRecords = new Map();
  let pos = 0;
  while (pos < buf.length) {
    const space = buf.indexOf(0x20, pos);
    if (space < 0) break;
    const len = Number.parseInt(buf.toString('latin1', pos, space), 10);
    if (!Number.isSafeInteger(len) || len <= 0 || pos + len > buf.length) break;
    const record = buf.subarray(space + 1, pos + len - 1); // without the trailing newline
    const eq = record.indexOf(0x3d);
    if (eq >= 0) out.set(record.toString('latin1', 0, eq), Buffer.from(record.subarray(eq + 1)));
    pos += len;
  }
  return out;
}

/** The slice of tar-stream's Extract internals used to see pax header bytes before they are decoded. */
interface ExtractInternals {
  _decodeLongHeader?: (buf: Buffer) => void;
  _header?: { type?: string | null } | null;
}

// ---------------------------------------------------------------------------------------------------
// Helpers

type EntryMeta = { mode: number; uid: number; gid: number; mtime: number };

function toBuf(value: string | Uint8Array): Buffer {
  return typeof value === 'string' ? Buffer.from(value) : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

async function lstatOrUndefined(p: Buffer): Promise<Stats | undefined> {
  try {
    return await lstat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

async function drain(stream: AsyncIterable<unknown>): Promise<void> {
  for await (const _chunk of stream) {
    // discard
  }
}

function run(cmd: string, args: string[], input?: Buffer): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: [input ? 'pipe' : 'ignore', 'ignore', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    let stderr = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      stderr = (stderr + d).slice(-STDERR_TAIL_BYTES);
    });
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stderr }));
    if (input) {
      child.stdin!.on('error', () => undefined); // a failing tool may close stdin early; its exit code tells
      child.stdin!.end(input);
    }
  });
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

/** Escapes bytes for setfattr --restore: everything outside printable ASCII, and "\" and "=", as \ooo. */
function quoteForSetfattr(bytes: Buffer): string {
  let s = '';
  for (const b of bytes) {
    if (b <= 0x20 || b >= 0x7f || b === 0x5c || b === 0x3d) s += `\\${b.toString(8).padStart(3, '0')}`;
    else s += String.fromCharCode(b);
  }
  return s;
}

function percentDecode(s: string): string {
  return s.replace(/%([0-9a-fA-F]{2})/g, (_m, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));
}

function parseNumber(value: Buffer | undefined): number | undefined {
  if (!value) return undefined;
  const text = value.toString('latin1').trim();
  if (!/^-?[0-9]+(\.[0-9]+)?$/.test(text)) return undefined;
  const n = Number(text);
  return Number.isFinite(n) ? n : undefined;
}

// ---------------------------------------------------------------------------------------------------
// The extractor

class LayerExtractor {
  readonly stats: ExtractStats = {
    entries: 0,
    regularFiles: 0,
    directories: 0,
    symlinks: 0,
    hardLinks: 0,
    charDevices: 0,
    blockDevices: 0,
    fifos: 0,
    whiteouts: 0,
    whiteoutsShadowed: 0,
    opaqueDirs: 0,
    ignoredWhiteoutMeta: 0,
    implicitDirs: 0,
    contentBytes: 0,
    xattrs: 0,
    droppedXattrs: 0,
    maxMtime: Number.NEGATIVE_INFINITY,
  };
  private readonly rootBuf: Buffer;
  /**
   * Paths known to be real directories made (or checked) by us, reached through real directories only.
   * Removing a directory removes it and everything under it from here, so membership is what makes a
   * path safe to touch by name at the end (no symlink anywhere on the way).
   */
  private readonly knownDirs = new Set<string>(['']);
  /** Directory mtimes, applied last (creating children changes them). */
  private readonly dirMtimes = new Map<string, number>();
  /** xattrs not yet applied, per path (binary strings for path and name). */
  private pendingXattrs = new Map<string, Map<string, Buffer>>();
  /** Whiteout devices this layer made. */
  private readonly whiteoutNodes = new Set<string>();
  /** Paths named by a `.wh.` entry (resolved at the end: a directory there becomes opaque). */
  private readonly whiteoutTargets = new Set<string>();
  private readonly opaqueDirs = new Set<string>();
  /** The entry being handled, for messages. */
  private currentName = '';

  constructor(
    root: string,
    private readonly opts: ExtractOptions,
  ) {
    this.rootBuf = Buffer.from(root);
  }

  private abs(rel: string): Buffer {
    return rel === '' ? this.rootBuf : Buffer.concat([this.rootBuf, Buffer.from(`/${rel}`, 'latin1')]);
  }

  private entryError(reason: string, cause?: unknown): LayerEntryError {
    return new LayerEntryError(pathFromBinary(this.currentName), reason, this.opts.layerDigest, cause ? { cause } : undefined);
  }

  /** Runs a filesystem step, turning its failure into a LayerEntryError naming the entry. */
  private async fsStep<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof LayerExtractError) throw err;
      throw this.entryError(`${what}: ${(err as Error).message}`, err);
    }
  }

  private noteMtime(mtime: number): void {
    if (mtime > this.stats.maxMtime) this.stats.maxMtime = mtime;
  }

  async prepareRoot(): Promise<void> {
    await mkdir(this.rootBuf, { recursive: true });
    const st = await lstat(this.rootBuf);
    if (!st.isDirectory()) throw new LayerExtractError(`staging path ${this.rootBuf.toString()} is not a directory`, this.opts.layerDigest);
    if ((await readdir(this.rootBuf)).length > 0) {
      throw new LayerExtractError(`staging directory ${this.rootBuf.toString()} is not empty`, this.opts.layerDigest);
    }
    const meta = this.implicitMeta('');
    await lchown(this.rootBuf, meta.uid, meta.gid);
    await chmod(this.rootBuf, meta.mode & MODE_MASK);
    this.dirMtimes.set('', meta.mtime);
    this.noteMtime(meta.mtime);
  }

  private implicitMeta(rel: string): DirMetadata {
    return (
      this.opts.implicitDirMetadata?.(rel) ?? {
        mode: DEFAULT_IMPLICIT_DIR_MODE,
        uid: DEFAULT_IMPLICIT_DIR_UID,
        gid: DEFAULT_IMPLICIT_DIR_GID,
        mtime: DEFAULT_IMPLICIT_DIR_MTIME,
      }
    );
  }

  /**
   * Makes sure every parent of `rel` is a real directory, creating missing ones (implicit directories).
   * A parent that is a symlink or another non-directory is an error, except a whiteout device made by
   * this layer, which a directory replaces.
   */
  private async ensureParents(rel: string): Promise<void> {
    const parts = rel.split('/');
    let p = '';
    for (let i = 0; i < parts.length - 1; i++) {
      p = joinRel(p, parts[i]!);
      if (this.knownDirs.has(p)) continue;
      const st = await this.fsStep('checking a parent', () => lstatOrUndefined(this.abs(p)));
      if (st?.isDirectory()) {
        this.knownDirs.add(p);
        continue;
      }
      if (st?.isSymbolicLink()) throw this.entryError(`parent ${JSON.stringify(pathFromBinary(p))} is a symlink`);
      if (st && !this.whiteoutNodes.has(p)) throw this.entryError(`parent ${JSON.stringify(pathFromBinary(p))} is not a directory`);
      if (st) await this.removeNonDir(p);
      const meta = this.implicitMeta(p);
      await this.fsStep('creating a parent directory', async () => {
        await mkdir(this.abs(p), CREATE_DIR_MODE);
        await lchown(this.abs(p), meta.uid, meta.gid);
        await chmod(this.abs(p), meta.mode & MODE_MASK);
      });
      this.knownDirs.add(p);
      this.dirMtimes.set(p, meta.mtime);
      this.noteMtime(meta.mtime);
      this.stats.implicitDirs++;
    }
  }

  /**
   * Before a path (and, for a directory, everything under it) goes away: apply pending xattrs (they may
   * belong to an inode that lives on through a hard link), then forget the path's bookkeeping. Whiteout
   * targets and opaque markers are kept: they speak about the lower layers' paths, whatever this layer
   * does with the same names later.
   */
  private async forget(rel: string, subtree: boolean): Promise<void> {
    if (!subtree) {
      if (this.pendingXattrs.has(rel)) await this.flushXattrs();
      this.knownDirs.delete(rel);
      this.whiteoutNodes.delete(rel);
      this.dirMtimes.delete(rel);
      return;
    }
    const hit = (p: string) => p !== '' && isSameOrUnder(p, rel);
    if ([...this.pendingXattrs.keys()].some(hit)) await this.flushXattrs();
    for (const set of [this.knownDirs, this.whiteoutNodes]) {
      for (const p of [...set]) if (hit(p)) set.delete(p);
    }
    for (const p of [...this.dirMtimes.keys()]) if (hit(p)) this.dirMtimes.delete(p);
  }

  private async removeNonDir(rel: string): Promise<void> {
    await this.forget(rel, false);
    await this.fsStep('removing the previous entry', () => unlink(this.abs(rel)));
  }

  /**
   * Clears the way for a new entry at `rel` (tar semantics: the later entry wins). A directory stays when
   * the new entry is a directory too. Returns whether a directory is already there.
   */
  private async clearPath(rel: string, newIsDir: boolean): Promise<boolean> {
    const st = await this.fsStep('checking the path', () => lstatOrUndefined(this.abs(rel)));
    if (!st) return false;
    if (st.isDirectory()) {
      if (newIsDir) return true;
      await this.forget(rel, true);
      await this.fsStep('removing the previous directory', () => rm(this.abs(rel), { recursive: true, force: true }));
      return false;
    }
    await this.removeNonDir(rel);
    return false;
  }

  private collectXattrs(pax: PaxRecords, kind: 'file' | 'dir' | 'other'): Map<string, Buffer> {
    const out = new Map<string, Buffer>();
    const add = (name: string, value: Buffer) => {
      const nsOk = XATTR_NAMESPACES.some((ns) => name.startsWith(ns) && name.length > ns.length) || XATTR_SYSTEM_NAMES.has(name);
      if (!nsOk || name.startsWith(OVERLAY_XATTR_PREFIX) || (name.startsWith('user.') && kind === 'other')) {
        this.stats.droppedXattrs++;
        return;
      }
      out.set(name, value);
    };
    for (const [key, value] of pax) {
      if (key.startsWith(PAX_XATTR_SCHILY)) add(key.slice(PAX_XATTR_SCHILY.length), value);
    }
    for (const [key, value] of pax) {
      if (key.startsWith(PAX_XATTR_LIBARCHIVE)) {
        add(percentDecode(key.slice(PAX_XATTR_LIBARCHIVE.length)), Buffer.from(value.toString('latin1'), 'base64'));
      }
    }
    return out;
  }

  private setPendingXattrs(rel: string, xattrs: Map<string, Buffer>): void {
    if (xattrs.size > 0) this.pendingXattrs.set(rel, xattrs);
    else this.pendingXattrs.delete(rel);
  }

  /** Applies pending xattrs with one setfattr process (binary-safe through --restore). */
  async flushXattrs(): Promise<void> {
    if (this.pendingXattrs.size === 0) return;
    const pending = this.pendingXattrs;
    this.pendingXattrs = new Map();
    const lines: string[] = [];
    let count = 0;
    for (const [rel, attrs] of pending) {
      lines.push(`# file: ${quoteForSetfattr(this.abs(rel))}`);
      for (const [name, value] of attrs) {
        lines.push(`${quoteForSetfattr(Buffer.from(name, 'latin1'))}=${value.length > 0 ? `0x${value.toString('hex')}` : ''}`);
        count++;
      }
      lines.push('');
    }
    const res = await run('setfattr', ['-h', '--restore=-'], Buffer.from(`${lines.join('\n')}\n`, 'latin1'));
    if (res.code !== 0) {
      throw new LayerExtractError(`setting xattrs failed (setfattr exit ${res.code}): ${oneLine(res.stderr)}`, this.opts.layerDigest);
    }
    this.stats.xattrs += count;
  }

  /** Makes a device node or fifo at `rel` (which must be free) via mknod(1) and a rename. */
  private async makeNode(rel: string, kind: 'c' | 'b' | 'p', major: number, minor: number): Promise<void> {
    const temp = `${TEMP_NODE_PREFIX}${randomBytes(8).toString('hex')}`;
    const args = ['-m', CREATE_MODE.toString(8), this.abs(temp).toString(), kind];
    if (kind !== 'p') {
      if (!Number.isSafeInteger(major) || !Number.isSafeInteger(minor) || major < 0 || minor < 0) {
        throw this.entryError(`invalid device numbers ${major}:${minor}`);
      }
      args.push(String(major), String(minor));
    }
    const res = await run('mknod', args);
    if (res.code !== 0) throw this.entryError(`mknod failed (exit ${res.code}): ${oneLine(res.stderr)}`);
    try {
      await rename(this.abs(temp), this.abs(rel));
    } catch (err) {
      await rm(this.abs(temp), { force: true });
      throw this.entryError(`renaming the new node into place: ${(err as Error).message}`, err);
    }
  }

  private async applyMeta(rel: string, meta: EntryMeta, opts: { chmod: boolean; mtime: boolean }): Promise<void> {
    const p = this.abs(rel);
    await this.fsStep('setting owner and mode', async () => {
      await lchown(p, meta.uid, meta.gid);
      if (opts.chmod) await chmod(p, meta.mode); // after chown, which clears setuid/setgid
      if (opts.mtime) await lutimes(p, meta.mtime, meta.mtime);
    });
    this.noteMtime(meta.mtime);
  }

  async handleEntry(header: TarHeader, pax: PaxRecords, stream: AsyncIterable<Uint8Array>): Promise<void> {
    this.stats.entries++;
    const name = pax.get('path')?.toString('latin1') ?? header.name;
    this.currentName = name;
    for (const key of pax.keys()) {
      if (key.startsWith(PAX_GNU_SPARSE_PREFIX)) throw this.entryError('GNU sparse files are not supported');
    }
    const norm = normaliseEntryPath(name);
    if (!norm.ok) throw this.entryError(norm.reason);
    const rel = norm.path;
    const meta: EntryMeta = {
      mode: (header.mode ?? 0) & MODE_MASK,
      uid: parseNumber(pax.get('uid')) ?? header.uid ?? 0,
      gid: parseNumber(pax.get('gid')) ?? header.gid ?? 0,
      mtime: parseNumber(pax.get('mtime')) ?? (header.mtime ? header.mtime.getTime() / 1000 : 0),
    };
    if (!Number.isSafeInteger(meta.uid) || meta.uid < 0 || !Number.isSafeInteger(meta.gid) || meta.gid < 0) {
      throw this.entryError(`invalid owner ${meta.uid}:${meta.gid}`);
    }
    const base = baseOf(rel);
    if (rel !== '' && base.startsWith(WHITEOUT_PREFIX)) {
      await drain(stream);
      await this.handleWhiteout(rel, meta);
      return;
    }
    const type = header.type;
    switch (type) {
      case 'file':
      case 'contiguous-file':
        await this.handleFile(rel, meta, pax, stream);
        return;
      case 'directory':
        await drain(stream);
        await this.handleDirectory(rel, meta, pax);
        return;
      case 'symlink':
        await drain(stream);
        await this.handleSymlink(rel, meta, pax, pax.get('linkpath')?.toString('latin1') ?? header.linkname ?? '');
        return;
      case 'link':
        await drain(stream);
        await this.handleHardLink(rel, pax, pax.get('linkpath')?.toString('latin1') ?? header.linkname ?? '');
        return;
      case 'character-device':
      case 'block-device':
      case 'fifo':
        await drain(stream);
        await this.handleNode(rel, meta, pax, type, header);
        return;
      default:
        throw this.entryError(`unsupported tar entry type ${type === null || type === undefined ? '(unknown typeflag)' : type}`);
    }
  }

  private requireNotRoot(rel: string, what: string): void {
    if (rel === '') throw this.entryError(`a ${what} cannot be the layer root`);
  }

  private async handleFile(rel: string, meta: EntryMeta, pax: PaxRecords, stream: AsyncIterable<Uint8Array>): Promise<void> {
    this.requireNotRoot(rel, 'regular file');
    await this.ensureParents(rel);
    await this.clearPath(rel, false);
    const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;
    const fh = await this.fsStep('creating the file', () => open(this.abs(rel), flags, CREATE_MODE));
    try {
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      const flush = async () => {
        if (pendingBytes === 0) return;
        const data = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
        pending = [];
        pendingBytes = 0;
        await fh.write(data, 0, data.length, null);
      };
      for await (const chunk of stream) {
        const b = toBuf(chunk);
        pending.push(b);
        pendingBytes += b.length;
        this.stats.contentBytes += b.length;
        if (pendingBytes >= WRITE_BUFFER_BYTES) await this.fsStep('writing the file', flush);
      }
      await this.fsStep('writing the file', flush);
      await this.fsStep('setting owner, mode and mtime', async () => {
        await fh.chown(meta.uid, meta.gid);
        await fh.chmod(meta.mode); // after chown, which clears setuid/setgid
        await fh.utimes(meta.mtime, meta.mtime);
      });
    } finally {
      await fh.close();
    }
    this.noteMtime(meta.mtime);
    this.setPendingXattrs(rel, this.collectXattrs(pax, 'file'));
    this.stats.regularFiles++;
  }

  private async handleDirectory(rel: string, meta: EntryMeta, pax: PaxRecords): Promise<void> {
    await this.ensureParents(rel);
    if (rel !== '') {
      const exists = await this.clearPath(rel, true);
      if (!exists) await this.fsStep('creating the directory', () => mkdir(this.abs(rel), CREATE_DIR_MODE));
      this.knownDirs.add(rel);
    }
    await this.applyMeta(rel, meta, { chmod: true, mtime: false });
    this.dirMtimes.set(rel, meta.mtime);
    this.setPendingXattrs(rel, this.collectXattrs(pax, 'dir'));
    this.stats.directories++;
  }

  private async handleSymlink(rel: string, meta: EntryMeta, pax: PaxRecords, target: string): Promise<void> {
    this.requireNotRoot(rel, 'symlink');
    if (target === '') throw this.entryError('symlink with an empty target');
    await this.ensureParents(rel);
    await this.clearPath(rel, false);
    await this.fsStep('creating the symlink', () => symlink(Buffer.from(target, 'latin1'), this.abs(rel)));
    await this.applyMeta(rel, meta, { chmod: false, mtime: true });
    this.setPendingXattrs(rel, this.collectXattrs(pax, 'other'));
    this.stats.symlinks++;
  }

  private async handleHardLink(rel: string, pax: PaxRecords, linkname: string): Promise<void> {
    this.requireNotRoot(rel, 'hard link');
    const norm = normaliseEntryPath(linkname);
    const shown = JSON.stringify(pathFromBinary(linkname));
    if (!norm.ok) throw this.entryError(`hard link target ${shown}: ${norm.reason}`);
    const target = norm.path;
    if (target === '') throw this.entryError('hard link to the layer root');
    // The target must be in this layer's tree, reached through real directories only.
    let p = '';
    const parts = target.split('/');
    for (let i = 0; i < parts.length - 1; i++) {
      p = joinRel(p, parts[i]!);
      if (this.knownDirs.has(p)) continue;
      const st = await this.fsStep('checking the hard link target', () => lstatOrUndefined(this.abs(p)));
      if (!st?.isDirectory()) throw this.entryError(`hard link target ${shown} does not exist in the layer`);
    }
    const st = await this.fsStep('checking the hard link target', () => lstatOrUndefined(this.abs(target)));
    if (!st) throw this.entryError(`hard link target ${shown} does not exist in the layer`);
    if (st.isDirectory()) throw this.entryError(`hard link target ${shown} is a directory`);
    if (target === rel) return; // a link to itself: already there
    await this.ensureParents(rel);
    await this.clearPath(rel, false);
    await this.fsStep('creating the hard link', () => link(this.abs(target), this.abs(rel)));
    if (this.whiteoutNodes.has(target)) this.whiteoutNodes.add(rel);
    // Some writers repeat the inode's xattrs on link entries; they land on the shared inode.
    this.setPendingXattrs(rel, this.collectXattrs(pax, st.isFile() ? 'file' : 'other'));
    this.stats.hardLinks++;
  }

  private async handleNode(
    rel: string,
    meta: EntryMeta,
    pax: PaxRecords,
    type: 'character-device' | 'block-device' | 'fifo',
    header: TarHeader,
  ): Promise<void> {
    this.requireNotRoot(rel, type);
    await this.ensureParents(rel);
    await this.clearPath(rel, false);
    const major = parseNumber(pax.get('SCHILY.devmajor')) ?? header.devmajor ?? 0;
    const minor = parseNumber(pax.get('SCHILY.devminor')) ?? header.devminor ?? 0;
    await this.makeNode(rel, type === 'character-device' ? 'c' : type === 'block-device' ? 'b' : 'p', major, minor);
    await this.applyMeta(rel, meta, { chmod: true, mtime: true });
    this.setPendingXattrs(rel, this.collectXattrs(pax, 'other'));
    if (type === 'character-device') this.stats.charDevices++;
    else if (type === 'block-device') this.stats.blockDevices++;
    else this.stats.fifos++;
  }

  private async handleWhiteout(rel: string, meta: EntryMeta): Promise<void> {
    const dir = parentOf(rel);
    const base = baseOf(rel);
    if (base === OPAQUE_MARKER) {
      await this.ensureParents(joinRel(dir, 'x'));
      this.opaqueDirs.add(dir);
      return;
    }
    if (base.startsWith(WHITEOUT_META_PREFIX)) {
      this.stats.ignoredWhiteoutMeta++;
      return;
    }
    const hidden = base.slice(WHITEOUT_PREFIX.length);
    if (hidden === '' || hidden === '.' || hidden === '..') throw this.entryError('invalid whiteout name');
    const target = joinRel(dir, hidden);
    this.whiteoutTargets.add(target);
    await this.ensureParents(target);
    const st = await this.fsStep('checking the whiteout target', () => lstatOrUndefined(this.abs(target)));
    if (st) {
      // This layer has the path itself: the whiteout only concerns lower layers (resolved in finish()).
      if (!this.whiteoutNodes.has(target)) this.stats.whiteoutsShadowed++;
      return;
    }
    await this.makeNode(target, 'c', 0, 0);
    await this.applyMeta(target, { ...meta, mode: WHITEOUT_MODE }, { chmod: true, mtime: true });
    this.whiteoutNodes.add(target);
    this.stats.whiteouts++;
  }

  /** Opaque markers, pending xattrs, then directory mtimes (deepest first). */
  async finish(): Promise<ExtractStats> {
    this.currentName = '';
    for (const target of this.whiteoutTargets) {
      // A directory of this layer must not merge with the lower one the whiteout deletes; a non-directory
      // hides the lower path anyway.
      if (this.knownDirs.has(target)) this.opaqueDirs.add(target);
    }
    for (const dir of this.opaqueDirs) {
      // Only directories still in place (a marker whose directory was replaced by a symlink or a file
      // must not reach through it).
      if (!this.knownDirs.has(dir)) continue;
      const attrs = this.pendingXattrs.get(dir) ?? new Map<string, Buffer>();
      attrs.set(OPAQUE_XATTR, OPAQUE_XATTR_VALUE);
      this.pendingXattrs.set(dir, attrs);
      this.stats.opaqueDirs++;
    }
    await this.flushXattrs();
    const dirs = [...this.dirMtimes.entries()].sort((a, b) => depth(b[0]) - depth(a[0]));
    for (const [rel, mtime] of dirs) {
      if (!this.knownDirs.has(rel)) continue;
      try {
        await lutimes(this.abs(rel), mtime, mtime);
      } catch (err) {
        throw new LayerExtractError(`setting the mtime of ${JSON.stringify(pathFromBinary(rel) || '/')}: ${(err as Error).message}`, this.opts.layerDigest, { cause: err });
      }
    }
    if (this.stats.maxMtime === Number.NEGATIVE_INFINITY) this.stats.maxMtime = 0;
    return this.stats;
  }
}

function depth(rel: string): number {
  if (rel === '') return 0;
  let n = 1;
  for (let i = 0; i < rel.length; i++) if (rel.charCodeAt(i) === 0x2f) n++;
  return n;
}

// ---------------------------------------------------------------------------------------------------
// Entry point

/**
 * Extracts a tar byte stream (already decompressed) into `stagingDir`, which must be missing or empty.
 * Resolves with counts once every entry, xattr and directory mtime is in place. On failure the staging
 * directory is left as it is (the caller removes it).
 */
export async function extractLayerTar(tar: Readable | AsyncIterable<Uint8Array>, stagingDir: string, opts: ExtractOptions = {}): Promise<ExtractStats> {
  const extractor = new LayerExtractor(stagingDir, opts);
  await extractor.prepareRoot();

  // filenameEncoding is an option of tar-stream's parser that its typings do not list.
  const ex = tarStream.extract({ filenameEncoding: 'latin1' } as Parameters<typeof tarStream.extract>[0]);
  // See raw pax bytes: tar-stream decodes pax values as UTF-8, which corrupts binary xattr values.
  const internals = ex as unknown as ExtractInternals;
  const decodeLongHeader = internals._decodeLongHeader;
  if (typeof decodeLongHeader !== 'function') {
    throw new LayerExtractError('tar-stream internals changed (no _decodeLongHeader): cannot read pax records', opts.layerDigest);
  }
  let globalPax: PaxRecords = new Map();
  let localPax: PaxRecords | undefined;
  internals._decodeLongHeader = (buf: Buffer) => {
    const type = internals._header?.type;
    if (type === 'pax-header') localPax = parsePaxRecords(buf);
    else if (type === 'pax-global-header') globalPax = new Map([...globalPax, ...parsePaxRecords(buf)]);
    decodeLongHeader.call(ex, buf);
  };
  const paxOf = new WeakMap<object, PaxRecords>();
  ex.on('entry', (header: TarHeader) => {
    paxOf.set(header, localPax ? new Map([...globalPax, ...localPax]) : globalPax);
    localPax = undefined;
  });

  // Feed the parser with backpressure; stop when it is destroyed (an entry failed).
  let feedError: unknown;
  let aborted = false;
  // The parser's own error ("Unexpected end of data", ...) says more than an entry stream's "destroyed".
  let parseError: unknown;
  ex.on('error', (err: Error) => {
    if (!aborted) parseError ??= err;
  });
  const closed = new Promise<void>((resolve) => ex.once('close', () => resolve()));
  const feeding = (async () => {
    try {
      for await (const chunk of tar as AsyncIterable<Uint8Array>) {
        if (ex.destroyed) break;
        if (!ex.write(toBuf(chunk))) {
          await Promise.race([new Promise<void>((resolve) => ex.once('drain', () => resolve())), closed]);
        }
      }
      if (!ex.destroyed) ex.end(null);
    } catch (err) {
      if (!aborted) feedError = err;
      ex.destroy(err as Error);
    } finally {
      destroyTar();
    }
  })();
  function destroyTar(): void {
    if ('destroy' in tar && typeof tar.destroy === 'function' && !tar.destroyed) tar.destroy();
  }

  try {
    for await (const entry of ex) {
      const pax = paxOf.get(entry.header) ?? globalPax;
      // streamx Readables are async iterables; their typings do not say so.
      const data = entry as unknown as AsyncIterable<Uint8Array>;
      await extractor.handleEntry(entry.header, pax, data);
      await drain(data);
    }
  } catch (err) {
    aborted = true;
    ex.destroy(null);
    destroyTar();
    await feeding;
    if (err instanceof LayerExtractError) throw err;
    const cause = feedError ?? parseError ?? err;
    throw new LayerExtractError(`reading the layer tar failed: ${(cause as Error).message ?? String(cause)}`, opts.layerDigest, { cause });
  }
  await feeding;
  if (feedError) {
    throw new LayerExtractError(`reading the layer tar failed: ${(feedError as Error).message}`, opts.layerDigest, { cause: feedError });
  }
  return extractor.finish();
}
