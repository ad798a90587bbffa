// The FUSE filesystem of erofs-lazy: a read-only root directory holding one regular file per layer (the
// raw EROFS image, served by a LayerFileSource), for the kernel to loop-mount. The data never changes,
// so the mount asks the kernel to keep file pages cached across opens and to cache attributes and
// lookups for a long time; reads are answered asynchronously and never serialized here.
import { mkdir, stat, statfs, writeFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { LayerFileSource } from '../reader/types.js';
import type { FuseOperations, FuseStat, FuseStatfs } from './native.js';
import { NativeFuse } from './native.js';
import type { UnmountOptions } from './unmount.js';
import { forceUnmountFuse, isFuseType, mountDeviceAt, mountTypesAt, unmountFuse } from './unmount.js';
import { errorMessage } from '../util/errors.js';

const E = osConstants.errno;
const ENOENT = -E.ENOENT;
const ENOTDIR = -E.ENOTDIR;
const EROFS = -E.EROFS;
const EIO = -E.EIO;

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
/** Root directory mode: readable and searchable by everyone, never writable. */
const ROOT_MODE = S_IFDIR | 0o555;
/** Layer file mode: readable by everyone, never writable. */
const FILE_MODE = S_IFREG | 0o444;
const OWNER_UID = 0;
const OWNER_GID = 0;
/** Every entry has this atime/mtime/ctime: the content is immutable, so the time carries no meaning. */
const DEFAULT_FILE_TIME = new Date(0);
/** st_blksize reported for files: the EROFS block size. */
const REPORTED_BLOCK_SIZE = 4096;
/** statfs block size and name limit. */
const STATFS_BLOCK_SIZE = 4096;
const STATFS_NAME_MAX = 255;
/** fuse-native passes statfs fields as 32-bit integers. */
const UINT32_MAX = 0xffff_ffff;
const STAT_SECTOR_BYTES = 512;

const O_ACCMODE = 0o3;
const O_RDONLY = 0;
const W_OK = 2;

/** Kernel attribute/lookup cache lifetime (seconds): nothing in this filesystem ever changes. */
const DEFAULT_CACHE_TIMEOUT_SEC = 86_400;
/**
 * Kernel read-ahead of the mount (its backing_dev_info, /sys/class/bdi/<dev>/read_ahead_kb). libfuse2
 * cannot raise the kernel's per-request limit of 128 KiB (FUSE_MAX_PAGES needs libfuse >= 3.6), but a
 * larger window makes the kernel send several 128 KiB reads at once, which we answer concurrently.
 * 512 KiB (4 reads in flight) measured best: a 1 GiB sequential read from a warm disk cache ran at
 * 415-435 MB/s against 231-254 with 4 MiB, 246-342 with 1 MiB, 251-273 with 128 KiB (A/B in the same
 * minutes), and a window past the end of a start-up's files fetches less that nobody reads (Debian+python3
 * with the start-up layout: 11.5% of the image fetched instead of 17.7%). The reader's own sequential
 * read-ahead (src/reader) fetches far ahead from the registry on long scans.
 */
const DEFAULT_READ_AHEAD_KIB = 512;
/** Kernel limit on concurrent asynchronous (read-ahead) requests; the kernel default is 12. */
const DEFAULT_MAX_BACKGROUND = 64;
/** A read that takes longer than this is answered with EIO (the kernel would otherwise wait forever). */
const DEFAULT_READ_TIMEOUT_MS = 120_000;
/** How long mount() waits for an existing FUSE mount on its mount point to answer statfs. */
const STALE_PROBE_TIMEOUT_MS = 2_000;
/** How long mount() waits for libfuse's INIT before giving up. */
const MOUNT_TIMEOUT_MS = 15_000;
/** Name in /proc/mounts (source column, and the type becomes fuse.<subtype>). */
const DEFAULT_FS_NAME = 'erofs-lazy';
const MAX_NAME_BYTES = 255;

export interface LayerFilesystemOptions {
  /** Let users other than the mounting one (and their containers) read the files. Default true. */
  allowOther?: boolean;
  /** Kernel attribute, lookup and negative-lookup cache time in seconds. Default one day. */
  cacheTimeoutSec?: number;
  /** Keep page cache across opens (libfuse kernel_cache). Default true: the data is immutable. */
  kernelCache?: boolean;
  /** Read-ahead window set on the mount's bdi after mounting, in KiB; 0 leaves the kernel's. */
  readAheadKiB?: number;
  /**
   * Turn the kernel's read-ahead on the layer files off (read_ahead_kb 0), so that every read that reaches
   * the sources is one the reader of the file (the loop device) asked for: what `mount --record` wants.
   */
  noReadAhead?: boolean;
  /** libfuse max_background (kernel limit on concurrent read-ahead requests); 0 leaves the default. */
  maxBackground?: number;
  /** Per-read deadline; a read still pending then fails with EIO. */
  readTimeoutMs?: number;
  /** Source column in /proc/mounts and FUSE subtype. */
  fsName?: string;
  /** Replaces the whole libfuse option list (for measurements): nothing else is added. */
  rawOptions?: readonly string[];
  /** libfuse debug output on stderr. */
  debug?: boolean;
  /** One-line diagnostics (failed reads, tuning that could not be applied). Default: stderr. */
  log?: (line: string) => void;
}

export interface LayerFilesystemStats {
  reads: number;
  bytesRead: number;
  readErrors: number;
  /** Largest read request the kernel sent (bytes). */
  maxReadLength: number;
  readsInFlight: number;
  maxReadsInFlight: number;
}

interface LayerEntry {
  readonly source: LayerFileSource;
  readonly stat: FuseStat;
  /** File handle given to the kernel on open (index + 1; 0 means "none" to fuse-native). */
  readonly handle: number;
}

function defaultLog(line: string): void {
  process.stderr.write(`${line}\n`);
}


function validateSources(sources: readonly LayerFileSource[]): void {
  const seen = new Set<string>();
  for (const s of sources) {
    if (s.name === '' || s.name === '.' || s.name === '..' || s.name.includes('/') || s.name.includes('\0')) {
      throw new Error(`layer file name ${JSON.stringify(s.name)} is not a valid file name`);
    }
    if (Buffer.byteLength(s.name) > MAX_NAME_BYTES) throw new Error(`layer file name ${s.name} is longer than ${MAX_NAME_BYTES} bytes`);
    if (seen.has(s.name)) throw new Error(`layer file name ${s.name} is used twice`);
    seen.add(s.name);
    if (!Number.isSafeInteger(s.size) || s.size < 0) throw new Error(`layer file ${s.name} has invalid size ${s.size}`);
  }
}

function positiveIntegerOption(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`LayerFilesystem option ${name} must be a non-negative integer, got ${value}`);
  return value;
}

/** Serves layer files read-only in the root of a FUSE mount. One mount at a time per instance. */
export class LayerFilesystem {
  readonly #files = new Map<string, LayerEntry>();
  readonly #names: string[];
  readonly #options: readonly string[];
  readonly #readAheadKiB: number;
  readonly #noReadAhead: boolean;
  readonly #readTimeoutMs: number;
  readonly #log: (line: string) => void;
  readonly #rootStat: FuseStat;
  readonly #totalBytes: number;
  #fuse: NativeFuse | undefined;
  #mountpoint: string | undefined;
  #unmountOptions: UnmountOptions = {};
  /** Set while undoing a mount that failed its checks: detach lazily instead of reporting busy. */
  #lazyUnmount = false;
  #stats: LayerFilesystemStats = { reads: 0, bytesRead: 0, readErrors: 0, maxReadLength: 0, readsInFlight: 0, maxReadsInFlight: 0 };

  constructor(sources: readonly LayerFileSource[], options: LayerFilesystemOptions = {}) {
    validateSources(sources);
    this.#log = options.log ?? defaultLog;
    this.#readTimeoutMs = positiveIntegerOption('readTimeoutMs', options.readTimeoutMs ?? DEFAULT_READ_TIMEOUT_MS);
    this.#readAheadKiB = positiveIntegerOption('readAheadKiB', options.readAheadKiB ?? DEFAULT_READ_AHEAD_KIB);
    this.#noReadAhead = options.noReadAhead ?? false;
    this.#options = options.rawOptions ? [...options.rawOptions] : LayerFilesystem.#buildOptions(options);
    const time = DEFAULT_FILE_TIME;
    this.#rootStat = { mode: ROOT_MODE, uid: OWNER_UID, gid: OWNER_GID, size: 0, nlink: 2, atime: time, mtime: time, ctime: time };
    sources.forEach((source, index) => {
      const stat: FuseStat = {
        mode: FILE_MODE,
        uid: OWNER_UID,
        gid: OWNER_GID,
        size: source.size,
        nlink: 1,
        blksize: REPORTED_BLOCK_SIZE,
        blocks: Math.ceil(source.size / STAT_SECTOR_BYTES),
        atime: time,
        mtime: time,
        ctime: time,
      };
      this.#files.set(`/${source.name}`, { source, stat, handle: index + 1 });
    });
    this.#names = sources.map((s) => s.name);
    this.#totalBytes = sources.reduce((sum, s) => sum + s.size, 0);
  }

  static #buildOptions(options: LayerFilesystemOptions): string[] {
    const timeout = positiveIntegerOption('cacheTimeoutSec', options.cacheTimeoutSec ?? DEFAULT_CACHE_TIMEOUT_SEC);
    const maxBackground = positiveIntegerOption('maxBackground', options.maxBackground ?? DEFAULT_MAX_BACKGROUND);
    const fsName = options.fsName ?? DEFAULT_FS_NAME;
    const list = ['ro', `fsname=${fsName}`, `subtype=${fsName}`];
    if (options.allowOther ?? true) list.push('allow_other');
    if (options.kernelCache ?? true) list.push('kernel_cache');
    list.push(`entry_timeout=${timeout}`, `attr_timeout=${timeout}`, `negative_timeout=${timeout}`);
    if (maxBackground > 0) list.push(`max_background=${maxBackground}`, `congestion_threshold=${Math.max(1, Math.floor((maxBackground * 3) / 4))}`);
    if (options.debug) list.push('debug');
    return list;
  }

  /** The libfuse options this instance mounts with. */
  get mountOptions(): readonly string[] {
    return this.#options;
  }

  get mountpoint(): string | undefined {
    return this.#mountpoint;
  }

  /** Absolute path of a layer file inside the mount. */
  pathOf(name: string): string {
    if (!this.#mountpoint) throw new Error(`LayerFilesystem is not mounted (asked for ${name})`);
    if (!this.#files.has(`/${name}`)) throw new Error(`no layer file ${name} in ${this.#mountpoint}`);
    return join(this.#mountpoint, name);
  }

  stats(): LayerFilesystemStats {
    return { ...this.#stats };
  }

  resetStats(): void {
    this.#stats = { reads: 0, bytesRead: 0, readErrors: 0, maxReadLength: 0, readsInFlight: this.#stats.readsInFlight, maxReadsInFlight: 0 };
  }

  /** Mounts on `mountpoint` (created if missing) and resolves once the kernel serves it. */
  async mount(mountpoint: string): Promise<void> {
    if (this.#fuse) throw new Error(`LayerFilesystem is already mounted on ${this.#mountpoint}`);
    const mnt = resolve(mountpoint);
    await this.#prepareMountpoint(mnt);
    const fuse = new NativeFuse(mnt, this.#operations(), this.#options, (m) => (this.#lazyUnmount ? forceUnmountFuse(m) : unmountFuse(m, this.#unmountOptions)));
    let mounted = false;
    try {
      await new Promise<void>((res, rej) => {
        const timer = setTimeout(() => rej(new Error(`no FUSE INIT within ${MOUNT_TIMEOUT_MS} ms`)), MOUNT_TIMEOUT_MS);
        fuse.mount((err) => {
          clearTimeout(timer);
          if (err) rej(err);
          else res();
        });
      });
      mounted = true;
      this.#fuse = fuse;
      this.#mountpoint = mnt;
      await this.#verifyMounted(mnt);
    } catch (err) {
      this.#fuse = undefined;
      this.#mountpoint = undefined;
      if (mounted) {
        // Detach it and release fuse-native's handle (which would otherwise keep node running).
        this.#lazyUnmount = true;
        await new Promise<void>((res) => fuse.unmount(() => res()));
        this.#lazyUnmount = false;
      } else if ((await mountTypesAt(mnt).catch(() => [])).some(isFuseType)) {
        // libfuse may have mounted before failing (e.g. fuse_new rejecting an option): nobody serves it.
        await forceUnmountFuse(mnt).catch(() => undefined);
      }
      if (!mounted) fuse.releaseAfterFailedMount();
      throw new Error(`mounting FUSE on ${mnt} with ${fuse.optionString || 'no options'} failed: ${errorMessage(err)}`, { cause: err });
    }
    if (this.#noReadAhead) await this.#setReadAhead(mnt, 0);
    else if (this.#readAheadKiB > 0) await this.#setReadAhead(mnt, this.#readAheadKiB);
  }

  /**
   * Unmounts (not lazily). Throws FuseBusyError if a loop device or an open file still uses the mount
   * after `busyWaitMs`; the filesystem then stays mounted and served, and unmount() can be called again.
   */
  async unmount(options: UnmountOptions = {}): Promise<void> {
    const fuse = this.#fuse;
    if (!fuse) return;
    this.#unmountOptions = options;
    await new Promise<void>((res, rej) => fuse.unmount((err) => (err ? rej(err) : res())));
    this.#fuse = undefined;
    this.#mountpoint = undefined;
  }

  /** Lazily detaches a (possibly stale) FUSE mount, e.g. after the serving process crashed. */
  static forceUnmount(mountpoint: string): Promise<void> {
    return forceUnmountFuse(mountpoint);
  }

  async #prepareMountpoint(mnt: string): Promise<void> {
    const types = await mountTypesAt(mnt);
    if (types.length > 0) {
      const top = types[types.length - 1]!;
      if (!isFuseType(top)) throw new Error(`mount point ${mnt} is already a mount point (${top})`);
      const probe = await LayerFilesystem.#probeFuse(mnt);
      if (probe === 'answers') throw new Error(`mount point ${mnt} is already a mount point (${top})`);
      if (probe === 'hangs') {
        throw new Error(`mount point ${mnt} is a FUSE mount that does not answer (its server is gone or stuck); run forceUnmount on it first`);
      }
      this.#log(`erofs-lazy fuse: ${mnt} is a stale FUSE mount (transport endpoint not connected); detaching it`);
      await forceUnmountFuse(mnt);
    }
    try {
      const st = await stat(mnt);
      if (!st.isDirectory()) throw new Error(`mount point ${mnt} is not a directory`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await mkdir(mnt, { recursive: true });
    }
  }

  /**
   * Whether the FUSE mount at `mnt` has a server: a dead server's mount still answers stat from the
   * attribute cache, but statfs always asks the server (ENOTCONN once the connection is gone; no answer
   * at all while a leftover child of the dead server still holds /dev/fuse).
   */
  static async #probeFuse(mnt: string): Promise<'answers' | 'stale' | 'hangs'> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'hangs'>((r) => {
      timer = setTimeout(() => r('hangs'), STALE_PROBE_TIMEOUT_MS);
    });
    const probe = statfs(mnt).then(
      () => 'answers' as const,
      (e: NodeJS.ErrnoException) => (e.code === 'ENOTCONN' ? ('stale' as const) : ('answers' as const)),
    );
    try {
      return await Promise.race([probe, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async #verifyMounted(mnt: string): Promise<void> {
    const [root, parent] = await Promise.all([stat(mnt), stat(dirname(mnt))]);
    if (root.dev === parent.dev || (root.mode & 0o170777) !== ROOT_MODE) {
      throw new Error(`after mounting, ${mnt} is not the FUSE root (dev ${root.dev}, mode ${root.mode.toString(8)})`);
    }
    const first = this.#names[0];
    if (first !== undefined) {
      const st = await stat(join(mnt, first));
      const want = this.#files.get(`/${first}`)!.source.size;
      if (st.size !== want) throw new Error(`after mounting, ${join(mnt, first)} has size ${st.size}, expected ${want}`);
    }
  }

  async #setReadAhead(mnt: string, kib: number): Promise<void> {
    try {
      // The bdi of a FUSE mount is named after its anonymous device, "major:minor" as in mountinfo.
      const dev = await mountDeviceAt(mnt);
      if (!dev || !/^\d+:\d+$/.test(dev)) throw new Error('device not found in /proc/self/mountinfo');
      await writeFile(`/sys/class/bdi/${dev}/read_ahead_kb`, `${kib}\n`);
    } catch (err) {
      this.#log(`erofs-lazy fuse: could not set read-ahead of ${mnt} to ${kib} KiB: ${errorMessage(err)}`);
    }
  }

  #operations(): FuseOperations {
    return {
      getattr: (path, cb) => {
        if (path === '/') return cb(0, this.#rootStat);
        const entry = this.#files.get(path);
        if (!entry) return cb(ENOENT);
        cb(0, entry.stat);
      },
      access: (path, mode, cb) => {
        if (path !== '/' && !this.#files.has(path)) return cb(ENOENT);
        cb(mode & W_OK ? EROFS : 0);
      },
      readdir: (path, cb) => {
        if (path === '/') return cb(0, this.#names);
        cb(this.#files.has(path) ? ENOTDIR : ENOENT);
      },
      open: (path, flags, cb) => {
        const entry = this.#files.get(path);
        if (!entry) return cb(ENOENT);
        if ((flags & O_ACCMODE) !== O_RDONLY) return cb(EROFS);
        cb(0, entry.handle);
      },
      release: (_path, _fd, cb) => cb(0),
      read: (path, _fd, buf, length, position, cb) => this.#read(path, buf, length, position, cb),
      statfs: (_path, cb) => {
        const blocks = Math.min(UINT32_MAX, Math.ceil(this.#totalBytes / STATFS_BLOCK_SIZE));
        const files = Math.min(UINT32_MAX, this.#files.size + 1);
        const st: FuseStatfs = {
          bsize: STATFS_BLOCK_SIZE,
          frsize: STATFS_BLOCK_SIZE,
          blocks,
          bfree: 0,
          bavail: 0,
          files,
          ffree: 0,
          favail: 0,
          fsid: 0,
          flag: 0,
          namemax: STATFS_NAME_MAX,
        };
        cb(0, st);
      },
    };
  }

  #read(path: string, buf: Buffer, length: number, position: number, cb: (result: number) => void): void {
    const entry = this.#files.get(path);
    if (!entry) return cb(ENOENT);
    const size = entry.source.size;
    if (position >= size || length === 0) return cb(0);
    const want = Math.min(length, size - position);
    const stats = this.#stats;
    stats.reads++;
    if (length > stats.maxReadLength) stats.maxReadLength = length;
    stats.readsInFlight++;
    if (stats.readsInFlight > stats.maxReadsInFlight) stats.maxReadsInFlight = stats.readsInFlight;

    let answered = false;
    const fail = (message: string): void => {
      if (answered) return;
      answered = true;
      clearTimeout(timer);
      this.#stats.readsInFlight--;
      this.#stats.readErrors++;
      this.#log(`erofs-lazy fuse: read failed: file=${entry.source.name} offset=${position} length=${want}: ${message}`);
      cb(EIO);
    };
    const timer = setTimeout(() => fail(`no data after ${this.#readTimeoutMs} ms`), this.#readTimeoutMs);

    LayerFilesystem.#collect(entry.source, position, want).then(
      (pieces) => {
        if (answered) return;
        answered = true;
        clearTimeout(timer);
        // `buf` is the kernel request's buffer: only touched here, synchronously, before answering.
        let copied = 0;
        for (const piece of pieces) copied += piece.copy(buf, copied);
        this.#stats.readsInFlight--;
        this.#stats.bytesRead += copied;
        cb(copied);
      },
      (err: unknown) => fail(errorMessage(err)),
    );
  }

  /**
   * Reads exactly `want` bytes (the caller clamped it at the file size): for a page-cached file the
   * kernel takes a short read as end of file and would zero-fill the rest, so partial answers from the
   * source are continued and an empty one is an error.
   */
  static async #collect(source: LayerFileSource, position: number, want: number): Promise<Buffer[]> {
    const pieces: Buffer[] = [];
    let got = 0;
    while (got < want) {
      const data = await source.read(position + got, want - got);
      if (data.length === 0) throw new Error(`source returned no data at offset ${position + got} (${got} of ${want} bytes read)`);
      const piece = data.length > want - got ? data.subarray(0, want - got) : data;
      pieces.push(piece);
      got += piece.length;
    }
    return pieces;
  }
}
