// Range mapping for random access (spec §6): which chunks, which frame bytes, and which slice of each decoded
// chunk an image byte range needs; and grouping of chunk frames into contiguous blob runs so that a fetcher
// can issue one Range request per run.
import { SeekableFormatError } from './errors.js';
import type { ByteRange, ChunkGeometry } from './table.js';

/**
 * What to do with a request that reaches past the end of the image `U`:
 * 'reject' throws RangeError; 'clamp' cuts it at `U` (a read at or past `U` maps to nothing), like read(2).
 */
export type PastEndPolicy = 'reject' | 'clamp';
export const DEFAULT_PAST_END_POLICY: PastEndPolicy = 'reject';

/** One chunk's share of an image range. */
export interface ChunkSlice {
  /** Chunk index i. */
  index: number;
  /** Blob range `[Start_i, End_i)` of the chunk's frame. */
  frame: ByteRange;
  /** Decoded size of the chunk, `size_i`. */
  chunkLength: number;
  /** Wanted bytes of the decoded chunk, `[lo, hi)`. */
  lo: number;
  hi: number;
  /** Where `data[lo, hi)` goes in the caller's output buffer (relative to the requested offset). */
  outputOffset: number;
}

function checkCount(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${name} ${value} is not an integer in [0, 2^53-1]`);
  }
}

/**
 * Maps the image byte range `[offset, offset + length)` to chunk slices (spec §6 pseudo code), in chunk order.
 * A zero length (or a clamped range that is empty) maps to an empty list.
 */
export function mapImageRange(
  table: ChunkGeometry,
  offset: number,
  length: number,
  policy: PastEndPolicy = DEFAULT_PAST_END_POLICY,
): ChunkSlice[] {
  checkCount('offset', offset);
  checkCount('length', length);
  const U = table.uncompressedSize;
  const C = table.chunkSize;
  let len = length;
  if (policy === 'clamp') {
    if (offset >= U) return [];
    len = Math.min(length, U - offset);
  } else if (offset > U || length > U - offset) {
    throw new RangeError(`image range [${offset}, ${offset}+${length}) reaches past the image size ${U}`);
  }
  if (len === 0) return [];
  const end = offset + len;
  const first = Math.floor(offset / C);
  const last = Math.floor((end - 1) / C);
  if (last >= table.chunkCount) {
    throw new RangeError(`chunk ${last} needed for image offset ${end - 1}, table has ${table.chunkCount} chunks`);
  }
  const slices: ChunkSlice[] = [];
  for (let i = first; i <= last; i++) {
    const base = i * C;
    const size = Math.min(C, U - base);
    const lo = Math.max(offset, base) - base;
    const hi = Math.min(end, base + size) - base;
    slices.push({ index: i, frame: table.frameRange(i), chunkLength: size, lo, hi, outputOffset: base + lo - offset });
  }
  return slices;
}

/** A contiguous blob range covering the frames of chunks `firstIndex..lastIndex`. */
export interface FrameRun {
  /** Blob range to fetch: `[Start_first, End_last)`. */
  start: number;
  end: number;
  firstIndex: number;
  lastIndex: number;
  /** The requested chunk indices inside this run (gap frames fetched only to merge requests are not listed). */
  indices: number[];
}

export interface GroupRunsOptions {
  /** Merge two requested frames when at most this many bytes of unrequested frames lie between them. */
  maxGapBytes?: number;
  /** Do not grow a run beyond this many bytes (a single larger frame still gets its own run). */
  maxRequestBytes?: number;
}

/** By default only adjacent frames merge, and runs have no size limit. */
export const DEFAULT_MAX_GAP_BYTES = 0;
export const DEFAULT_MAX_REQUEST_BYTES = Number.POSITIVE_INFINITY;

/**
 * Groups chunk indices (any order, duplicates ignored) into runs of contiguous frames, so that each run is one
 * Range request `bytes=start-(end-1)`.
 */
export function groupFrameRuns(table: ChunkGeometry, indices: Iterable<number>, options: GroupRunsOptions = {}): FrameRun[] {
  const maxGap = options.maxGapBytes ?? DEFAULT_MAX_GAP_BYTES;
  const maxRequest = options.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES;
  if (!(maxGap >= 0)) throw new RangeError(`maxGapBytes ${maxGap} must be >= 0`);
  if (!(maxRequest > 0)) throw new RangeError(`maxRequestBytes ${maxRequest} must be > 0`);
  const sorted = [...new Set(indices)].sort((a, b) => a - b);
  const runs: FrameRun[] = [];
  let current: FrameRun | undefined;
  for (const index of sorted) {
    const frame = table.frameRange(index);
    if (current && frame.start - current.end <= maxGap && frame.end - current.start <= maxRequest) {
      current.end = frame.end;
      current.lastIndex = index;
      current.indices.push(index);
    } else {
      current = { start: frame.start, end: frame.end, firstIndex: index, lastIndex: index, indices: [index] };
      runs.push(current);
    }
  }
  return runs;
}

/**
 * The frame bytes of chunk `index` inside the fetched bytes of `run`. A fetch that returned a different
 * number of bytes than the run spans is a truncated/overlong frame section (rule 15).
 */
export function frameFromRun(table: ChunkGeometry, run: FrameRun, runBytes: Uint8Array, index: number): Uint8Array {
  if (runBytes.length !== run.end - run.start) {
    throw new SeekableFormatError(15, `fetched ${runBytes.length} bytes for blob range [${run.start}, ${run.end}), want ${run.end - run.start}`);
  }
  if (index < run.firstIndex || index > run.lastIndex) {
    throw new RangeError(`chunk ${index} is not inside the run of chunks ${run.firstIndex}..${run.lastIndex}`);
  }
  const frame = table.frameRange(index);
  return runBytes.subarray(frame.start - run.start, frame.end - run.start);
}
