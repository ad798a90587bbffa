// Cache of whole layer files, for layers that cannot be served lazily (not seekable, or no per-chunk anchor):
// the caller fetches the blob whole, decodes or converts it to an EROFS image, and commits the result here.
//
// Layout under `root` (the cache directory, DEFAULT_CACHE_DIR by default):
//
//   <root>/layers/<alg>-<hex>.erofs         the file for layer "<alg>:<hex>"
//   <root>/layers/<alg>-<hex>.erofs.meta    its sidecar: JSON {"layerDigest", "size", "sha256"} of the file
//   <root>/layers/.tmp-<alg>-<hex>-<pid>-<rnd>[.meta]   files being written
//
// `commit` renames the sidecar into place first and the file second, so a file never appears without its
// sidecar. `lookup` returns the path only when the file's size and SHA-256 (re-hashed on every lookup) match
// the sidecar; a damaged file (or one without a sidecar) is removed and reported as a miss. `remove` deletes
// the file before the sidecar, for the same reason.
import { createHash, randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import { copyFile, lstat, mkdir, open, readdir, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseDigest } from '../util/digest.js';
import { CacheError, errnoCode, isMissing, unlinkIfSame } from './errors.js';

/** Directory of whole layer files under the cache directory. */
export const LAYERS_DIR = 'layers';
export const WHOLE_LAYER_SUFFIX = '.erofs';
export const WHOLE_LAYER_SIDECAR_SUFFIX = '.erofs.meta';
const TEMP_PREFIX = '.tmp-';
/** Random bytes in a temp file's name (with the pid, unique across processes). */
const TEMP_NAME_RANDOM_BYTES = 6;
/** Temp files not written to for this long are left over from a crashed writer; open removes them. */
const STALE_TEMP_AGE_MS = 60 * 60 * 1000;
/** Read size when re-hashing a file on lookup. */
const HASH_READ_BUFFER_BYTES = 1024 * 1024;
/** Indentation of the sidecar JSON. */
const SIDECAR_JSON_INDENT = 2;

export interface WholeLayerCacheOptions {
  /** Cache directory; the files live in `<root>/layers`. Created when missing. */
  root: string;
  /** Called for each damaged entry found (and removed) by `lookup`, e.g. for logging. */
  onDamagedEntry?: (info: { layerDigest: string; path: string; reason: string }) => void;
}

/** What the sidecar records about a committed file. */
export interface WholeLayerSidecar {
  layerDigest: string;
  size: number;
  /** "sha256:<hex>" of the file's bytes. */
  sha256: string;
}

export interface WholeLayerEntry {
  layerDigest: string;
  path: string;
  bytes: number;
}


async function unlinkIfPresent(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if (!isMissing(err)) throw err;
  }
}

function parseSidecar(text: string, layerDigest: string): WholeLayerSidecar | string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return 'sidecar is not JSON';
  }
  if (typeof value !== 'object' || value === null) return 'sidecar is not an object';
  const v = value as Record<string, unknown>;
  if (v.layerDigest !== layerDigest) return 'sidecar names another layer';
  if (typeof v.size !== 'number' || !Number.isSafeInteger(v.size) || v.size < 0) return 'sidecar has no valid size';
  if (typeof v.sha256 !== 'string') return 'sidecar has no sha256';
  try {
    if (parseDigest(v.sha256).algorithm !== 'sha256') return 'sidecar sha256 is not a sha256 digest';
  } catch {
    return 'sidecar sha256 is not a digest';
  }
  return { layerDigest, size: v.size, sha256: v.sha256 };
}

export class WholeLayerCache {
  readonly root: string;
  readonly #dir: string;
  readonly #onDamagedEntry: WholeLayerCacheOptions['onDamagedEntry'];
  readonly #inflightLookups = new Map<string, Promise<string | undefined>>();
  #damagedEntries = 0;

  /** Use openWholeLayerCache, which creates the directory. */
  constructor(options: WholeLayerCacheOptions) {
    this.root = options.root;
    this.#dir = join(options.root, LAYERS_DIR);
    this.#onDamagedEntry = options.onDamagedEntry;
  }

  /** Entries found damaged and removed by this instance's lookups. */
  get damagedEntries(): number {
    return this.#damagedEntries;
  }

  /** Creates the directory and removes stale temp files; used by openWholeLayerCache. */
  async init(): Promise<void> {
    try {
      await mkdir(this.#dir, { recursive: true });
      for (const name of await readdir(this.#dir)) {
        if (!name.startsWith(TEMP_PREFIX)) continue;
        const path = join(this.#dir, name);
        try {
          const st = await lstat(path);
          if (st.isFile() && Date.now() - st.mtimeMs > STALE_TEMP_AGE_MS) await unlink(path);
        } catch (err) {
          if (!isMissing(err)) throw err;
        }
      }
    } catch (err) {
      throw new CacheError('cannot prepare the whole-layer cache directory', { path: this.#dir, cause: err });
    }
  }

  /** Where the layer's file lives once committed. */
  path(layerDigest: string): string {
    return join(this.#dir, `${this.#fileStem(layerDigest)}${WHOLE_LAYER_SUFFIX}`);
  }

  /** A fresh, unique path in the cache directory (same filesystem) for a writer to fill, then commit. */
  tempPath(layerDigest: string): string {
    const random = randomBytes(TEMP_NAME_RANDOM_BYTES).toString('hex');
    return join(this.#dir, `${TEMP_PREFIX}${this.#fileStem(layerDigest)}-${process.pid}-${random}`);
  }

  /**
   * Moves a finished file into place with its sidecar. `sha256Digest` is the "sha256:<hex>" of the file's
   * bytes as computed by the writer (not re-checked here; every lookup checks it). A temp file on another
   * filesystem is copied. Returns the final path.
   */
  async commit(layerDigest: string, tempPath: string, sha256Digest: string): Promise<string> {
    const finalPath = this.path(layerDigest);
    try {
      if (parseDigest(sha256Digest).algorithm !== 'sha256') throw new Error(`not a sha256 digest: ${sha256Digest}`);
    } catch (err) {
      throw new CacheError('invalid file digest for whole-layer commit', { layerDigest, path: tempPath, cause: err });
    }
    let sidecarTemp: string | undefined;
    let copyTemp: string | undefined;
    try {
      const st = await lstat(tempPath);
      if (!st.isFile()) throw new Error('not a regular file');
      const sidecar: WholeLayerSidecar = { layerDigest, size: st.size, sha256: sha256Digest };
      sidecarTemp = `${this.tempPath(layerDigest)}.meta`;
      await writeFile(sidecarTemp, `${JSON.stringify(sidecar, null, SIDECAR_JSON_INDENT)}\n`, { flag: 'wx' });
      await rename(sidecarTemp, this.#sidecarPath(layerDigest));
      sidecarTemp = undefined;
      try {
        await rename(tempPath, finalPath);
      } catch (err) {
        if (errnoCode(err) !== 'EXDEV') throw err;
        copyTemp = this.tempPath(layerDigest);
        await copyFile(tempPath, copyTemp);
        await rename(copyTemp, finalPath);
        copyTemp = undefined;
        await unlinkIfPresent(tempPath);
      }
      return finalPath;
    } catch (err) {
      if (sidecarTemp !== undefined) await unlinkIfPresent(sidecarTemp).catch(() => undefined);
      if (copyTemp !== undefined) await unlinkIfPresent(copyTemp).catch(() => undefined);
      throw new CacheError('cannot commit whole layer file', { layerDigest, path: tempPath, cause: err });
    }
  }

  /**
   * The committed file's path, when it exists and its size and SHA-256 match its sidecar; undefined
   * otherwise. A damaged file (or one without a usable sidecar) is removed. Re-hashes the whole file.
   */
  lookup(layerDigest: string): Promise<string | undefined> {
    const inflight = this.#inflightLookups.get(layerDigest);
    if (inflight !== undefined) return inflight;
    const check = this.#lookup(layerDigest).finally(() => this.#inflightLookups.delete(layerDigest));
    this.#inflightLookups.set(layerDigest, check);
    return check;
  }

  /** Deletes the layer's file and sidecar (absent ones are fine). */
  async remove(layerDigest: string): Promise<void> {
    const path = this.path(layerDigest);
    try {
      await unlinkIfPresent(path);
      await unlinkIfPresent(this.#sidecarPath(layerDigest));
    } catch (err) {
      throw new CacheError('cannot remove whole layer file', { layerDigest, path, cause: err });
    }
  }

  /** Committed files (not verified), for stats and garbage collection. */
  async list(): Promise<WholeLayerEntry[]> {
    const out: WholeLayerEntry[] = [];
    let names: string[];
    try {
      names = await readdir(this.#dir);
    } catch (err) {
      if (isMissing(err)) return out;
      throw new CacheError('cannot list the whole-layer cache', { path: this.#dir, cause: err });
    }
    for (const name of names.sort()) {
      const m = /^(sha256|sha512)-([0-9a-f]+)\.erofs$/.exec(name);
      if (m === null) continue;
      const layerDigest = `${m[1]}:${m[2]}`;
      const path = join(this.#dir, name);
      try {
        parseDigest(layerDigest);
        const st = await lstat(path);
        if (st.isFile()) out.push({ layerDigest, path, bytes: st.size });
      } catch {
        continue; // not ours, or removed meanwhile
      }
    }
    return out;
  }

  #fileStem(layerDigest: string): string {
    try {
      const { algorithm, hex } = parseDigest(layerDigest);
      return `${algorithm}-${hex}`;
    } catch (err) {
      throw new CacheError('invalid layer digest for the whole-layer cache', { cause: err });
    }
  }

  #sidecarPath(layerDigest: string): string {
    return join(this.#dir, `${this.#fileStem(layerDigest)}${WHOLE_LAYER_SIDECAR_SUFFIX}`);
  }

  async #lookup(layerDigest: string): Promise<string | undefined> {
    const path = this.path(layerDigest);
    const sidecarPath = this.#sidecarPath(layerDigest);
    let handle;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      // No file: a miss. A sidecar alone may belong to a commit in progress, so it stays.
      if (isMissing(err)) return undefined;
      throw new CacheError('cannot open whole layer file', { layerDigest, path, cause: err });
    }
    try {
      const st = await handle.stat();
      let sidecarText: string | undefined;
      let sidecarStat: Stats | undefined;
      try {
        const sidecarHandle = await open(sidecarPath, 'r');
        try {
          sidecarStat = await sidecarHandle.stat();
          sidecarText = await sidecarHandle.readFile('utf8');
        } finally {
          await sidecarHandle.close().catch(() => undefined);
        }
      } catch (err) {
        if (!isMissing(err)) throw err;
      }
      let reason: string | undefined;
      if (!st.isFile()) {
        reason = 'not a regular file';
      } else if (sidecarText === undefined) {
        reason = 'no sidecar';
      } else {
        const sidecar = parseSidecar(sidecarText, layerDigest);
        if (typeof sidecar === 'string') {
          reason = sidecar;
        } else if (st.size !== sidecar.size) {
          reason = `file is ${st.size} bytes, sidecar says ${sidecar.size}`;
        } else {
          const hash = createHash('sha256');
          const buffer = Buffer.alloc(Math.min(HASH_READ_BUFFER_BYTES, Math.max(1, st.size)));
          let position = 0;
          for (;;) {
            const { bytesRead } = await handle.read(buffer, 0, buffer.length, position);
            if (bytesRead === 0) break;
            hash.update(buffer.subarray(0, bytesRead));
            position += bytesRead;
          }
          const actual = `sha256:${hash.digest('hex')}`;
          if (position !== sidecar.size) reason = `read ${position} bytes, sidecar says ${sidecar.size}`;
          else if (actual !== sidecar.sha256) reason = `file hashes to ${actual}, sidecar says ${sidecar.sha256}`;
        }
      }
      if (reason === undefined) return path;
      this.#damagedEntries += 1;
      await unlinkIfSame(path, st);
      if (sidecarStat !== undefined) await unlinkIfSame(sidecarPath, sidecarStat);
      this.#onDamagedEntry?.({ layerDigest, path, reason });
      return undefined;
    } catch (err) {
      throw new CacheError('cannot check whole layer file', { layerDigest, path, cause: err });
    } finally {
      await handle.close().catch(() => undefined);
    }
  }
}

/** Opens (creating when missing) the whole-layer cache in `<root>/layers`, removing stale temp files. */
export async function openWholeLayerCache(options: WholeLayerCacheOptions): Promise<WholeLayerCache> {
  const cache = new WholeLayerCache(options);
  await cache.init();
  return cache;
}
