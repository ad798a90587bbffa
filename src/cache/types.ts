// Interfaces of the two chunk-cache tiers the read path uses: decompressed, verified chunks keyed by
// layer digest and chunk index, in memory (bounded LRU) and on disk (bounded, shared by every mount).

export interface ChunkKey {
  /** Layer blob digest, "sha256:<hex>". */
  layerDigest: string;
  /** Chunk index i in the layer's chunk table. */
  index: number;
}

/** In-process LRU of decompressed chunks, bounded in bytes. Synchronous: it sits on the hot path. */
export interface MemoryChunkCache {
  get(key: ChunkKey): Buffer | undefined;
  set(key: ChunkKey, data: Buffer): void;
  /** Bytes currently held. */
  readonly size: number;
  readonly maxSize: number;
}

/**
 * Computes the SHA-256 of `bytes.subarray(from)`, e.g. on a worker thread. It may take `bytes`' memory and
 * hand it back as the result's `bytes` (the caller then uses that Buffer, never the one it passed).
 */
export type ChunkHasher = (bytes: Buffer, from: number) => Promise<{ bytes: Buffer; sha256: Uint8Array }>;

export interface DiskGetOptions {
  /** Hashes the entry's data to check it; default: SHA-256 on libuv's thread pool (WebCrypto, one copy). */
  hasher?: ChunkHasher;
}

export interface DiskPutOptions {
  /**
   * SHA-256 of `data`, when the caller already has it (computed from those very bytes, e.g. by the worker that
   * decoded them); saves hashing the chunk again. A wrong value only makes the entry fail its check later.
   */
  sha256?: Uint8Array;
}

/**
 * On-disk cache of decompressed chunks. Writes are atomic (temp file + rename); reads verify the entry's
 * own checksum and length, so a torn or altered file is reported as a miss (and removed), never returned.
 * Bounded by total bytes with least-recently-used eviction. Safe to share between processes.
 */
export interface DiskChunkCache {
  /** The verified chunk, or undefined when absent or damaged. `expectedLength` is size_i. */
  get(key: ChunkKey, expectedLength: number, options?: DiskGetOptions): Promise<Buffer | undefined>;
  put(key: ChunkKey, data: Buffer, options?: DiskPutOptions): Promise<void>;
  /** Whether the chunk is on disk (no verification; for stats and prefetch planning). */
  has(key: ChunkKey): Promise<boolean>;
  /** Removes every chunk of a layer. */
  removeLayer(layerDigest: string): Promise<void>;
  readonly root: string;
  readonly maxBytes: number;
  /** Counts of entries found damaged and discarded since start. */
  readonly corruptEntries: number;
}
