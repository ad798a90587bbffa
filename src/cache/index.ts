// Public API of the chunk caches: the memory tier, the disk tier and the whole-layer file cache.
export type { ChunkHasher, ChunkKey, DiskChunkCache, DiskGetOptions, DiskPutOptions, MemoryChunkCache } from './types.js';
export { CacheError } from './errors.js';
export type { CacheErrorContext } from './errors.js';
export { createMemoryChunkCache, DEFAULT_MEMORY_CACHE_BYTES, LruChunkCache } from './memory.js';
export {
  CHUNK_FILE_MAGIC,
  CHUNK_FILE_VERSION,
  CHUNK_HEADER_BYTES,
  CHUNK_LAYOUT_DIR,
  CHUNKS_DIR,
  DEFAULT_CACHE_DIR,
  DEFAULT_DISK_CACHE_MAX_BYTES,
  FileChunkCache,
  openDiskChunkCache,
} from './disk.js';
export type { CorruptEntryInfo, DiskChunkCacheOptions, LayerUsage } from './disk.js';
export {
  LAYERS_DIR,
  openWholeLayerCache,
  WHOLE_LAYER_SIDECAR_SUFFIX,
  WHOLE_LAYER_SUFFIX,
  WholeLayerCache,
} from './wholefile.js';
export type { WholeLayerCacheOptions, WholeLayerEntry, WholeLayerSidecar } from './wholefile.js';
