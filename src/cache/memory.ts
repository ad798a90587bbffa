// Memory tier of the chunk cache: an in-process LRU (lru-cache) of decompressed, verified chunks, bounded by
// the total bytes of the chunks it holds. A chunk larger than the bound is not kept. Synchronous: it sits on
// the FUSE read hot path. Buffers are stored by reference, not copied; callers must not mutate them.
import { LRUCache } from 'lru-cache';
import { CacheError } from './errors.js';
import type { ChunkKey, MemoryChunkCache } from './types.js';

/** Default bound of the memory tier: 128 MiB of chunk data. */
export const DEFAULT_MEMORY_CACHE_BYTES = 128 * 1024 * 1024;

/** lru-cache requires a positive size per entry; an empty chunk is counted as this many bytes. */
const MIN_ENTRY_SIZE = 1;

function memoryKey(key: ChunkKey): string {
  return `${key.layerDigest}#${key.index}`;
}

export class LruChunkCache implements MemoryChunkCache {
  readonly maxSize: number;
  /** Undefined when maxSize is 0 (the tier is disabled and keeps nothing). */
  readonly #lru: LRUCache<string, Buffer> | undefined;

  constructor(maxBytes: number = DEFAULT_MEMORY_CACHE_BYTES) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
      throw new CacheError(`memory cache size must be a non-negative integer, got ${maxBytes}`);
    }
    this.maxSize = maxBytes;
    this.#lru =
      maxBytes === 0
        ? undefined
        : new LRUCache<string, Buffer>({
            maxSize: maxBytes,
            sizeCalculation: (data) => Math.max(MIN_ENTRY_SIZE, data.length),
          });
  }

  get(key: ChunkKey): Buffer | undefined {
    return this.#lru?.get(memoryKey(key));
  }

  /** Keeps the chunk (evicting least recently used ones); a chunk bigger than maxSize is not kept. */
  set(key: ChunkKey, data: Buffer): void {
    this.#lru?.set(memoryKey(key), data);
  }

  delete(key: ChunkKey): void {
    this.#lru?.delete(memoryKey(key));
  }

  clear(): void {
    this.#lru?.clear();
  }

  /** Bytes currently held. */
  get size(): number {
    return this.#lru?.calculatedSize ?? 0;
  }

  /** Number of chunks currently held. */
  get entries(): number {
    return this.#lru?.size ?? 0;
  }
}

export function createMemoryChunkCache(maxBytes: number = DEFAULT_MEMORY_CACHE_BYTES): LruChunkCache {
  return new LruChunkCache(maxBytes);
}
