// Where the reader gets image bytes: an ErofsSource is any random-access `read(offset, length)` of a known size
// (a LazyLayer, a local file, a Buffer), and the BlockReader on top of it keeps recently used blocks in a
// bounded LRU with single flight, fetches runs of missing blocks in one read, and turns short reads and reads
// past the end of the image into ErofsFormatError naming the structure that wanted the bytes.
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { LRUCache } from 'lru-cache';
import { ErofsFormatError } from './errors.js';
import type { ErofsStructure } from './errors.js';

/** Random-access bytes of one EROFS image (LazyLayer satisfies this: LayerFileSource). */
export interface ErofsSource {
  /** Image size in bytes. */
  readonly size: number;
  /** Up to `length` bytes at `offset`, clamped at `size`. */
  read(offset: number, length: number): Promise<Buffer>;
}

/** Default bound of the metadata block cache of one image. */
export const DEFAULT_BLOCK_CACHE_BYTES = 16 * 1024 * 1024;
/** A single cached read never asks the source for more than this many bytes at once. */
const MAX_CACHED_READ_BYTES = 4 * 1024 * 1024;

/** An in-memory image (tests, small images). */
export function bufferSource(data: Buffer): ErofsSource {
  return {
    size: data.length,
    read: async (offset, length) => data.subarray(Math.min(offset, data.length), Math.min(offset + length, data.length)),
  };
}

export interface FileSource extends ErofsSource {
  close(): Promise<void>;
}

/** A local image file, read with positional reads. */
export async function fileSource(path: string): Promise<FileSource> {
  const fh: FileHandle = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    return {
      size,
      async read(offset, length) {
        const n = Math.max(0, Math.min(length, size - offset));
        const buf = Buffer.alloc(n);
        let done = 0;
        while (done < n) {
          const { bytesRead } = await fh.read(buf, done, n - done, offset + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
        return done === n ? buf : buf.subarray(0, done);
      },
      close: () => fh.close(),
    };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

export interface BlockReaderOptions {
  /** Default DEFAULT_BLOCK_CACHE_BYTES; 0 keeps nothing. */
  cacheBytes?: number;
}

/** Block-granular, cached, bounds-checked reads of an ErofsSource. */
export class BlockReader {
  readonly source: ErofsSource;
  readonly blockSize: number;
  readonly size: number;
  readonly #cache: LRUCache<number, Buffer> | undefined;
  readonly #inflight = new Map<number, Promise<Buffer>>();

  constructor(source: ErofsSource, blockSize: number, options: BlockReaderOptions = {}) {
    this.source = source;
    this.blockSize = blockSize;
    this.size = source.size;
    const bytes = options.cacheBytes ?? DEFAULT_BLOCK_CACHE_BYTES;
    this.#cache = bytes >= blockSize ? new LRUCache<number, Buffer>({ maxSize: bytes, sizeCalculation: (b) => Math.max(1, b.length) }) : undefined;
  }

  /** Throws unless `[offset, offset + length)` lies inside the image. */
  check(offset: number, length: number, structure: ErofsStructure, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new ErofsFormatError(structure, offset, `${what}: ${length} bytes at offset ${offset} lie outside the image (${this.size} bytes)`);
    }
  }

  /** Exactly `length` bytes at `offset` through the block cache (for metadata: small reads). */
  async read(offset: number, length: number, structure: ErofsStructure, what: string): Promise<Buffer> {
    this.check(offset, length, structure, what);
    if (length === 0) return Buffer.alloc(0);
    if (length > MAX_CACHED_READ_BYTES) return this.readDirect(offset, length, structure, what);
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    if (first === last) {
      const block = await this.#block(first, structure, what);
      const start = offset - first * bs;
      if (start + length > block.length) throw this.#short(offset, length, structure, what);
      return block.subarray(start, start + length);
    }
    this.#startBlocks(first, last, structure, what);
    const parts = await Promise.all(Array.from({ length: last - first + 1 }, (_, k) => this.#block(first + k, structure, what)));
    const all = Buffer.concat(parts);
    const start = offset - first * bs;
    if (start + length > all.length) throw this.#short(offset, length, structure, what);
    return all.subarray(start, start + length);
  }

  /** Exactly `length` bytes at `offset` straight from the source, not cached (file data). */
  async readDirect(offset: number, length: number, structure: ErofsStructure, what: string): Promise<Buffer> {
    this.check(offset, length, structure, what);
    if (length === 0) return Buffer.alloc(0);
    const data = await this.source.read(offset, length);
    if (data.length !== length) throw this.#short(offset, length, structure, what);
    return data;
  }

  #short(offset: number, length: number, structure: ErofsStructure, what: string): ErofsFormatError {
    return new ErofsFormatError(structure, offset, `${what}: the image ends before ${length} bytes at offset ${offset} could be read`);
  }

  /** Starts loading the missing blocks of [first, last] in runs (one source read per run). */
  #startBlocks(first: number, last: number, structure: ErofsStructure, what: string): void {
    let runStart = -1;
    for (let b = first; b <= last + 1; b++) {
      const missing = b <= last && !this.#cache?.has(b) && !this.#inflight.has(b);
      if (missing && runStart < 0) runStart = b;
      if (!missing && runStart >= 0) {
        this.#loadRun(runStart, b - 1, structure, what);
        runStart = -1;
      }
    }
  }

  /** One source read for blocks [first, last]; each block gets its own in-flight promise until it settles. */
  #loadRun(first: number, last: number, structure: ErofsStructure, what: string): void {
    const bs = this.blockSize;
    const offset = first * bs;
    const length = Math.min((last - first + 1) * bs, this.size - offset);
    const whole = this.source.read(offset, length).then((data) => {
      if (data.length !== length) throw this.#short(offset, length, structure, what);
      return data;
    });
    for (let b = first; b <= last; b++) {
      const p = whole.then((data) => {
        const block = data.subarray((b - first) * bs, Math.min((b - first + 1) * bs, data.length));
        this.#cache?.set(b, block);
        return block;
      });
      this.#inflight.set(b, p);
      p.then(
        () => this.#settled(b, p),
        () => this.#settled(b, p),
      );
    }
  }

  #settled(index: number, p: Promise<Buffer>): void {
    if (this.#inflight.get(index) === p) this.#inflight.delete(index);
  }

  async #block(index: number, structure: ErofsStructure, what: string): Promise<Buffer> {
    const cached = this.#cache?.get(index);
    if (cached) return cached;
    if (!this.#inflight.has(index)) this.#loadRun(index, index, structure, what);
    return this.#inflight.get(index)!;
  }
}
