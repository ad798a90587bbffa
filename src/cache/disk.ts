// Disk tier of the chunk cache: decompressed, verified chunks kept as one file each under the cache
// directory, shared by every mount and every erofs-lazy process on the host, bounded in bytes with
// least-recently-used eviction.
//
// Layout under `root`, the chunk directory (by convention `<cacheDir>/chunks`, CHUNKS_DIR under the cache
// directory, DEFAULT_CACHE_DIR by default):
//
//   <root>/v1/<alg>/<hex>/<index>                   one chunk of layer "<alg>:<hex>" (index in decimal)
//   <root>/v1/<alg>/<hex>/.<index>.tmp-<pid>-<rnd>  a put in progress (renamed over <index> when done)
//
// Each chunk file is a 96-byte header followed by the chunk's data (all integers little-endian):
//
//   0   8  magic "ELZCHUNK"
//   8   4  format version (1)
//   12  4  header length (96)
//   16  8  chunk index
//   24  8  data length
//   32 32  SHA-256 of the layer digest string ("sha256:<hex>"): ties the file to its layer
//   64 32  SHA-256 of the data
//
// `get` checks every header field against the key and the caller's expected length, and the data against its
// SHA-256 (hashed by the caller's hasher, e.g. a worker thread that takes the file's memory and hands it back,
// else on libuv's thread pool), before returning anything. `put` takes the data's SHA-256 from the caller when
// it has one (the decode worker hashes each chunk it produces), else hashes it on the thread pool. A file that fails (torn, truncated, altered, or moved to another index or
// layer) is counted in `corruptEntries`, removed, and reported as a miss. Files are never modified in place:
// `put` writes a uniquely named temp file in the same directory and renames it over the final name, so readers
// and concurrent writers (other processes too) only ever see whole files. There is no fsync: after a crash a
// file may be torn, which `get` detects.
//
// The size bound counts whole files (header + data). The process keeps an index (one small record per chunk:
// bytes and last use) built by a background scan at open, ordered least recently used first; puts and hits
// update it, and a put evicts from its front until the total is under `maxBytes`. Hits also refresh the file's
// mtime (at most once per LAST_USE_TOUCH_INTERVAL_MS) so that other processes' scans see the use. Entries
// written by other processes after our scan are unknown to our index until they are read or rescanned.
import { createHash, randomBytes, webcrypto } from 'node:crypto';
import type { Stats } from 'node:fs';
import { lstat, mkdir, open, opendir, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { parseDigest } from '../util/digest.js';
import { CacheError, errnoCode, isMissing, unlinkIfSame } from './errors.js';
import type { ChunkHasher, ChunkKey, DiskChunkCache, DiskGetOptions, DiskPutOptions } from './types.js';

/** Default cache directory of erofs-lazy; chunks live in `<cacheDir>/chunks`, whole layers in `<cacheDir>/layers`. */
export const DEFAULT_CACHE_DIR = '/var/lib/erofs-lazy';
/** Default bound of the disk chunk cache: 10 GiB of chunk files. */
export const DEFAULT_DISK_CACHE_MAX_BYTES = 10 * 1024 * 1024 * 1024;

/** Directory of the chunk cache under the cache directory: pass `join(cacheDir, CHUNKS_DIR)` as `root`. */
export const CHUNKS_DIR = 'chunks';
/** Layout version directory under the chunk directory; bump together with CHUNK_FILE_VERSION on format changes. */
export const CHUNK_LAYOUT_DIR = 'v1';
export const CHUNK_FILE_MAGIC = Buffer.from('ELZCHUNK', 'ascii');
export const CHUNK_FILE_VERSION = 1;
export const CHUNK_HEADER_BYTES = 96;

const HEADER_OFFSET_MAGIC = 0;
const HEADER_OFFSET_VERSION = 8;
const HEADER_OFFSET_HEADER_LENGTH = 12;
const HEADER_OFFSET_INDEX = 16;
const HEADER_OFFSET_DATA_LENGTH = 24;
const HEADER_OFFSET_LAYER_HASH = 32;
const HEADER_OFFSET_DATA_HASH = 64;
const SHA256_BYTES = 32;

/** A hit rewrites the file's mtime (its last use, for other processes' scans) at most this often. */
const LAST_USE_TOUCH_INTERVAL_MS = 60_000;
/** Temp files older than this (by mtime) are left over from a crashed writer; the scan removes them. */
const STALE_TEMP_AGE_MS = 60 * 60 * 1000;
/** A put retries this many times when its directory disappears under it (a concurrent removeLayer). */
const PUT_ATTEMPTS = 3;
/** Retries of removeLayer's recursive delete when a concurrent writer adds a file meanwhile. */
const REMOVE_LAYER_RETRIES = 3;
/** Random bytes in a temp file's name (with the pid, unique across processes). */
const TEMP_NAME_RANDOM_BYTES = 6;

const ENTRY_NAME = /^(0|[1-9][0-9]{0,15})$/;
const TEMP_NAME = /^\.(0|[1-9][0-9]{0,15})\.tmp-/;
const ALGORITHMS = ['sha256', 'sha512'] as const;

export interface DiskChunkCacheOptions {
  /** The chunk directory, by convention `<cacheDir>/chunks` (CHUNKS_DIR). Created when missing. */
  root: string;
  /** Bound on the total bytes of chunk files (headers included); default DEFAULT_DISK_CACHE_MAX_BYTES. */
  maxBytes?: number;
  /** Called for each damaged entry found (and removed) by `get`, e.g. for logging. */
  onCorruptEntry?: (info: CorruptEntryInfo) => void;
}

export interface CorruptEntryInfo {
  layerDigest: string;
  index: number;
  path: string;
  reason: string;
}

/** Bytes of one layer's chunks on disk, as reported by `usage()`. */
export interface LayerUsage {
  layerDigest: string;
  /** Total size of the layer's chunk files, headers included. */
  bytes: number;
  chunks: number;
}

interface ResolvedKey {
  layerDigest: string;
  index: number;
  /** "<alg>/<hex>": the layer's directory relative to the layout directory. */
  layerId: string;
  /** "<alg>/<hex>/<index>": the index key, also the file's path relative to the layout directory. */
  id: string;
  dir: string;
  path: string;
}

interface IndexEntry {
  bytes: number;
  lastUse: number;
}

interface WalkedEntry {
  layerDigest: string;
  index: number;
  id: string;
  path: string;
  bytes: number;
  mtimeMs: number;
}

function sha256(data: Uint8Array | string): Buffer {
  return createHash('sha256').update(data).digest();
}

/**
 * SHA-256 of chunk data on libuv's thread pool (WebCrypto digests run there): hashing a 4 MiB chunk costs
 * milliseconds, which on the main thread would stall every FUSE request behind it.
 */
async function sha256OffThread(data: Uint8Array): Promise<Buffer> {
  return Buffer.from(await webcrypto.subtle.digest('SHA-256', data));
}

/** The default ChunkHasher: WebCrypto on libuv's thread pool (which copies the bytes first). */
const threadPoolHasher: ChunkHasher = async (bytes, from) => ({ bytes, sha256: await sha256OffThread(bytes.subarray(from)) });

async function encodeHeader(key: ResolvedKey, data: Buffer, dataSha256: Uint8Array | undefined): Promise<Buffer> {
  const header = Buffer.alloc(CHUNK_HEADER_BYTES);
  CHUNK_FILE_MAGIC.copy(header, HEADER_OFFSET_MAGIC);
  header.writeUInt32LE(CHUNK_FILE_VERSION, HEADER_OFFSET_VERSION);
  header.writeUInt32LE(CHUNK_HEADER_BYTES, HEADER_OFFSET_HEADER_LENGTH);
  header.writeBigUInt64LE(BigInt(key.index), HEADER_OFFSET_INDEX);
  header.writeBigUInt64LE(BigInt(data.length), HEADER_OFFSET_DATA_LENGTH);
  layerHashOf(key.layerDigest).copy(header, HEADER_OFFSET_LAYER_HASH);
  const digest = dataSha256 !== undefined && dataSha256.length === SHA256_BYTES ? dataSha256 : await sha256OffThread(data);
  header.set(digest, HEADER_OFFSET_DATA_HASH);
  return header;
}

/**
 * Why a chunk file's bytes are not a valid entry for `key` with `expectedLength` data bytes (undefined when
 * valid), with the file's bytes to use from then on: `hasher` may have taken the memory of `file`.
 */
async function checkEntry(file: Buffer, key: ResolvedKey, expectedLength: number, hasher: ChunkHasher): Promise<{ file: Buffer; reason: string | undefined }> {
  const reason = checkHeader(file, key, expectedLength);
  if (reason !== undefined) return { file, reason };
  const length = file.length;
  // From here on `file` may be detached (its memory taken by the hasher): only `checked` is used.
  const hashed = await hasher(file, CHUNK_HEADER_BYTES);
  const checked = hashed.bytes;
  if (checked.length !== length) return { file: checked, reason: `hasher handed back ${checked.length} of ${length} bytes` };
  const dataHash = checked.subarray(HEADER_OFFSET_DATA_HASH, HEADER_OFFSET_DATA_HASH + SHA256_BYTES);
  if (hashed.sha256.length !== SHA256_BYTES || !dataHash.equals(hashed.sha256)) return { file: checked, reason: 'data does not match its SHA-256' };
  return { file: checked, reason: undefined };
}

/** Why a chunk file's header is not the one of an entry for `key` with `expectedLength` data bytes; undefined when it is. */
function checkHeader(file: Buffer, key: ResolvedKey, expectedLength: number): string | undefined {
  if (file.length !== CHUNK_HEADER_BYTES + expectedLength) {
    return `file is ${file.length} bytes, expected ${CHUNK_HEADER_BYTES + expectedLength}`;
  }
  if (!file.subarray(HEADER_OFFSET_MAGIC, HEADER_OFFSET_MAGIC + CHUNK_FILE_MAGIC.length).equals(CHUNK_FILE_MAGIC)) {
    return 'bad magic';
  }
  const version = file.readUInt32LE(HEADER_OFFSET_VERSION);
  if (version !== CHUNK_FILE_VERSION) return `format version ${version}, expected ${CHUNK_FILE_VERSION}`;
  const headerLength = file.readUInt32LE(HEADER_OFFSET_HEADER_LENGTH);
  if (headerLength !== CHUNK_HEADER_BYTES) return `header length ${headerLength}, expected ${CHUNK_HEADER_BYTES}`;
  const index = file.readBigUInt64LE(HEADER_OFFSET_INDEX);
  if (index !== BigInt(key.index)) return `header names chunk ${index}`;
  const length = file.readBigUInt64LE(HEADER_OFFSET_DATA_LENGTH);
  if (length !== BigInt(expectedLength)) return `header data length ${length}, expected ${expectedLength}`;
  const layerHash = file.subarray(HEADER_OFFSET_LAYER_HASH, HEADER_OFFSET_LAYER_HASH + SHA256_BYTES);
  if (!layerHash.equals(layerHashOf(key.layerDigest))) return 'header names another layer';
  return undefined;
}

/** Layer digest → SHA-256 of it, for the few layers a process serves (one hash per layer, not per chunk). */
const layerHashes = new Map<string, Buffer>();
/** Entries kept in layerHashes before it is cleared (a bound, not a working-set size). */
const LAYER_HASH_MEMO_ENTRIES = 1024;

function layerHashOf(layerDigest: string): Buffer {
  let hash = layerHashes.get(layerDigest);
  if (hash === undefined) {
    if (layerHashes.size >= LAYER_HASH_MEMO_ENTRIES) layerHashes.clear();
    hash = sha256(layerDigest);
    layerHashes.set(layerDigest, hash);
  }
  return hash;
}


/**
 * Writes the buffers one after the other from the file's start: one writev call (writeFile would cut a 4 MiB
 * chunk into 512 KiB writes, each a round trip through the thread pool), repeated for what a short write left.
 */
async function writeAll(handle: FileHandle, buffers: Buffer[]): Promise<void> {
  let pending = buffers.filter((b) => b.length > 0);
  let position = 0;
  while (pending.length > 0) {
    const { bytesWritten } = await handle.writev(pending, position);
    if (bytesWritten <= 0) throw new Error(`short write: ${bytesWritten} bytes written at ${position}`);
    position += bytesWritten;
    let skip = bytesWritten;
    const rest: Buffer[] = [];
    for (const b of pending) {
      if (skip >= b.length) {
        skip -= b.length;
      } else {
        rest.push(skip > 0 ? b.subarray(skip) : b);
        skip = 0;
      }
    }
    pending = rest;
  }
}

export class FileChunkCache implements DiskChunkCache {
  readonly root: string;
  readonly maxBytes: number;
  /** Set when the background scan failed; the index then holds only entries used since open. */
  scanError: Error | undefined;

  readonly #layoutDir: string;
  readonly #onCorruptEntry: ((info: CorruptEntryInfo) => void) | undefined;
  /** Least recently used first (Map insertion order; a use re-inserts). */
  #index = new Map<string, IndexEntry>();
  #indexedBytes = 0;
  #corruptEntries = 0;
  #evictions = 0;
  readonly #inflightPuts = new Map<string, Promise<void>>();
  /** Layer directories this instance created or found (skips a mkdir per put); forgotten on ENOENT and removeLayer. */
  readonly #knownDirs = new Set<string>();
  /** While a scan runs: what was removed meanwhile, so the scan's stale findings are not merged back. */
  #scanTombstones: { ids: Set<string>; layerIds: Set<string> } | undefined;
  #scan: Promise<void> = Promise.resolve();

  /** Use openDiskChunkCache, which creates the directory and starts the index scan. */
  constructor(options: DiskChunkCacheOptions) {
    const maxBytes = options.maxBytes ?? DEFAULT_DISK_CACHE_MAX_BYTES;
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
      throw new CacheError(`disk cache size must be a non-negative integer, got ${maxBytes}`, { path: options.root });
    }
    this.root = options.root;
    this.maxBytes = maxBytes;
    this.#layoutDir = join(options.root, CHUNK_LAYOUT_DIR);
    this.#onCorruptEntry = options.onCorruptEntry;
  }

  /** Entries found damaged and discarded by this instance since it was opened. */
  get corruptEntries(): number {
    return this.#corruptEntries;
  }

  /** Entries evicted by this instance to stay under maxBytes. */
  get evictions(): number {
    return this.#evictions;
  }

  /** Total bytes of the entries in this process's index (headers included). */
  get indexedBytes(): number {
    return this.#indexedBytes;
  }

  get indexedEntries(): number {
    return this.#index.size;
  }

  /** Resolves when the index scan started at open (or by rescan) has finished and been merged. */
  whenScanned(): Promise<void> {
    return this.#scan;
  }

  /** Re-reads the directory into the index (e.g. to see other processes' entries), in the background. */
  rescan(): Promise<void> {
    this.#scan = this.#scan.then(() => this.#scanIndex());
    return this.#scan;
  }

  /** Creates the layout directory; used by openDiskChunkCache. */
  async init(): Promise<void> {
    try {
      await mkdir(this.#layoutDir, { recursive: true });
    } catch (err) {
      throw new CacheError('cannot create the chunk cache directory', { path: this.#layoutDir, cause: err });
    }
  }

  /**
   * The verified chunk, or undefined when absent or damaged (then removed). `options.hasher` computes the
   * data's SHA-256 (e.g. on a worker thread, taking the file's memory and handing it back).
   */
  async get(key: ChunkKey, expectedLength: number, options: DiskGetOptions = {}): Promise<Buffer | undefined> {
    const k = this.#resolve(key);
    if (!Number.isSafeInteger(expectedLength) || expectedLength < 0) {
      throw new CacheError(`invalid expected chunk length ${expectedLength}`, { layerDigest: k.layerDigest, index: k.index });
    }
    let handle;
    try {
      handle = await open(k.path, 'r');
    } catch (err) {
      if (isMissing(err)) {
        this.#forget(k.id);
        return undefined;
      }
      throw new CacheError('cannot open cached chunk', { layerDigest: k.layerDigest, index: k.index, path: k.path, cause: err });
    }
    try {
      const st = await handle.stat();
      let reason: string | undefined;
      let file: Buffer | undefined;
      if (!st.isFile()) {
        reason = 'not a regular file';
      } else if (st.size !== CHUNK_HEADER_BYTES + expectedLength) {
        // Checked before reading, so a wrong or damaged size never makes us read a large file.
        reason = `file is ${st.size} bytes, expected ${CHUNK_HEADER_BYTES + expectedLength}`;
      } else {
        // One read of the known size (FileHandle.readFile reads in small pieces, several times slower), into
        // memory of its own, so that a hasher on another thread can take it without a copy.
        file = Buffer.allocUnsafeSlow(st.size);
        const { bytesRead } = await handle.read(file, 0, st.size, 0);
        if (bytesRead !== st.size) {
          reason = `read ${bytesRead} of ${st.size} bytes`;
        } else {
          ({ file, reason } = await checkEntry(file, k, expectedLength, options.hasher ?? threadPoolHasher));
        }
      }
      if (reason !== undefined || file === undefined) {
        await this.#discard(k, st, reason ?? 'unreadable');
        return undefined;
      }
      const now = Date.now();
      if (now - st.mtimeMs >= LAST_USE_TOUCH_INTERVAL_MS) {
        const date = new Date(now);
        // Best effort: the file may be read-only to us or just evicted by another process.
        await handle.utimes(date, date).catch(() => undefined);
      }
      this.#record(k.id, file.length, now);
      return file.subarray(CHUNK_HEADER_BYTES);
    } catch (err) {
      if (err instanceof CacheError) throw err;
      throw new CacheError('cannot read cached chunk', { layerDigest: k.layerDigest, index: k.index, path: k.path, cause: err });
    } finally {
      await handle.close().catch(() => undefined);
    }
  }

  /**
   * Stores a chunk atomically, then evicts least recently used entries until the total is under maxBytes.
   * A chunk whose file would exceed maxBytes on its own is not stored. Concurrent puts of one key in this
   * process share one write. Rejects with CacheError on I/O failure (the read path may ignore that).
   */
  async put(key: ChunkKey, data: Buffer, options: DiskPutOptions = {}): Promise<void> {
    const k = this.#resolve(key);
    if (CHUNK_HEADER_BYTES + data.length > this.maxBytes) return;
    const inflight = this.#inflightPuts.get(k.id);
    if (inflight !== undefined) return inflight;
    const write = this.#write(k, data, options.sha256).finally(() => {
      if (this.#inflightPuts.get(k.id) === write) this.#inflightPuts.delete(k.id);
    });
    this.#inflightPuts.set(k.id, write);
    return write;
  }

  async has(key: ChunkKey): Promise<boolean> {
    const k = this.#resolve(key);
    try {
      return (await stat(k.path)).isFile();
    } catch (err) {
      if (isMissing(err)) return false;
      throw new CacheError('cannot check cached chunk', { layerDigest: k.layerDigest, index: k.index, path: k.path, cause: err });
    }
  }

  async removeLayer(layerDigest: string): Promise<void> {
    const { layerId, dir } = this.#resolve({ layerDigest, index: 0 });
    this.#knownDirs.delete(dir);
    try {
      await rm(dir, { recursive: true, force: true, maxRetries: REMOVE_LAYER_RETRIES });
    } catch (err) {
      throw new CacheError('cannot remove cached layer', { layerDigest, path: dir, cause: err });
    }
    this.#scanTombstones?.layerIds.add(layerId);
    const prefix = `${layerId}/`;
    for (const [id, entry] of this.#index) {
      if (id.startsWith(prefix)) {
        this.#index.delete(id);
        this.#indexedBytes -= entry.bytes;
      }
    }
  }

  /** Cached layers with the bytes and number of their chunk files, read from the directory (all processes' entries). */
  async usage(): Promise<LayerUsage[]> {
    const byLayer = new Map<string, LayerUsage>();
    for await (const e of this.#walk(false)) {
      let u = byLayer.get(e.layerDigest);
      if (u === undefined) {
        u = { layerDigest: e.layerDigest, bytes: 0, chunks: 0 };
        byLayer.set(e.layerDigest, u);
      }
      u.bytes += e.bytes;
      u.chunks += 1;
    }
    return [...byLayer.values()].sort((a, b) => (a.layerDigest < b.layerDigest ? -1 : a.layerDigest > b.layerDigest ? 1 : 0));
  }

  #resolve(key: ChunkKey): ResolvedKey {
    if (!Number.isSafeInteger(key.index) || key.index < 0) {
      throw new CacheError(`invalid chunk index ${key.index}`, { layerDigest: key.layerDigest });
    }
    let algorithm: string;
    let hex: string;
    try {
      ({ algorithm, hex } = parseDigest(key.layerDigest));
    } catch (err) {
      throw new CacheError('invalid layer digest in chunk key', { index: key.index, cause: err });
    }
    const layerId = `${algorithm}/${hex}`;
    const id = `${layerId}/${key.index}`;
    const dir = join(this.#layoutDir, algorithm, hex);
    return { layerDigest: key.layerDigest, index: key.index, layerId, id, dir, path: join(dir, String(key.index)) };
  }

  async #write(k: ResolvedKey, data: Buffer, dataSha256: Uint8Array | undefined): Promise<void> {
    const header = await encodeHeader(k, data, dataSha256);
    for (let attempt = 1; ; attempt++) {
      const random = randomBytes(TEMP_NAME_RANDOM_BYTES).toString('hex');
      const temp = join(k.dir, `.${k.index}.tmp-${process.pid}-${random}`);
      try {
        // The layer's directory is created once per process (not once per chunk); when it vanishes (a
        // concurrent removeLayer), open fails with ENOENT and the next attempt creates it again.
        if (!this.#knownDirs.has(k.dir)) {
          await mkdir(k.dir, { recursive: true });
          this.#knownDirs.add(k.dir);
        }
        const handle = await open(temp, 'wx');
        try {
          await writeAll(handle, [header, data]);
        } finally {
          await handle.close();
        }
        await rename(temp, k.path);
        break;
      } catch (err) {
        await unlink(temp).catch(() => undefined);
        // The layer directory vanished under us (a concurrent removeLayer): create it again.
        if (isMissing(err)) this.#knownDirs.delete(k.dir);
        if (isMissing(err) && attempt < PUT_ATTEMPTS) continue;
        throw new CacheError('cannot write chunk to the disk cache', { layerDigest: k.layerDigest, index: k.index, path: k.path, cause: err });
      }
    }
    this.#record(k.id, CHUNK_HEADER_BYTES + data.length, Date.now());
    await this.#evict(k.id);
  }

  async #discard(k: ResolvedKey, st: Stats, reason: string): Promise<void> {
    this.#corruptEntries += 1;
    this.#forget(k.id);
    try {
      await unlinkIfSame(k.path, st);
    } catch (err) {
      throw new CacheError(`cannot remove damaged cached chunk (${reason})`, { layerDigest: k.layerDigest, index: k.index, path: k.path, cause: err });
    }
    this.#onCorruptEntry?.({ layerDigest: k.layerDigest, index: k.index, path: k.path, reason });
  }

  /** Adds or refreshes an entry as the most recently used. */
  #record(id: string, bytes: number, lastUse: number): void {
    const old = this.#index.get(id);
    if (old !== undefined) {
      this.#index.delete(id);
      this.#indexedBytes -= old.bytes;
    }
    this.#index.set(id, { bytes, lastUse });
    this.#indexedBytes += bytes;
  }

  #forget(id: string): void {
    const old = this.#index.get(id);
    if (old !== undefined) {
      this.#index.delete(id);
      this.#indexedBytes -= old.bytes;
    }
    this.#scanTombstones?.ids.add(id);
  }

  /** Evicts least recently used entries (never `keep`) until the indexed total is at most maxBytes. */
  async #evict(keep?: string): Promise<void> {
    while (this.#indexedBytes > this.maxBytes) {
      let victim: string | undefined;
      for (const id of this.#index.keys()) {
        if (id !== keep) {
          victim = id;
          break;
        }
      }
      if (victim === undefined) return;
      // Chosen and dropped synchronously, so concurrent evictions never pick the same entry.
      this.#forget(victim);
      this.#evictions += 1;
      const path = join(this.#layoutDir, victim);
      try {
        await unlink(path);
      } catch (err) {
        if (!isMissing(err)) {
          throw new CacheError('cannot evict cached chunk', { path, cause: err });
        }
      }
    }
  }

  async #scanIndex(): Promise<void> {
    const tombstones = { ids: new Set<string>(), layerIds: new Set<string>() };
    this.#scanTombstones = tombstones;
    const found: { id: string; bytes: number; lastUse: number }[] = [];
    try {
      for await (const e of this.#walk(true)) found.push({ id: e.id, bytes: e.bytes, lastUse: e.mtimeMs });
      this.scanError = undefined;
    } catch (err) {
      this.scanError = new CacheError('cannot scan the chunk cache directory', { path: this.#layoutDir, cause: err });
    } finally {
      this.#scanTombstones = undefined;
    }
    // Entries used during the scan are the most recent; scanned ones go before them, oldest mtime first.
    found.sort((a, b) => a.lastUse - b.lastUse);
    const merged = new Map<string, IndexEntry>();
    let total = 0;
    for (const f of found) {
      const layerId = f.id.slice(0, f.id.lastIndexOf('/'));
      if (this.#index.has(f.id) || tombstones.ids.has(f.id) || tombstones.layerIds.has(layerId)) continue;
      merged.set(f.id, { bytes: f.bytes, lastUse: f.lastUse });
      total += f.bytes;
    }
    for (const [id, entry] of this.#index) {
      merged.set(id, entry);
      total += entry.bytes;
    }
    this.#index = merged;
    this.#indexedBytes = total;
    try {
      await this.#evict();
    } catch (err) {
      this.scanError = err instanceof Error ? err : new Error(String(err));
    }
  }

  /** Every chunk file under the layout directory; with `cleanTemps`, also removes stale temp files. */
  async *#walk(cleanTemps: boolean): AsyncGenerator<WalkedEntry> {
    for (const algorithm of ALGORITHMS) {
      const algDir = join(this.#layoutDir, algorithm);
      let layerDirs: string[];
      try {
        layerDirs = await readdir(algDir);
      } catch (err) {
        if (isMissing(err)) continue;
        throw err;
      }
      for (const hex of layerDirs.sort()) {
        const layerDigest = `${algorithm}:${hex}`;
        try {
          parseDigest(layerDigest);
        } catch {
          continue; // not a layer directory of ours
        }
        const dir = join(algDir, hex);
        let entries;
        try {
          entries = await opendir(dir);
        } catch (err) {
          if (isMissing(err)) continue; // removed meanwhile
          throw err;
        }
        for await (const dirent of entries) {
          const name = dirent.name;
          const isEntry = ENTRY_NAME.test(name);
          if (!isEntry && !(cleanTemps && TEMP_NAME.test(name))) continue;
          const path = join(dir, name);
          let st: Stats;
          try {
            st = await lstat(path);
          } catch (err) {
            if (isMissing(err)) continue;
            throw err;
          }
          if (!st.isFile()) continue;
          if (!isEntry) {
            if (Date.now() - st.mtimeMs > STALE_TEMP_AGE_MS) await unlink(path).catch(() => undefined);
            continue;
          }
          const index = Number(name);
          if (!Number.isSafeInteger(index)) continue;
          yield { layerDigest, index, id: `${algorithm}/${hex}/${index}`, path, bytes: st.size, mtimeMs: st.mtimeMs };
        }
      }
    }
  }
}

/**
 * Opens (creating when missing) the disk chunk cache in `root` (normally `<cacheDir>/chunks`). The index of existing entries is
 * built by a background scan; gets and puts work meanwhile (`whenScanned()` resolves when it is done).
 */
export async function openDiskChunkCache(options: DiskChunkCacheOptions): Promise<FileChunkCache> {
  const cache = new FileChunkCache(options);
  await cache.init();
  void cache.rescan();
  return cache;
}
