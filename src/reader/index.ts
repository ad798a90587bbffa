// Public API of src/reader: the lazy layer chunk source (LazyLayer), its decode worker pool, the fetch
// reliability pieces (deadlines, retry policy, transient-error rule) and the interface types shared with
// src/fuse.
export type { LayerFileSource, LayerStats, MultiRangeFetcher, RangeFetcher, RangesFetcher, ReaderLog } from './types.js';
export {
  DEFAULT_READ_DEADLINE_MS,
  DEFAULT_MAX_INFLIGHT_REQUESTS,
  DEFAULT_MAX_REQUEST_BYTES,
  DEFAULT_MAX_GAP_BYTES,
  DEFAULT_READAHEAD_CHUNKS,
  DEFAULT_INTEGRITY_RETRIES,
  DEFAULT_PREFETCH_CONCURRENCY,
  DEFAULT_MAX_RANGES_PER_REQUEST,
  LazyLayer,
  openLazyLayer,
} from './lazylayer.js';
export type { LazyLayerInit, LazyLayerOptions, OpenLazyLayerInit } from './lazylayer.js';
export {
  DEFAULT_MAX_DECODE_WORKERS,
  DEFAULT_INLINE_MAX_CHUNK_BYTES,
  DecodePool,
  DecodeWorkerError,
  InlineDecoder,
  defaultDecodeWorkers,
  sharedDecodePool,
} from './decodepool.js';
export type { ChunkDecoder, DecodedChunk, DecodePoolOptions, HashedBytes, RunFrame } from './decodepool.js';
export {
  DEFAULT_REQUEST_TIMEOUT_MS,
  DEFAULT_RETRY_INITIAL_DELAY_MS,
  DEFAULT_RETRY_MAX_DELAY_MS,
  RETRY_BACKOFF_FACTOR,
  RETRY_JITTER,
  backoffDelay,
  fetchRangesWithRetry,
  fetchRangeWithRetry,
  multiRangeFetcherFromStore,
  rangeFetcherFromStore,
} from './fetcher.js';
export type { RetryPolicy, FetchHooks } from './fetcher.js';
export {
  ChunkFetchError,
  LayerClosedError,
  ReadDeadlineError,
  RequestTimeoutError,
  ShortFetchError,
  TRANSIENT_ERROR_CODES,
  TRANSIENT_HTTP_STATUSES,
  describeSite,
  isTransientFetchError,
} from './errors.js';
export type { FetchSite } from './errors.js';
export { RequestSemaphore } from './semaphore.js';
export type { RequestPriority, Release } from './semaphore.js';
export { Deadline, raceSignal, sleep } from './deadline.js';
export { DEFAULT_PROBE_INTERVAL_MS, RegistryHealth, RegistryUnavailableError } from './health.js';
