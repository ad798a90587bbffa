// Data frame decoder for random access (spec §4, §6, §7): checks a chunk's compressed frame against its
// chunk table SHA-512 before anything else, then proves it is exactly one plain zstd frame within the
// format's limits, and decodes it with output capped at the chunk's size (spec §10 rules 13–17, 19).
import zstd from 'zstd-napi/binding.js';
import { verifyFrameDigest } from '../verity/digests.js';
import { SeekableFormatError } from './errors.js';
import { SKIPPABLE_MAGIC_FIRST, SKIPPABLE_MAGIC_LAST } from './table.js';
import type { ChunkTable } from './table.js';
import { errorMessage } from '../util/errors.js';

/** Standard zstd frame magic (bytes 28 B5 2F FD). */
export const ZSTD_FRAME_MAGIC = 0xfd2fb528;
/** Readers must accept windows up to 8 MiB; larger ones only up to the chunk size (rule 16). */
export const MIN_WINDOW_LIMIT = 8 * 1024 * 1024;
/** Frame header bytes needed before the header's own size is known (magic + descriptor). */
export const ZSTD_FRAME_HEADER_PREFIX = 5;
/** Largest zstd frame header (magic, descriptor, window, 4-byte dictionary id, 8-byte content size). */
export const ZSTD_MAX_FRAME_HEADER = 18;

/** Dictionary_ID field size by Dictionary_ID_Flag. */
const DICT_ID_SIZES = [0, 1, 2, 4] as const;
/** Frame_Content_Size field size by Frame_Content_Size_Flag (flag 0: 1 byte if single segment, else 0). */
const FCS_SIZES = [0, 2, 4, 8] as const;
/** Frame_Content_Size_Flag 1 stores the size minus 256. */
const FCS_TWO_BYTE_BIAS = 256;
/** Window_Descriptor: windowLog = 10 + Exponent. */
const WINDOW_LOG_BASE = 10;
const RESERVED_BIT = 0x08;

/** The fields of a zstd frame header that this format constrains. */
export interface ZstdFrameHeader {
  /** Bytes from the magic through Frame_Content_Size. */
  headerSize: number;
  singleSegment: boolean;
  hasChecksum: boolean;
  /** 0 when absent. */
  dictionaryId: number;
  /** Window size in bytes (= content size for single-segment frames). */
  windowSize: number;
  /** Frame_Content_Size, when present. */
  contentSize: bigint | undefined;
}

/**
 * Parses a standard zstd frame header at the start of `bytes` (RFC 8878 §3.1.1.1). Returns `{ needMore }` when
 * more bytes are needed; throws SeekableFormatError for a skippable frame (rule 16), another magic or a set
 * reserved bit (rule 15).
 */
export function parseZstdFrameHeader(bytes: Uint8Array, what = 'frame'): ZstdFrameHeader | { needMore: number } {
  if (bytes.length < ZSTD_FRAME_HEADER_PREFIX) return { needMore: ZSTD_FRAME_HEADER_PREFIX };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0, true);
  if (magic >= SKIPPABLE_MAGIC_FIRST && magic <= SKIPPABLE_MAGIC_LAST) {
    throw new SeekableFormatError(16, `${what}: starts with a skippable frame (magic 0x${magic.toString(16)}), not a zstd data frame`);
  }
  if (magic !== ZSTD_FRAME_MAGIC) {
    throw new SeekableFormatError(15, `${what}: magic 0x${magic.toString(16).padStart(8, '0')} is not the zstd frame magic 0xfd2fb528`);
  }
  const descriptor = bytes[4]!;
  if (descriptor & RESERVED_BIT) {
    throw new SeekableFormatError(15, `${what}: reserved bit set in frame header descriptor 0x${descriptor.toString(16)}`);
  }
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor & 0x20) !== 0;
  const hasChecksum = (descriptor & 0x04) !== 0;
  const dictSize = DICT_ID_SIZES[descriptor & 0x03]!;
  const fcsSize = fcsFlag === 0 ? (singleSegment ? 1 : 0) : FCS_SIZES[fcsFlag]!;
  const headerSize = ZSTD_FRAME_HEADER_PREFIX + (singleSegment ? 0 : 1) + dictSize + fcsSize;
  if (bytes.length < headerSize) return { needMore: headerSize };

  let at = ZSTD_FRAME_HEADER_PREFIX;
  let windowSize = 0;
  if (!singleSegment) {
    const wd = bytes[at++]!;
    const windowBase = 2 ** (WINDOW_LOG_BASE + (wd >> 3));
    windowSize = windowBase + (windowBase / 8) * (wd & 0x07);
  }
  let dictionaryId = 0;
  if (dictSize === 1) dictionaryId = view.getUint8(at);
  else if (dictSize === 2) dictionaryId = view.getUint16(at, true);
  else if (dictSize === 4) dictionaryId = view.getUint32(at, true);
  at += dictSize;
  let contentSize: bigint | undefined;
  if (fcsSize === 1) contentSize = BigInt(view.getUint8(at));
  else if (fcsSize === 2) contentSize = BigInt(view.getUint16(at, true) + FCS_TWO_BYTE_BIAS);
  else if (fcsSize === 4) contentSize = BigInt(view.getUint32(at, true));
  else if (fcsSize === 8) contentSize = view.getBigUint64(at, true);
  if (singleSegment) windowSize = Number(contentSize);
  return { headerSize, singleSegment, hasChecksum, dictionaryId, windowSize, contentSize };
}

/** Largest window a frame of a table with chunk size C may use (rule 16). */
export function windowLimitFor(chunkSize: number): number {
  return Math.max(MIN_WINDOW_LIMIT, chunkSize);
}

/**
 * Checks a parsed header against rules 16 and 17 for a chunk of `expectedSize` bytes in a table with chunk
 * size `chunkSize`.
 */
export function checkFrameHeader(header: ZstdFrameHeader, expectedSize: number, chunkSize: number, what: string): void {
  if (header.dictionaryId !== 0) {
    throw new SeekableFormatError(16, `${what}: Dictionary_ID ${header.dictionaryId} != 0`);
  }
  const limit = windowLimitFor(chunkSize);
  if (header.windowSize > limit) {
    throw new SeekableFormatError(16, `${what}: window ${header.windowSize} > max(8 MiB, C) = ${limit}`);
  }
  if (header.contentSize !== undefined && header.contentSize !== BigInt(expectedSize)) {
    throw new SeekableFormatError(17, `${what}: Frame_Content_Size ${header.contentSize} != chunk size ${expectedSize}`);
  }
}

/** zstd error names that mean "the frame decodes to the wrong content" rather than "the frame is broken". */
const ZSTD_OUTPUT_OVERFLOW = 'Destination buffer is too small';
const ZSTD_CHECKSUM_MISMATCH = "Restored data doesn't match checksum";


export interface DecodeFrameOptions {
  /** Appended to error messages, e.g. " (layer sha256:…)". */
  context?: string;
  /**
   * Decode frames of a HashAlgo 0 table. Their bytes are NOT verified; only a whole-blob decode that checks the
   * DiffID may use this. Without it such a table breaks rule 19.
   */
  allowUnverified?: boolean;
}

/**
 * Decodes single chunk frames. Holds one zstd decompression context that every call reuses; decoding is
 * synchronous, so one instance can serve a whole thread.
 */
export class FrameDecoder {
  readonly #dctx = new zstd.DCtx();

  /**
   * Verifies and decodes chunk `index`'s frame (exactly `blob[Start_i, End_i)`). Order: frame length against
   * the table (rule 13), SHA-512 against the entry (rule 14, IntegrityError) before any parsing, then one
   * zstd frame with no dictionary and a bounded window (rules 15, 16), then decoding capped at `size_i` with
   * the XXH64 content checksum checked by libzstd, requiring exactly `size_i` bytes (rule 17).
   */
  decode(frame: Uint8Array, index: number, table: ChunkTable, options: DecodeFrameOptions = {}): Buffer {
    const context = options.context ?? '';
    const what = `chunk ${index}${context}`;
    const { start, end } = table.frameRange(index);
    if (frame.length !== end - start) {
      throw new SeekableFormatError(13, `${what}: got ${frame.length} frame bytes, table bounds [${start}, ${end}) give ${end - start}`);
    }
    const checksum = table.checksum(index);
    if (checksum !== undefined) {
      verifyFrameDigest(frame, checksum, index, context);
    } else if (!options.allowUnverified) {
      throw new SeekableFormatError(19, `${what}: chunk table has HashAlgo 0, frames cannot be verified; use the sequential path`);
    }
    return this.decodeChecked(frame, table.chunkLength(index), table.chunkSize, what);
  }

  /**
   * Decodes a frame whose bytes are already trusted (or will be checked afterwards by the caller) into exactly
   * `expectedSize` bytes, enforcing rules 15–17: the header's magic and reserved bit, then that the bytes are
   * exactly one complete frame, then Dictionary_ID, window and Frame_Content_Size, then the decode itself.
   */
  decodeChecked(frame: Uint8Array, expectedSize: number, chunkSize: number, what: string): Buffer {
    const header = parseZstdFrameHeader(frame, what);
    if ('needMore' in header) {
      throw new SeekableFormatError(15, `${what}: ${frame.length} bytes are too few for a zstd frame header (need ${header.needMore})`);
    }
    let frameSize: number;
    try {
      frameSize = zstd.findFrameCompressedSize(frame);
    } catch (err) {
      throw new SeekableFormatError(15, `${what}: not a complete zstd frame: ${errorMessage(err)}`, { cause: err });
    }
    if (frameSize !== frame.length) {
      throw new SeekableFormatError(16, `${what}: zstd frame ends at ${frameSize} but the section is ${frame.length} bytes (extra data after the frame)`);
    }
    checkFrameHeader(header, expectedSize, chunkSize, what);
    const out = Buffer.allocUnsafe(expectedSize);
    let produced: number;
    try {
      produced = this.#dctx.decompress(out, frame);
    } catch (err) {
      const message = errorMessage(err);
      if (message.includes(ZSTD_OUTPUT_OVERFLOW)) {
        throw new SeekableFormatError(17, `${what}: frame decodes to more than ${expectedSize} bytes`, { cause: err });
      }
      if (message.includes(ZSTD_CHECKSUM_MISMATCH)) {
        throw new SeekableFormatError(17, `${what}: XXH64 content checksum mismatch`, { cause: err });
      }
      throw new SeekableFormatError(15, `${what}: zstd error: ${message}`, { cause: err });
    }
    if (produced !== expectedSize) {
      throw new SeekableFormatError(17, `${what}: decoded ${produced} bytes, want ${expectedSize}`);
    }
    return out;
  }
}

let sharedDecoder: FrameDecoder | undefined;

/** The thread's shared FrameDecoder (one zstd context reused across calls). */
export function sharedFrameDecoder(): FrameDecoder {
  sharedDecoder ??= new FrameDecoder();
  return sharedDecoder;
}

/** Verifies and decodes chunk `index` with the shared decoder; see FrameDecoder.decode. */
export function decodeFrame(frame: Uint8Array, index: number, table: ChunkTable, options: DecodeFrameOptions = {}): Buffer {
  return sharedFrameDecoder().decode(frame, index, table, options);
}
