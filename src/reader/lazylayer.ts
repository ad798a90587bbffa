// The lazy layer chunk source: serves the raw EROFS image of one seekable layer (U bytes) on demand. A read maps
// to chunks; each chunk comes from the memory cache, else the disk cache, else the registry: the missing
// chunks of one read that are adjacent in the blob go out as one Range request, a chunk wanted by several
// reads is fetched once (single flight), requests in flight are bounded, and every frame is checked against
// its SHA-512 (before decoding, off the main thread) before anything is served or cached. A fetched run goes
// to the decoder whole (no copy per frame), which also hashes each decoded chunk for its disk cache entry;
// disk cache entries read back are checked by the same worker threads. Transient fetch errors are retried
// with backoff within a read deadline that no fetch, queue or disk can overrun.
import { availableParallelism } from 'node:os';
import { groupFrameRuns, frameFromRun, isSeekableReadError, IntegrityError, loadChunkTable, mapImageRange, SeekableFormatError } from '../chunktable/index.js';
import type { ChunkTable, FrameRun } from '../chunktable/index.js';
import type { ChunkKey, DiskChunkCache, DiskGetOptions, MemoryChunkCache } from '../cache/types.js';
import type { Descriptor } from '../oci/types.js';
import type { ChunkDecoder, DecodedChunk } from './decodepool.js';
import { sharedDecodePool } from './decodepool.js';
import { Deadline, ignoreRejection, raceSignal } from './deadline.js';
import { LayerClosedError, ReadDeadlineError } from './errors.js';
import type { FetchSite } from './errors.js';
import {
  DEFAULT_REQUEST_TIMEOUT_MS,
  DEFAULT_RETRY_INITIAL_DELAY_MS,
  DEFAULT_RETRY_MAX_DELAY_MS,
  fetchRangesWithRetry,
  fetchRangeWithRetry,
} from './fetcher.js';
import type { FetchHooks, RetryPolicy } from './fetcher.js';
import type { RegistryHealth } from './health.js';
import { RequestSemaphore } from './semaphore.js';
import type { RequestPriority } from './semaphore.js';
import { zeroReadCounters } from './types.js';
import type { LayerFileSource, LayerStats, MultiRangeFetcher, RangeFetcher, ReadCounters, ReaderLog } from './types.js';
import { errorMessage } from '../util/errors.js';

/** A read (and the fetches it starts) fails after this long, retries included. */
export const DEFAULT_READ_DEADLINE_MS = 30_000;
/** Range requests one layer has in flight at most. */
export const DEFAULT_MAX_INFLIGHT_REQUESTS = 8;
/** A coalesced Range request grows to at most this many bytes (a single larger frame still goes alone). */
export const DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024;
/**
 * Two missing frames of one read merge into one request when at most this many bytes of other frames (already
 * cached or in flight) lie between them: at 100 Mbit/s and 10 ms round trip, about one round trip's worth.
 */
export const DEFAULT_MAX_GAP_BYTES = 128 * 1024;
/**
 * Readahead: when a read has to go to the registry, the next chunk(s) after its last missing chunk ride along
 * in the same request (never a request of their own), unless already cached, on disk or in flight. It costs
 * no extra round trip and halves the round trips of a sequential scan; 0 turns it off.
 */
export const DEFAULT_READAHEAD_CHUNKS = 1;
/**
 * Sequential read-ahead from the disk cache: while reads continue where the previous one ended, the chunks
 * this far ahead that are on disk are loaded into memory in the background, so that the reader finds them
 * there instead of waiting for each one in turn. 0 turns it off.
 */
export const DEFAULT_SEQUENTIAL_READAHEAD_CHUNKS = 3;
/**
 * A sequential run this long (bytes read back to back) is a scan, not a small file the kernel reads ahead in:
 * from then on the read-ahead window also fetches from the registry, SEQUENTIAL_NETWORK_WINDOW_BYTES ahead.
 */
export const SEQUENTIAL_NETWORK_RAMP_BYTES = 8 * 1024 * 1024;
/** How far ahead of a long sequential scan the window fetches from the registry. */
export const SEQUENTIAL_NETWORK_WINDOW_BYTES = 16 * 1024 * 1024;
/** A frame failing its SHA-512 is fetched again at most this many times (bytes altered in transit). */
export const DEFAULT_INTEGRITY_RETRIES = 1;
/** Most runs a prefetch works on at once (each run is one request), on a machine with cores to spare. */
export const MAX_PREFETCH_CONCURRENCY = 4;
/**
 * Prefetch works on at most this many runs at once; reads still get the remaining request slots first
 * (RequestSemaphore). Several at once matter on a high-latency link, but each run is decoded and verified on
 * the same cores the reads need: one per core, at least 2, at most MAX_PREFETCH_CONCURRENCY. On 2 cores, a
 * 1 GiB profile prefetch under a sequential read ran at 177-201 MB/s with a 293-315 MiB peak with 2, against
 * 132-146 MB/s and 366-381 MiB with 4 (A/B in the same minute).
 */
export const DEFAULT_PREFETCH_CONCURRENCY = Math.min(MAX_PREFETCH_CONCURRENCY, Math.max(2, availableParallelism()));
/** Prefetch fills gaps of at most this many blob bytes between wanted chunks, to make one request of them. */
export const PREFETCH_MAX_GAP_BYTES = 512 * 1024;
/**
 * Disk-cache writes (each holding a decoded chunk) a prefetch lets pile up before it waits for them: on a slow
 * disk a fast registry would otherwise stack decoded chunks in memory far past the memory cache's bound (a
 * 1 GiB profile peaked at 433 MiB with a 128 MiB cache).
 */
export const PREFETCH_MAX_PENDING_WRITES = 4;
/**
 * Blob bytes of one prefetch request at most (the reads' own requests may be larger): what a prefetch holds in
 * flight is its concurrency times this, compressed, plus as much decoded.
 */
export const PREFETCH_MAX_REQUEST_BYTES = 8 * 1024 * 1024;
/** Most ranges asked for in one multi-range request (when multi-range requests are on). */
export const DEFAULT_MAX_RANGES_PER_REQUEST = 8;

export interface LazyLayerOptions {
  /** Default DEFAULT_READ_DEADLINE_MS. */
  readDeadlineMs?: number;
  /** Registry health shared by the layers of one mount; when absent, every fetch retries on its own. */
  health?: RegistryHealth;
  /** Per-request timeout; default DEFAULT_REQUEST_TIMEOUT_MS (capped by what is left of the deadline). */
  requestTimeoutMs?: number;
  /** Backoff of transient errors; defaults DEFAULT_RETRY_INITIAL_DELAY_MS, DEFAULT_RETRY_MAX_DELAY_MS. */
  retryInitialDelayMs?: number;
  retryMaxDelayMs?: number;
  /** Default DEFAULT_MAX_INFLIGHT_REQUESTS. */
  maxInflightRequests?: number;
  /** Slots prefetch may hold at once; default maxInflightRequests − 1 (at least 1). */
  maxPrefetchRequests?: number;
  /** Default DEFAULT_MAX_REQUEST_BYTES. */
  maxRequestBytes?: number;
  /** Default DEFAULT_MAX_GAP_BYTES. */
  maxGapBytes?: number;
  /** Default DEFAULT_READAHEAD_CHUNKS. */
  readaheadChunks?: number;
  /** Default DEFAULT_SEQUENTIAL_READAHEAD_CHUNKS. */
  sequentialReadaheadChunks?: number;
  /** Default SEQUENTIAL_NETWORK_RAMP_BYTES. */
  sequentialScanBytes?: number;
  /** Default SEQUENTIAL_NETWORK_WINDOW_BYTES. */
  sequentialScanWindowBytes?: number;
  /**
   * Ask for runs of missing chunks that are too far apart to merge (more than maxGapBytes) in one multi-range
   * request, when the init has fetchRanges. Default off: not every registry or CDN answers multi-range well.
   */
  multiRange?: boolean;
  /** Default DEFAULT_MAX_RANGES_PER_REQUEST. */
  maxRangesPerRequest?: number;
  /** Default DEFAULT_INTEGRITY_RETRIES. */
  integrityRetries?: number;
  /** Frame verifier/decoder; default the process-wide worker pool (sharedDecodePool). Not closed by the layer. */
  decoder?: ChunkDecoder;
  /** Random source for backoff jitter (tests). */
  random?: () => number;
}

export interface LazyLayerInit {
  /** File name in the FUSE mount; default "<algorithm>-<hex>.erofs" from the layer digest. */
  name?: string;
  /** The layer descriptor (trusted: it comes from a verified manifest). */
  descriptor: Descriptor;
  /** Its chunk table, loaded and verified against chunk_digest (loadChunkTable or openLazyLayer). */
  table: ChunkTable;
  fetchRange: RangeFetcher;
  /** Multi-range requests (used when options.multiRange is on and `enabled()` says the registry takes them). */
  fetchRanges?: MultiRangeFetcher;
  memory: MemoryChunkCache;
  disk?: DiskChunkCache;
  options?: LazyLayerOptions;
  /** Default: one line to stderr. */
  log?: ReaderLog;
}

interface Deferred {
  promise: Promise<Buffer>;
  resolve: (data: Buffer) => void;
  reject: (err: unknown) => void;
}

/** Flights owned by one fetch operation, by chunk index. */
type Flights = Map<number, Deferred>;

function deferred(): Deferred {
  let resolve!: (data: Buffer) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<Buffer>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Nobody may be waiting (a readahead chunk, a read already past its deadline): never an unhandled rejection.
  ignoreRejection(promise);
  return { promise, resolve, reject };
}

function checkPositive(name: string, value: number, allowZero = false): number {
  if (!Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    throw new RangeError(`${name} ${value} must be a ${allowZero ? 'non-negative' : 'positive'} number`);
  }
  return value;
}


const defaultLog: ReaderLog = (line) => {
  process.stderr.write(`${line}\n`);
};

export class LazyLayer implements LayerFileSource {
  readonly name: string;
  readonly size: number;
  readonly descriptor: Descriptor;
  readonly table: ChunkTable;
  readonly layerDigest: string;
  readonly readDeadlineMs: number;
  readonly #fetch: RangeFetcher;
  readonly #fetchRanges: MultiRangeFetcher | undefined;
  readonly #maxRangesPerRequest: number;
  readonly #memory: MemoryChunkCache;
  readonly #disk: DiskChunkCache | undefined;
  readonly #decoder: ChunkDecoder;
  /** Disk cache reads hash entries with the decoder's SHA-256 (off the main thread, no copy) when it has one. */
  readonly #diskGetOptions: DiskGetOptions;
  readonly #log: ReaderLog;
  readonly #semaphore: RequestSemaphore;
  readonly #policy: RetryPolicy;
  readonly #health: RegistryHealth | undefined;
  readonly #maxGapBytes: number;
  readonly #maxRequestBytes: number;
  readonly #readahead: number;
  readonly #sequentialReadahead: number;
  readonly #scanBytes: number;
  readonly #scanWindowBytes: number;
  readonly #integrityRetries: number;
  /** Single flight: the chunks being obtained (disk or network) right now, shared by every read. */
  readonly #inflight = new Map<number, Deferred>();
  /** End offset of the latest read, for sequential detection (none yet: never sequential). */
  #lastReadEnd = Number.POSITIVE_INFINITY;
  /** First read of each chunk, in order: [chunk, performance.now()] (for prefetch profiles). */
  readonly #accessLog: Array<readonly [number, number]> = [];
  readonly #accessed: Uint8Array;
  #lastReadAt = Number.NEGATIVE_INFINITY;
  /** Bytes read back to back in the current sequential run (0 after a jump). */
  #sequentialRunBytes = 0;
  /** The chunk the read-ahead window last started from, and whether it was a scan then. */
  #readAheadFrom = -1;
  #readAheadScan = false;
  /** Chunks found locally or fetched at least once (for fractionFetched). */
  readonly #present: Uint8Array;
  #presentCount = 0;
  readonly #pendingWrites = new Set<Promise<void>>();
  readonly #closer = new AbortController();
  #lastFetchError: unknown;
  readonly #c: ReadCounters = zeroReadCounters();

  constructor(init: LazyLayerInit) {
    const { descriptor, table } = init;
    const options = init.options ?? {};
    if (!table.verifiable) {
      throw new SeekableFormatError(19, `layer ${descriptor.digest}: chunk table has HashAlgo 0, frames cannot be verified; use the sequential path`);
    }
    this.descriptor = descriptor;
    this.table = table;
    this.layerDigest = descriptor.digest;
    this.name = init.name ?? `${descriptor.digest.replace(':', '-')}.erofs`;
    this.size = table.uncompressedSize;
    this.readDeadlineMs = checkPositive('readDeadlineMs', options.readDeadlineMs ?? DEFAULT_READ_DEADLINE_MS);
    this.#fetch = init.fetchRange;
    this.#fetchRanges = options.multiRange ? init.fetchRanges : undefined;
    this.#maxRangesPerRequest = Math.floor(checkPositive('maxRangesPerRequest', options.maxRangesPerRequest ?? DEFAULT_MAX_RANGES_PER_REQUEST));
    this.#memory = init.memory;
    this.#disk = init.disk;
    this.#decoder = options.decoder ?? sharedDecodePool();
    const decoder = this.#decoder;
    this.#diskGetOptions = decoder.sha256 ? { hasher: (bytes, from) => decoder.sha256!(bytes, from) } : {};
    this.#log = init.log ?? defaultLog;
    const maxInflight = options.maxInflightRequests ?? DEFAULT_MAX_INFLIGHT_REQUESTS;
    this.#semaphore = new RequestSemaphore(maxInflight, options.maxPrefetchRequests ?? Math.max(1, maxInflight - 1));
    this.#health = options.health;
    this.#policy = {
      requestTimeoutMs: checkPositive('requestTimeoutMs', options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS),
      retryInitialDelayMs: checkPositive('retryInitialDelayMs', options.retryInitialDelayMs ?? DEFAULT_RETRY_INITIAL_DELAY_MS, true),
      retryMaxDelayMs: checkPositive('retryMaxDelayMs', options.retryMaxDelayMs ?? DEFAULT_RETRY_MAX_DELAY_MS, true),
      random: options.random ?? Math.random,
    };
    this.#maxGapBytes = checkPositive('maxGapBytes', options.maxGapBytes ?? DEFAULT_MAX_GAP_BYTES, true);
    this.#maxRequestBytes = checkPositive('maxRequestBytes', options.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES);
    this.#readahead = Math.floor(checkPositive('readaheadChunks', options.readaheadChunks ?? DEFAULT_READAHEAD_CHUNKS, true));
    this.#scanBytes = checkPositive('sequentialScanBytes', options.sequentialScanBytes ?? SEQUENTIAL_NETWORK_RAMP_BYTES);
    this.#scanWindowBytes = checkPositive('sequentialScanWindowBytes', options.sequentialScanWindowBytes ?? SEQUENTIAL_NETWORK_WINDOW_BYTES, true);
    this.#sequentialReadahead = Math.floor(
      checkPositive('sequentialReadaheadChunks', options.sequentialReadaheadChunks ?? DEFAULT_SEQUENTIAL_READAHEAD_CHUNKS, true),
    );
    this.#integrityRetries = Math.floor(checkPositive('integrityRetries', options.integrityRetries ?? DEFAULT_INTEGRITY_RETRIES, true));
    this.#present = new Uint8Array(table.chunkCount);
    this.#accessed = new Uint8Array(table.chunkCount);
  }

  /** performance.now() of the latest read (−Infinity before the first), so background work can yield to reads. */
  get lastReadAt(): number {
    return this.#lastReadAt;
  }

  /** Whether chunk `index` has been found locally or fetched since the layer was opened. */
  isPresent(index: number): boolean {
    return this.#present[index] === 1;
  }

  /** The chunks reads have asked for, each once, in the order of their first read, with its time. */
  accessLog(): ReadonlyArray<readonly [chunk: number, at: number]> {
    return this.#accessLog;
  }

  /** Most range requests this layer has had in flight at once. */
  get peakInflightRequests(): number {
    return this.#semaphore.peak;
  }

  stats(): LayerStats {
    const n = this.table.chunkCount;
    return {
      layerDigest: this.layerDigest,
      imageSize: this.size,
      blobSize: this.descriptor.size,
      chunkCount: n,
      lazy: true,
      ...this.#c,
      fractionFetched: n === 0 ? 1 : this.#presentCount / n,
    };
  }

  /**
   * Reads image bytes `[offset, offset + length)`, clamped at U (a read at or past U returns no bytes). Rejects
   * with RangeError for a negative or non-integer offset/length, IntegrityError / SeekableFormatError when a
   * frame fails verification, ChunkFetchError for a permanent fetch failure, ReadDeadlineError after the
   * deadline, LayerClosedError after close().
   */
  async read(offset: number, length: number): Promise<Buffer> {
    this.#c.reads++;
    try {
      const out = await this.#read(offset, length);
      this.#c.bytesServed += out.length;
      return out;
    } catch (err) {
      this.#c.readErrors++;
      throw err;
    }
  }

  async #read(offset: number, length: number): Promise<Buffer> {
    if (this.#closer.signal.aborted) throw this.#closer.signal.reason;
    const slices = mapImageRange(this.table, offset, length, 'clamp');
    if (slices.length === 0) return Buffer.alloc(0);
    // A read that continues where a recent one ended (within one chunk) is a sequential reader and gets
    // read-ahead; a first touch of a region, such as one small file, fetches just the chunks it needs.
    const sequential = offset >= this.#lastReadEnd && offset - this.#lastReadEnd <= this.table.chunkSize;
    this.#lastReadEnd = offset + length;
    this.#sequentialRunBytes = sequential ? this.#sequentialRunBytes + length : 0;
    const chunks: Array<Buffer | Promise<Buffer>> = [];
    const owned: Flights = new Map();
    let waiting = false;
    const now = performance.now();
    this.#lastReadAt = now;
    for (const slice of slices) {
      if (this.#accessed[slice.index] === 0) {
        this.#accessed[slice.index] = 1;
        this.#accessLog.push([slice.index, now]);
      }
      const cached = this.#fromMemory(slice.index);
      if (cached) {
        chunks.push(cached);
        continue;
      }
      waiting = true;
      const flight = this.#inflight.get(slice.index);
      if (flight) {
        chunks.push(flight.promise);
      } else {
        const d = this.#register(slice.index);
        owned.set(slice.index, d);
        chunks.push(d.promise);
      }
    }
    if (sequential) this.#readAheadOf(slices[slices.length - 1]!.index, this.#sequentialRunBytes >= this.#scanBytes);
    let data: Buffer[];
    if (!waiting) {
      data = chunks as Buffer[];
    } else {
      if (owned.size > 0) ignoreRejection(this.#obtain(owned, 'demand', false, sequential));
      const deadline = new Deadline(
        this.readDeadlineMs,
        () =>
          new ReadDeadlineError(
            `layer ${this.layerDigest}: read of ${length} bytes at ${offset} did not complete within ${this.readDeadlineMs} ms${
              this.#lastFetchError === undefined ? '' : ` (last fetch error: ${errorMessage(this.#lastFetchError)})`
            }`,
            this.layerDigest,
            this.readDeadlineMs,
            { cause: this.#lastFetchError },
          ),
        this.#closer.signal,
      );
      try {
        data = await raceSignal(Promise.all(chunks), deadline.signal);
      } finally {
        deadline.dispose();
      }
    }
    // A read inside one chunk (nearly all: FUSE reads are at most 128 KiB) is a view of the cached chunk, no copy.
    if (slices.length === 1) return data[0]!.subarray(slices[0]!.lo, slices[0]!.hi);
    const total = slices.reduce((sum, s) => sum + (s.hi - s.lo), 0);
    const out = Buffer.allocUnsafe(total);
    slices.forEach((slice, k) => {
      data[k]!.copy(out, slice.outputOffset, slice.lo, slice.hi);
    });
    return out;
  }

  /**
   * Fetches chunks ahead of need, with lower priority than reads, in the order given (a recorded profile's
   * first-access order; neighbours in that order that are adjacent chunks share one request): skips chunks in
   * memory, on disk or in flight (waits for those in flight). Resolves when all are cached; rejects with an
   * AggregateError naming the chunks that could not be fetched.
   */
  async prefetch(indices: number[]): Promise<void> {
    for (const index of indices) {
      if (!Number.isInteger(index) || index < 0 || index >= this.table.chunkCount) {
        throw new RangeError(`layer ${this.layerDigest}: prefetch chunk index ${index} out of range [0, ${this.table.chunkCount})`);
      }
    }
    const candidates = [...new Set(indices)].filter((i) => !this.#fromMemory(i, false));
    const runs = this.#prefetchRuns(candidates);
    const errors: unknown[] = [];
    // Only the outcome is kept, never the chunk: holding the buffers would keep every prefetched chunk in
    // memory until the whole prefetch ends, far past the memory cache's bound.
    const waits: Array<Promise<void>> = [];
    const settled = (promise: Promise<Buffer>): Promise<void> => promise.then(() => undefined);
    let next = 0;
    // With multi-range requests on, one request carries several of the profile's scattered runs: far fewer
    // round trips on a high-latency link.
    const runsPerRequest = this.#fetchRanges?.enabled() ? this.#maxRangesPerRequest : 1;
    const worker = async (): Promise<void> => {
      while (next < runs.length && !this.#closer.signal.aborted) {
        while (this.#pendingWrites.size >= PREFETCH_MAX_PENDING_WRITES && !this.#closer.signal.aborted) await Promise.race(this.#pendingWrites);
        if (next >= runs.length) break;
        const group = runs.slice(next, next + runsPerRequest);
        next += group.length;
        const indices = group.flatMap((run) => run.indices);
        const onDisk = await this.#onDisk(indices);
        const owned: Flights = new Map();
        for (const index of indices) {
          const flight = this.#inflight.get(index);
          if (onDisk.has(index)) this.#markPresent(index);
          if (flight) {
            waits.push(settled(flight.promise));
          } else if (!onDisk.has(index) && !this.#fromMemory(index, false)) {
            const d = this.#register(index);
            owned.set(index, d);
            waits.push(settled(d.promise));
          }
        }
        if (owned.size > 0) await this.#obtain(owned, 'prefetch', true);
      }
    };
    await Promise.all(Array.from({ length: Math.min(DEFAULT_PREFETCH_CONCURRENCY, runs.length) }, worker));
    const results = await Promise.allSettled(waits);
    for (const r of results) if (r.status === 'rejected') errors.push(r.reason);
    if (this.#closer.signal.aborted) errors.push(this.#closer.signal.reason);
    if (errors.length > 0) {
      throw new AggregateError(errors, `layer ${this.layerDigest}: prefetch of ${candidates.length} chunks: ${errors.length} failed (first: ${errorMessage(errors[0])})`);
    }
  }

  /**
   * Prefetch requests for `indices` (in priority order): the chunks sorted and grouped into runs, small gaps
   * between them (at most PREFETCH_MAX_GAP_BYTES of blob) filled so that one request covers them, each run
   * ranked by the earliest position of its chunks in `indices`.
   */
  #prefetchRuns(indices: number[]): FrameRun[] {
    const rank = new Map<number, number>();
    indices.forEach((index, position) => {
      if (!rank.has(index)) rank.set(index, position);
    });
    const filled: number[] = [];
    for (const index of [...rank.keys()].sort((a, b) => a - b)) {
      const previous = filled[filled.length - 1];
      if (previous !== undefined && index > previous + 1) {
        const gap = this.table.frameRange(index).start - this.table.frameRange(previous).end;
        if (gap <= PREFETCH_MAX_GAP_BYTES) {
          for (let between = previous + 1; between < index; between++) {
            filled.push(between);
            rank.set(between, rank.get(index)!);
          }
        }
      }
      filled.push(index);
    }
    const runs = groupFrameRuns(this.table, filled, { maxGapBytes: 0, maxRequestBytes: Math.min(this.#maxRequestBytes, PREFETCH_MAX_REQUEST_BYTES) });
    const runRank = (run: FrameRun): number => Math.min(...run.indices.map((index) => rank.get(index)!));
    return runs.map((run) => ({ run, rank: runRank(run) })).sort((a, b) => a.rank - b.rank).map(({ run }) => run);
  }

  /** Waits until every chunk written so far has reached the disk cache (or failed to). */
  async flush(): Promise<void> {
    while (this.#pendingWrites.size > 0) await Promise.all(this.#pendingWrites);
  }

  /** Fails reads in progress and later with LayerClosedError, then waits for disk writes. Idempotent. */
  async close(): Promise<void> {
    if (!this.#closer.signal.aborted) this.#closer.abort(new LayerClosedError(this.layerDigest));
    await this.flush();
  }

  #key(index: number): ChunkKey {
    return { layerDigest: this.layerDigest, index };
  }

  #markPresent(index: number): void {
    if (this.#present[index] === 0) {
      this.#present[index] = 1;
      this.#presentCount++;
    }
  }

  /** The chunk from memory (a hit is counted unless `count` is false), or undefined. */
  #fromMemory(index: number, count = true): Buffer | undefined {
    const data = this.#memory.get(this.#key(index));
    if (!data || data.length !== this.table.chunkLength(index)) return undefined;
    if (count) {
      this.#c.memoryHits++;
      this.#markPresent(index);
    }
    return data;
  }

  #register(index: number): Deferred {
    const d = deferred();
    this.#inflight.set(index, d);
    return d;
  }

  /**
   * Settles chunk `index`'s flight among `flights` (those one #obtain call owns) and clears it from the shared
   * map, so that later reads find the chunk cached or, after a failure, try again.
   */
  #settle(flights: Flights, index: number, result: { data: Buffer } | { error: unknown }): void {
    const d = flights.get(index);
    if (!d) return;
    flights.delete(index);
    if (this.#inflight.get(index) === d) this.#inflight.delete(index);
    if ('data' in result) d.resolve(result.data);
    else d.reject(result.error);
  }

  /** Which of `indices` the disk cache holds (empty without a disk cache or on disk errors). */
  async #onDisk(indices: number[]): Promise<Set<number>> {
    const found = new Set<number>();
    const disk = this.#disk;
    if (!disk) return found;
    await Promise.all(
      indices.map(async (index) => {
        try {
          if (await disk.has(this.#key(index))) found.add(index);
        } catch (err) {
          this.#log(`erofs-lazy: disk cache lookup failed: layer ${this.layerDigest} chunk ${index}: ${errorMessage(err)}`);
        }
      }),
    );
    return found;
  }

  async #fromDisk(index: number): Promise<Buffer | undefined> {
    const disk = this.#disk;
    if (!disk) return undefined;
    const length = this.table.chunkLength(index);
    try {
      const data = await disk.get(this.#key(index), length, this.#diskGetOptions);
      return data && data.length === length ? data : undefined;
    } catch (err) {
      this.#log(`erofs-lazy: disk cache read failed: layer ${this.layerDigest} chunk ${index}: ${errorMessage(err)}`);
      return undefined;
    }
  }

  /** Puts a verified chunk into memory; a failing cache costs a later miss, never a read. */
  #remember(index: number, data: Buffer): void {
    try {
      this.#memory.set(this.#key(index), data);
    } catch (err) {
      this.#log(`erofs-lazy: memory cache write failed: layer ${this.layerDigest} chunk ${index}: ${errorMessage(err)}`);
    }
  }

  /** Puts a freshly fetched, verified chunk into memory and (in the background) on disk; `sha256` is its digest if known. */
  #store(index: number, data: Buffer, sha256: Uint8Array | undefined): void {
    this.#remember(index, data);
    const disk = this.#disk;
    if (!disk) return;
    const write: Promise<void> = Promise.resolve()
      .then(() => disk.put(this.#key(index), data, sha256 === undefined ? undefined : { sha256 }))
      .catch((err: unknown) => this.#log(`erofs-lazy: disk cache write failed: layer ${this.layerDigest} chunk ${index}: ${errorMessage(err)}`))
      .finally(() => this.#pendingWrites.delete(write));
    this.#pendingWrites.add(write);
  }

  /**
   * Obtains the chunks whose flights this call owns (already registered): disk first, then the registry, with
   * its own deadline so every flight settles even when no read waits for it any more.
   */
  async #obtain(flights: Flights, priority: RequestPriority, skipDisk = false, sequential = false): Promise<void> {
    const owned = [...flights.keys()];
    const deadline = new Deadline(
      this.readDeadlineMs,
      () => new ReadDeadlineError(`layer ${this.layerDigest}: chunks ${owned.join(',')} not obtained within ${this.readDeadlineMs} ms`, this.layerDigest, this.readDeadlineMs),
      this.#closer.signal,
    );
    try {
      let missing = owned;
      if (this.#disk && !skipDisk) {
        const found = await raceSignal(Promise.all(owned.map((index) => this.#fromDisk(index))), deadline.signal);
        missing = [];
        owned.forEach((index, k) => {
          const data = found[k];
          if (data) {
            this.#c.diskHits++;
            this.#markPresent(index);
            this.#remember(index, data);
            this.#settle(flights, index, { data });
          } else {
            missing.push(index);
          }
        });
      }
      if (missing.length === 0) return;
      const extra = sequential ? await this.#readaheadCandidates(missing, deadline) : [];
      const runs = groupFrameRuns(this.table, [...missing, ...extra], { maxGapBytes: this.#maxGapBytes, maxRequestBytes: this.#maxRequestBytes });
      const extraSet = new Set(extra);
      const wanted = runs.filter((run) => run.indices.some((index) => !extraSet.has(index)));
      // Register the readahead chunks that ride along; this runs synchronously after the candidates were checked.
      for (const run of wanted) for (const index of run.indices) if (extraSet.has(index)) flights.set(index, this.#register(index));
      await Promise.all(this.#batches(wanted).map((batch) => this.#fetchRuns(flights, batch, deadline, priority, 0)));
    } catch (err) {
      for (const index of [...flights.keys()]) this.#settle(flights, index, { error: err });
    } finally {
      deadline.dispose();
      // Safety net: nothing this call owns may stay in flight.
      const leftover = new Error(`layer ${this.layerDigest}: chunk fetch ended without a result`);
      for (const index of [...flights.keys()]) this.#settle(flights, index, { error: leftover });
    }
  }

  /**
   * Starts obtaining the chunks after `last` that a sequential reader will want next, in the background at
   * prefetch priority. Normally only chunks already in the disk cache (loaded into memory): going to the
   * registry ahead of reads would spend bytes on guesses, since the kernel's own read-ahead makes even a small
   * file's reads look sequential. Once the run is a long scan (`scan`: SEQUENTIAL_NETWORK_RAMP_BYTES read back
   * to back), chunks up to SEQUENTIAL_NETWORK_WINDOW_BYTES ahead are fetched from the registry too.
   */
  #readAheadOf(last: number, scan: boolean): void {
    if (this.#sequentialReadahead === 0 || this.#closer.signal.aborted) return;
    if (!scan && !this.#disk) return;
    // Once per chunk the reader moves into (a FUSE read is at most 128 KiB: dozens per chunk), not per read.
    if (last === this.#readAheadFrom && scan === this.#readAheadScan) return;
    this.#readAheadFrom = last;
    this.#readAheadScan = scan;
    const ahead = scan ? Math.max(this.#sequentialReadahead, Math.ceil(this.#scanWindowBytes / this.table.chunkSize)) : this.#sequentialReadahead;
    const candidates: number[] = [];
    for (let index = last + 1; index <= last + ahead && index < this.table.chunkCount; index++) {
      if (!this.#inflight.has(index) && !this.#fromMemory(index, false)) candidates.push(index);
    }
    if (candidates.length === 0) return;
    ignoreRejection(
      (async () => {
        const onDisk = scan ? undefined : await this.#onDisk(candidates);
        const owned: Flights = new Map();
        // Re-checked after the await: a read may have started or finished one of them meanwhile.
        for (const index of candidates) {
          if ((onDisk === undefined || onDisk.has(index)) && !this.#inflight.has(index) && !this.#fromMemory(index, false)) {
            owned.set(index, this.#register(index));
          }
        }
        if (owned.size > 0) await this.#obtain(owned, 'prefetch');
      })(),
    );
  }

  /** Chunks after the last missing one that are worth fetching in the same request (see DEFAULT_READAHEAD_CHUNKS). */
  async #readaheadCandidates(missing: number[], deadline: Deadline): Promise<number[]> {
    if (this.#readahead === 0) return [];
    const last = Math.max(...missing);
    const candidates: number[] = [];
    for (let index = last + 1; index <= last + this.#readahead && index < this.table.chunkCount; index++) {
      if (!this.#inflight.has(index) && !this.#fromMemory(index, false)) candidates.push(index);
    }
    if (candidates.length === 0) return [];
    let onDisk: Set<number>;
    try {
      onDisk = await raceSignal(this.#onDisk(candidates), deadline.signal);
    } catch {
      return [];
    }
    // Re-checked after the await: another read may have started or finished one of them meanwhile.
    return candidates.filter((index) => !onDisk.has(index) && !this.#inflight.has(index) && !this.#fromMemory(index, false));
  }

  /**
   * Runs fetched in one request each, or, with multi-range requests on (and taken by the registry), several
   * runs per request up to maxRangesPerRequest and maxRequestBytes.
   */
  #batches(runs: FrameRun[]): FrameRun[][] {
    if (!this.#fetchRanges?.enabled() || runs.length < 2) return runs.map((run) => [run]);
    const batches: FrameRun[][] = [];
    let current: FrameRun[] = [];
    let bytes = 0;
    for (const run of runs) {
      const size = run.end - run.start;
      if (current.length > 0 && (current.length >= this.#maxRangesPerRequest || bytes + size > this.#maxRequestBytes)) {
        batches.push(current);
        current = [];
        bytes = 0;
      }
      current.push(run);
      bytes += size;
    }
    if (current.length > 0) batches.push(current);
    return batches;
  }

  /** Fetches runs (one request; a multi-range one for several), then verifies, decodes, caches and settles them. */
  async #fetchRuns(flights: Flights, runs: FrameRun[], deadline: Deadline, priority: RequestPriority, integrityAttempt: number): Promise<void> {
    const first = runs[0]!;
    const last = runs[runs.length - 1]!;
    const site: FetchSite = { layerDigest: this.layerDigest, firstIndex: first.firstIndex, lastIndex: last.lastIndex, range: { start: first.start, end: last.end } };
    const hooks: FetchHooks = {
      onRequest: () => {
        this.#c.requests++;
      },
      onRetry: () => {
        this.#c.retries++;
      },
      onError: (err) => {
        this.#lastFetchError = err;
      },
    };
    let buffers: Buffer[];
    try {
      buffers =
        runs.length === 1 || !this.#fetchRanges
          ? [await fetchRangeWithRetry(this.#fetch, site, this.#policy, deadline, this.#semaphore, priority, hooks, this.#health)]
          : await fetchRangesWithRetry(this.#fetchRanges.fetch, runs, site, this.#policy, deadline, this.#semaphore, priority, hooks, this.#health);
    } catch (err) {
      for (const run of runs) for (const index of run.indices) this.#settle(flights, index, { error: err });
      return;
    }
    this.#lastFetchError = undefined;
    await Promise.all(runs.map((run, k) => this.#acceptRun(flights, run, buffers[k]!, deadline, priority, integrityAttempt)));
  }

  /**
   * Starts verifying and decoding the frames of one fetched run: one promise per chunk of the run, in order.
   * With a decoder that takes whole runs, the run's buffer goes to one worker as it is (no copy per frame) and
   * each decoded chunk comes back with its SHA-256 when it will be written to the disk cache.
   */
  #decodeRun(run: FrameRun, bytes: Buffer): Array<Promise<DecodedChunk>> {
    const contextOf = (index: number): string => {
      const { start, end } = this.table.frameRange(index);
      return ` (layer ${this.layerDigest}, blob range [${start}, ${end}))`;
    };
    const decoder = this.#decoder;
    if (decoder.decodeFrames) {
      try {
        // Checks the run's length (rule 15, as frameFromRun reports it) before anything is sent.
        frameFromRun(this.table, run, bytes, run.firstIndex);
      } catch (err) {
        return run.indices.map(() => Promise.reject(err));
      }
      const frames = run.indices.map((index) => ({ index, offset: this.table.frameRange(index).start - run.start, context: contextOf(index) }));
      return decoder.decodeFrames(this.table, frames, bytes, { sha256: this.#disk !== undefined });
    }
    return run.indices.map(async (index) => {
      // A run of one frame hands its whole buffer over (the decoder may transfer it to a worker).
      const frame = run.indices.length === 1 ? bytes : frameFromRun(this.table, run, bytes, index);
      return { data: await decoder.decode(this.table, index, frame, contextOf(index)) };
    });
  }

  /** Verifies and decodes the chunks of one fetched run, caches and settles them; refetches integrity failures. */
  async #acceptRun(flights: Flights, run: FrameRun, bytes: Buffer, deadline: Deadline, priority: RequestPriority, integrityAttempt: number): Promise<void> {
    this.#c.bytesFetched += bytes.length;
    const refetch: number[] = [];
    const decoded = this.#decodeRun(run, bytes);
    await Promise.all(
      run.indices.map(async (index, k) => {
        const { start, end } = this.table.frameRange(index);
        let chunk: DecodedChunk;
        try {
          chunk = await decoded[k]!;
        } catch (err) {
          const again = err instanceof IntegrityError && integrityAttempt < this.#integrityRetries;
          if (isSeekableReadError(err)) {
            this.#c.verificationFailures++;
            this.#log(
              `erofs-lazy: verification failed: layer ${this.layerDigest} chunk ${index} blob range [${start}, ${end}): ${errorMessage(err)}${again ? '; fetching it again' : ''}`,
            );
          }
          if (again) refetch.push(index);
          else this.#settle(flights, index, { error: err });
          return;
        }
        this.#c.chunksFetched++;
        this.#markPresent(index);
        this.#store(index, chunk.data, chunk.sha256);
        this.#settle(flights, index, { data: chunk.data });
      }),
    );
    if (refetch.length > 0) {
      this.#c.retries++;
      const runs = groupFrameRuns(this.table, refetch, { maxGapBytes: this.#maxGapBytes, maxRequestBytes: this.#maxRequestBytes });
      await Promise.all(runs.map((r) => this.#fetchRuns(flights, [r], deadline, priority, integrityAttempt + 1)));
    }
  }
}

export interface OpenLazyLayerInit extends Omit<LazyLayerInit, 'table'> {
  /** Skip loading when the caller already has the verified table. */
  table?: ChunkTable;
}

/**
 * Loads the layer's chunk table through `fetchRange` (one request, retried like chunk fetches within the read
 * deadline; checked against chunk_digest before parsing) and returns the LazyLayer. Rejects with
 * SeekableFormatError (rule 19) for a layer that cannot be served lazily.
 */
export async function openLazyLayer(init: OpenLazyLayerInit): Promise<LazyLayer> {
  if (init.table) return new LazyLayer({ ...init, table: init.table });
  const options = init.options ?? {};
  const deadlineMs = options.readDeadlineMs ?? DEFAULT_READ_DEADLINE_MS;
  const policy: RetryPolicy = {
    requestTimeoutMs: options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
    retryInitialDelayMs: options.retryInitialDelayMs ?? DEFAULT_RETRY_INITIAL_DELAY_MS,
    retryMaxDelayMs: options.retryMaxDelayMs ?? DEFAULT_RETRY_MAX_DELAY_MS,
    random: options.random ?? Math.random,
  };
  const digest = init.descriptor.digest;
  const deadline = new Deadline(
    deadlineMs,
    () => new ReadDeadlineError(`layer ${digest}: chunk table not fetched within ${deadlineMs} ms`, digest, deadlineMs),
  );
  const semaphore = new RequestSemaphore(1);
  const noHooks: FetchHooks = { onRequest: () => undefined, onRetry: () => undefined, onError: () => undefined };
  try {
    const table = await loadChunkTable(init.descriptor, (start, end) =>
      fetchRangeWithRetry(init.fetchRange, { layerDigest: digest, firstIndex: 0, lastIndex: 0, range: { start, end }, what: 'chunk table' }, policy, deadline, semaphore, 'demand', noHooks),
    );
    return new LazyLayer({ ...init, table });
  } finally {
    deadline.dispose();
  }
}
