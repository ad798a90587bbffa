// Typed wrapper around the CommonJS, untyped npm package fuse-native (libfuse2 high-level API, run by a
// libfuse multi-threaded loop; each op is forwarded to the JS thread and blocks its FUSE thread until the
// JS callback answers). Two behaviours of fuse-native 2.2.6 are replaced by a subclass:
//  - the mount options: fuse-native builds its "-o" string from a fixed list of camel-cased options (no
//    negative_timeout, max_background, ro, ...; `userId` is even malformed), so the subclass passes an
//    exact, validated libfuse option list instead;
//  - the unmount: fuse-native always runs a *lazy* `fusermount -uz`, which hides "busy" (a loop device
//    still reading the file) and leaves the filesystem served by nobody once the process exits. The
//    subclass unmounts non-lazily (busy is an error) and then releases the native handle.
import { createRequire } from 'node:module';
import { dirname } from 'node:path';

/** Stat fields fuse-native turns into a struct stat (times as Date or milliseconds). */
export interface FuseStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink?: number;
  ino?: number;
  blksize?: number;
  blocks?: number;
  atime: Date | number;
  mtime: Date | number;
  ctime: Date | number;
}

/** Statfs fields (each is truncated to 32 bits by fuse-native). */
export interface FuseStatfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

/** Result code: 0 for success, a negative errno for failure. */
export type FuseResult = number;

/** The operations this project implements; fuse-native supports more. */
export interface FuseOperations {
  init?(cb: (result: FuseResult) => void): void;
  getattr?(path: string, cb: (result: FuseResult, stat?: FuseStat) => void): void;
  /** fuse-native answers fgetattr with ops.getattr; it must still be present to be registered. */
  fgetattr?(path: string, fd: number, cb: (result: FuseResult, stat?: FuseStat) => void): void;
  access?(path: string, mode: number, cb: (result: FuseResult) => void): void;
  readdir?(path: string, cb: (result: FuseResult, names?: string[]) => void): void;
  open?(path: string, flags: number, cb: (result: FuseResult, fh?: number) => void): void;
  release?(path: string, fd: number, cb: (result: FuseResult) => void): void;
  /** `cb(n)`: n >= 0 bytes copied into `buf`, or a negative errno. `buf` is only valid until cb. */
  read?(path: string, fd: number, buf: Buffer, length: number, position: number, cb: (result: FuseResult) => void): void;
  statfs?(path: string, cb: (result: FuseResult, statfs?: FuseStatfs) => void): void;
}

/** Constructor options of fuse-native that this wrapper uses (the mount options are passed separately). */
interface FuseNativeOptions {
  /** false: no per-op timeout in fuse-native (the filesystem applies its own, with EIO). */
  timeout: false | number;
  force: boolean;
  mkdir: boolean;
}

interface FuseNativeInstance {
  readonly mnt: string;
  mount(cb: (err: Error | null) => void): void;
  unmount(cb: (err: Error | null) => void): void;
  _fuseOptions(): string;
  _close(cb: (err: Error | null) => void): void;
  _thread: Buffer | null;
}

interface FuseNativeClass {
  new (mnt: string, ops: FuseOperations, opts: FuseNativeOptions): FuseNativeInstance;
  unmount(mnt: string, cb: (err: Error | null) => void): void;
}

interface FuseNativeBinding {
  fuse_native_unmount(mnt: string, thread: Buffer): void;
}

const requireHere = createRequire(import.meta.url);
const FUSE_NATIVE_ENTRY = requireHere.resolve('fuse-native');
const FuseNative = requireHere('fuse-native') as FuseNativeClass;
// The same addon object fuse-native loaded (node caches native addons by file name), for the native half
// of the unmount that fuse-native only does inside its own lazy _close.
const nodeGypBuild = createRequire(FUSE_NATIVE_ENTRY)('node-gyp-build') as (dir: string) => FuseNativeBinding;
const binding = nodeGypBuild(dirname(FUSE_NATIVE_ENTRY));

/** Longest "-o..." string fuse-native's addon copies (char mntopts[1024], NUL included). */
const MAX_OPTION_STRING_BYTES = 1023;
/** One libfuse option: key or key=value, no separators or quoting libfuse's parser would split on. */
const OPTION_PATTERN = /^[A-Za-z0-9_]+(=[^,\s\\]*)?$/;

/** Builds the single "-oa,b,c" argument, or '' for none; throws with the offending option. */
export function formatFuseOptions(options: readonly string[]): string {
  for (const opt of options) {
    if (!OPTION_PATTERN.test(opt)) throw new Error(`invalid FUSE mount option ${JSON.stringify(opt)}`);
  }
  if (options.length === 0) return '';
  const text = `-o${options.join(',')}`;
  if (Buffer.byteLength(text) > MAX_OPTION_STRING_BYTES) {
    throw new Error(`FUSE mount options are ${Buffer.byteLength(text)} bytes, fuse-native accepts ${MAX_OPTION_STRING_BYTES}: ${text}`);
  }
  return text;
}

/** Unmounts a FUSE mount point (lazy or not); the caller provides it so it can tell busy apart. */
export type UnmountCommand = (mountpoint: string) => Promise<void>;

/** A fuse-native mount with an exact libfuse option list and a non-lazy, busy-aware unmount. */
export class NativeFuse extends FuseNative {
  readonly #optionString: string;
  readonly #unmountCommand: UnmountCommand;

  constructor(mountpoint: string, ops: FuseOperations, options: readonly string[], unmountCommand: UnmountCommand) {
    super(mountpoint, ops, { timeout: false, force: false, mkdir: false });
    this.#optionString = formatFuseOptions(options);
    this.#unmountCommand = unmountCommand;
  }

  /** The exact argument given to libfuse's fuse_mount/fuse_new. */
  get optionString(): string {
    return this.#optionString;
  }

  override _fuseOptions(): string {
    return this.#optionString;
  }

  /**
   * After a failed mount(): fuse-native's addon may already have created the uv handle that keeps node's
   * event loop alive (it does so before checking fuse_new's result); releasing it is harmless otherwise.
   */
  releaseAfterFailedMount(): void {
    if (this._thread) binding.fuse_native_unmount(this.mnt, this._thread);
  }

  override _close(cb: (err: Error | null) => void): void {
    this.#unmountCommand(this.mnt).then(
      () => {
        try {
          // Only releases the uv handle that keeps node's loop alive; the FUSE thread ends by itself once
          // the kernel connection is gone.
          if (this._thread) binding.fuse_native_unmount(this.mnt, this._thread);
        } catch (err) {
          cb(err instanceof Error ? err : new Error(String(err)));
          return;
        }
        cb(null);
      },
      (err: unknown) => cb(err instanceof Error ? err : new Error(String(err))),
    );
  }
}
