// The chunk-source interface between the FUSE filesystem (src/fuse) and what serves a layer file's bytes:
// a lazy seekable layer (src/reader/lazylayer) or a whole layer already on local disk.
import type { ByteRange } from '../oci/store.js';

/** One read-only file of a known size that can be read at any offset. */
export interface LayerFileSource {
  /** File name inside the FUSE mount, e.g. "sha256-<hex>.erofs". */
  readonly name: string;
  /** Size in bytes (the raw EROFS image size). */
  readonly size: number;
  /**
   * Reads up to `length` bytes at `offset` (clamped at `size`); the result holds only verified bytes.
   * Rejects when the bytes cannot be produced; the FUSE layer turns that into EIO. The result may be a view
   * of cached memory: callers copy from it and never write to it.
   */
  read(offset: number, length: number): Promise<Buffer>;
}

/** Counters of one layer's read path. */
export interface ReadCounters {
  bytesFetched: number;
  requests: number;
  chunksFetched: number;
  memoryHits: number;
  diskHits: number;
  bytesServed: number;
  reads: number;
  readErrors: number;
  verificationFailures: number;
  retries: number;
}

export function zeroReadCounters(): ReadCounters {
  return {
    bytesFetched: 0,
    requests: 0,
    chunksFetched: 0,
    memoryHits: 0,
    diskHits: 0,
    bytesServed: 0,
    reads: 0,
    readErrors: 0,
    verificationFailures: 0,
    retries: 0,
  };
}

/** What `erofs-lazy stats` reports of one layer. */
export interface LayerStats extends ReadCounters {
  layerDigest: string;
  /** Raw image size U. */
  imageSize: number;
  blobSize: number;
  chunkCount: number;
  /** Whether the layer is served lazily (seekable) or was fetched whole. */
  lazy: boolean;
  /** Why a layer is not lazy, when it is not. */
  notLazyReason?: string;
  /** Distinct chunks fetched or found in the disk cache, over chunkCount. */
  fractionFetched: number;
}

/**
 * Fetches the blob bytes `[start, end)` (end exclusive) of one layer, e.g. one HTTP Range request.
 * `signal` aborts the request (the caller also enforces its own deadline, so a fetcher that ignores the signal
 * cannot hang a read). The returned Buffer belongs to the caller from then on: the reader may transfer its
 * memory to a worker thread, so never return a view of memory the fetcher keeps using.
 */
export type RangeFetcher = (start: number, end: number, signal: AbortSignal) => Promise<Buffer>;

/** Fetches several sorted, disjoint blob ranges in one request (a multi-range request); one buffer per range. */
export type RangesFetcher = (ranges: readonly ByteRange[], signal: AbortSignal) => Promise<Buffer[]>;

/** Multi-range requests to one layer blob, while the registry takes them. */
export interface MultiRangeFetcher {
  fetch: RangesFetcher;
  /** False once the registry refused a multi-range request: then the reader asks one range per request. */
  enabled(): boolean;
}

/** Sink for one-line operational messages of the read path (verification failures, cache write errors). */
export type ReaderLog = (line: string) => void;
