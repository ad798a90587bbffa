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
 * On-disk cache of decompressed chunks. Writes are atomic (temp file + rename); reads verify the entry's
 * own checksum and length, so a torn or altered file is reported as a miss (and removed), never returned.
 * Bounded by total bytes with least-recently-used eviction. Safe to share between processes.
 */
export interface DiskChunkCache {
  /** The verified chunk, or undefined when absent or damaged. `expectedLength` is size_i. */
  get(key: ChunkKey, expectedLength: number): Promise<Buffer | undefined>;
  put(key: ChunkKey, data: Buffer): Promise<void>;
  /** Whether the chunk is on disk (no verification; for stats and prefetch planning). */
  has(key: ChunkKey): Promise<boolean>;
  /** Removes every chunk of a layer. */
  removeLayer(layerDigest: string): Promise<void>;
  readonly root: string;
  readonly maxBytes: number;
  /** Counts of entries found damaged and discarded since start. */
  readonly corruptEntries: number;
}
