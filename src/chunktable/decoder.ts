// Whole-blob decoders (spec §2, §7, §8.3, §8.4): a seekable blob to its raw EROFS image, checking every
// frame against the chunk table plus the total size and DiffID (rule 18); and the sequential path, which
// decodes any zstd stream (skipping skippable frames) with size and digest checks.
//
// Output released before the returned promise resolves is NOT verified as a whole: a consumer must discard
// it when the promise rejects (a file output is removed). In detail:
//   - seekable blob from a file path: the chunk table is loaded and checked first, and every frame is checked
//     against its SHA-512 before it is decoded (as for lazy serving); DiffID and blob digest are checked last.
//   - seekable blob from a stream: the table sits at the end, so frames are decoded as they arrive and their
//     SHA-512, bounds, headers and sizes are compared with the table once it arrives.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Hash } from 'node:crypto';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import zstd from 'zstd-napi/binding.js';
import type { Descriptor } from '../oci/types.js';
import { MEDIA_TYPE } from '../oci/types.js';
import { IntegrityError } from '../verity/digests.js';
import { parseSeekableAnnotations } from './annotations.js';
import type { SeekableLayout } from './annotations.js';
import { SeekableFormatError } from './errors.js';
import { FrameDecoder, parseZstdFrameHeader, windowLimitFor, ZSTD_MAX_FRAME_HEADER } from './frame.js';
import type { ZstdFrameHeader } from './frame.js';
import { iterateSource, openSink } from './io.js';
import type { ByteSink, ByteSource, Sink } from './io.js';
import { DEFAULT_MAX_CHUNK_TABLE_BYTES, loadChunkTable, SKIPPABLE_HEADER_SIZE } from './table.js';
import type { ChunkTable } from './table.js';
import { errorMessage } from '../util/errors.js';

/**
 * Largest zstd window (log2) accepted where the chunk size is not known yet (stream input, sequential path):
 * libzstd's own streaming default, 128 MiB.
 */
export const DEFAULT_STREAM_WINDOW_LOG_MAX = 27;
/** Bytes read per call when hashing the tail of a blob file. */
export const TAIL_READ_CHUNK = 1024 * 1024;

const SHA256_DIGEST = /^sha256:[0-9a-f]{64}$/;
const BLOB_DIGEST = /^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$/;

/** Expected digests come from manifests and configs, i.e. input: a malformed one breaks rule 18. */
function checkDigestOption(name: string, value: string | undefined, pattern: RegExp = SHA256_DIGEST): void {
  if (value !== undefined && (typeof value !== 'string' || !pattern.test(value))) {
    throw new SeekableFormatError(18, `${name} ${JSON.stringify(String(value).slice(0, 80))} is not a well-formed digest`);
  }
}

/** A running hash of the blob in the algorithm of the digest it must match (sha256 when none is given). */
function blobHasher(expected: string | undefined): { hash: Hash; algorithm: string } {
  const algorithm = expected?.startsWith('sha512:') ? 'sha512' : 'sha256';
  return { hash: createHash(algorithm), algorithm };
}

function checkLimitOption(name: string, value: number | undefined): void {
  if (value !== undefined && (!Number.isSafeInteger(value) || value < 0)) {
    throw new RangeError(`${name} ${value} is not an integer in [0, 2^53-1]`);
  }
}


/** zstd error name for a window larger than windowLogMax. */
const ZSTD_WINDOW_TOO_LARGE = 'Frame requires too much memory';

/**
 * Streaming zstd decoding with frame boundaries: `feed` reports where in the fed bytes each frame (data or
 * skippable) ends, and whether decoding currently stands between frames.
 */
class StreamingZstd {
  readonly #dctx = new zstd.DCtx();
  readonly #out = Buffer.allocUnsafe(zstd.dStreamOutSize());
  /** True between frames (initially, and after a frame ended). */
  atBoundary = true;

  constructor(
    windowLogMax: number,
    private readonly what: string,
  ) {
    this.#dctx.setParameter(zstd.DParameter.windowLogMax, windowLogMax);
  }

  async feed(src: Uint8Array, onOutput: (bytes: Buffer) => Promise<void>, onFrameEnd: (srcPos: number) => void): Promise<void> {
    let pos = 0;
    while (pos < src.length || !this.atBoundary) {
      let ret: number;
      let produced: number;
      let consumed: number;
      try {
        [ret, produced, consumed] = this.#dctx.decompressStream(this.#out, src.subarray(pos));
      } catch (err) {
        const message = errorMessage(err);
        const rule = message.includes(ZSTD_WINDOW_TOO_LARGE) ? 16 : 15;
        throw new SeekableFormatError(rule, `${this.what}: zstd error at stream offset +${pos}: ${message}`, { cause: err });
      }
      pos += consumed;
      if (produced > 0) await onOutput(Buffer.from(this.#out.subarray(0, produced)));
      if (ret === 0) {
        this.atBoundary = true;
        onFrameEnd(pos);
        continue;
      }
      this.atBoundary = false;
      if (produced < this.#out.length && pos === src.length) return;
      if (produced === 0 && consumed === 0) {
        throw new SeekableFormatError(15, `${this.what}: zstd decoder made no progress`);
      }
    }
  }
}

/** Counts, hashes and bounds decoded output on its way to a sink. */
class OutputCounter {
  readonly hash = createHash('sha256');
  size = 0;

  constructor(
    private readonly sink: Sink,
    private readonly limit: number | undefined,
    private readonly what: string,
  ) {}

  async write(bytes: Buffer): Promise<void> {
    this.size += bytes.length;
    if (this.limit !== undefined && this.size > this.limit) {
      throw new SeekableFormatError(18, `${this.what}: output exceeds ${this.limit} bytes`);
    }
    this.hash.update(bytes);
    await this.sink.write(bytes);
  }
}

export interface DecodeResult {
  /** Bytes of raw image written. */
  uncompressedSize: number;
  /** `sha256:` of the raw image. */
  diffId: string;
  /** Digest of the blob (algorithm of the expected digest, else sha256), when every blob byte was read. */
  blobDigest?: string;
  blobSize: number;
  /** Frames decoded (seekable blobs). */
  chunkCount?: number;
}

function finalChecks(
  what: string,
  out: OutputCounter,
  expect: { uncompressedSize?: number; diffId?: string; blobDigest?: string; blobSize?: number },
  blob: { size: number; hash?: { hash: Hash; algorithm: string } },
): DecodeResult {
  if (expect.blobSize !== undefined && blob.size !== expect.blobSize) {
    throw new SeekableFormatError(18, `${what}: blob has ${blob.size} bytes, descriptor size is ${expect.blobSize}`);
  }
  const blobDigest = blob.hash && `${blob.hash.algorithm}:${blob.hash.hash.digest('hex')}`;
  if (expect.blobDigest !== undefined && blobDigest !== undefined && blobDigest !== expect.blobDigest) {
    throw new SeekableFormatError(18, `${what}: blob digest ${blobDigest} != descriptor digest ${expect.blobDigest}`);
  }
  if (expect.uncompressedSize !== undefined && out.size !== expect.uncompressedSize) {
    throw new SeekableFormatError(18, `${what}: decoded ${out.size} bytes, want ${expect.uncompressedSize}`);
  }
  const diffId = `sha256:${out.hash.digest('hex')}`;
  if (expect.diffId !== undefined && diffId !== expect.diffId) {
    throw new SeekableFormatError(18, `${what}: decoded image has DiffID ${diffId}, want ${expect.diffId}`);
  }
  return { uncompressedSize: out.size, diffId, ...(blobDigest ? { blobDigest } : {}), blobSize: blob.size };
}

export interface DecodeSequentialOptions {
  /** False for a raw (uncompressed) EROFS layer: bytes are copied with the same checks. Default true. */
  compressed?: boolean;
  /** Expected `sha256:` of the output (the DiffID, rule 18). */
  diffId?: string;
  /** Expected output size; output beyond it fails at once. */
  expectedSize?: number;
  /** Fail as soon as the output exceeds this many bytes (decompression bomb guard). */
  maxOutputBytes?: number;
  /** Expected `sha256:` and size of the input blob (the descriptor's digest and size). */
  blobDigest?: string;
  blobSize?: number;
  /** Largest zstd window, as log2; default 27 (128 MiB). */
  windowLogMax?: number;
  /** End a Writable output when done (default true). */
  end?: boolean;
  /** Names the blob in error messages. */
  context?: string;
}

/**
 * The sequential path (spec §8.4): decodes a whole zstd stream (any number of frames, skippable frames
 * skipped) to the raw image, checking zstd integrity, the size, the DiffID and the blob digest when given.
 */
export async function decodeSequential(input: ByteSource, output: ByteSink, options: DecodeSequentialOptions = {}): Promise<DecodeResult> {
  checkDigestOption('diffId', options.diffId);
  checkDigestOption('blobDigest', options.blobDigest, BLOB_DIGEST);
  checkLimitOption('expectedSize', options.expectedSize);
  checkLimitOption('maxOutputBytes', options.maxOutputBytes);
  checkLimitOption('blobSize', options.blobSize);
  const what = `sequential decode${options.context ?? ''}`;
  const compressed = options.compressed ?? true;
  const limits = [options.expectedSize, options.maxOutputBytes].filter((v): v is number => v !== undefined);
  const limit = limits.length > 0 ? Math.min(...limits) : undefined;
  const sink = await openSink(output, { end: options.end });
  try {
    const out = new OutputCounter(sink, limit, what);
    const blobHash = blobHasher(options.blobDigest);
    let blobSize = 0;
    const decoder = compressed ? new StreamingZstd(options.windowLogMax ?? DEFAULT_STREAM_WINDOW_LOG_MAX, what) : undefined;
    for await (const piece of iterateSource(input, what)) {
      blobHash.hash.update(piece);
      blobSize += piece.length;
      if (options.blobSize !== undefined && blobSize > options.blobSize) {
        throw new SeekableFormatError(18, `${what}: blob is longer than its descriptor size ${options.blobSize}`);
      }
      if (decoder) await decoder.feed(piece, (bytes) => out.write(bytes), () => undefined);
      else await out.write(Buffer.from(piece));
    }
    if (decoder && !decoder.atBoundary) {
      throw new SeekableFormatError(15, `${what}: stream ends inside a zstd frame (truncated)`);
    }
    const result = finalChecks(
      what,
      out,
      { uncompressedSize: options.expectedSize, diffId: options.diffId, blobDigest: options.blobDigest, blobSize: options.blobSize },
      { size: blobSize, hash: blobHash },
    );
    await sink.close();
    return result;
  } catch (err) {
    await sink.abort();
    throw err;
  }
}

export interface DecodeSeekableOptions {
  /** Expected `sha256:` of the raw image (rule 18). */
  diffId?: string;
  /** Hash all B blob bytes and compare with the descriptor digest (default true). */
  verifyBlobDigest?: boolean;
  /** Limit for the chunk table frame (see loadChunkTable). */
  maxTableBytes?: number;
  /** Stream input only: largest zstd window before the table is known, as log2 (default 27). */
  windowLogMax?: number;
  /** Stream input only: fail once output exceeds this many bytes (U is unknown until the table arrives). */
  maxOutputBytes?: number;
  /** End a Writable output when done (default true). */
  end?: boolean;
}

function layoutOf(layer: Descriptor): SeekableLayout {
  const verdict = parseSeekableAnnotations(layer);
  if (verdict.kind !== 'seekable') {
    throw new SeekableFormatError(19, `layer ${layer.digest} is not seekable (${verdict.reason}); use decodeSequential`);
  }
  return verdict;
}

/**
 * Decodes a whole seekable blob to the raw image using its chunk table: every frame is verified (SHA-512 when
 * HashAlgo 1, bounds, headers, exact sizes), then the total size U, the DiffID (when given) and the blob
 * digest. A file path input is read by random access (frames verified before decoding); a stream input is
 * decoded as it arrives and checked against the table at its end.
 */
export async function decodeSeekableBlob(
  input: ByteSource,
  output: ByteSink,
  layer: Descriptor,
  options: DecodeSeekableOptions = {},
): Promise<DecodeResult> {
  checkDigestOption('diffId', options.diffId);
  checkLimitOption('maxOutputBytes', options.maxOutputBytes);
  const layout = layoutOf(layer);
  if (options.verifyBlobDigest ?? true) checkDigestOption('descriptor digest', layer.digest, BLOB_DIGEST);
  const sink = await openSink(output, { end: options.end });
  try {
    const result =
      typeof input === 'string'
        ? await decodeSeekableFile(input, sink, layer, layout, options)
        : await decodeSeekableStream(input, sink, layer, layout, options);
    await sink.close();
    return result;
  } catch (err) {
    await sink.abort();
    throw err;
  }
}

async function readExactly(fh: FileHandle, start: number, end: number, what: string): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(end - start);
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, start + done);
    if (bytesRead === 0) throw new SeekableFormatError(18, `${what}: file ends at ${start + done}, wanted bytes up to ${end}`);
    done += bytesRead;
  }
  return buf;
}

async function decodeSeekableFile(
  path: string,
  sink: Sink,
  layer: Descriptor,
  layout: SeekableLayout,
  options: DecodeSeekableOptions,
): Promise<DecodeResult> {
  const what = `layer ${layer.digest} (${path})`;
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    if (size !== layout.blobSize) {
      throw new SeekableFormatError(18, `${what}: file has ${size} bytes, descriptor size is ${layout.blobSize}`);
    }
    const table = await loadChunkTable(layout, (start, end) => readExactly(fh, start, end, what), {
      maxTableBytes: options.maxTableBytes ?? DEFAULT_MAX_CHUNK_TABLE_BYTES,
      context: ` (layer ${layer.digest})`,
    });
    const verifyBlob = options.verifyBlobDigest ?? true;
    const blobHash = verifyBlob ? blobHasher(layer.digest) : undefined;
    const out = new OutputCounter(sink, table.uncompressedSize, what);
    const decoder = new FrameDecoder();
    for (let i = 0; i < table.chunkCount; i++) {
      const { start, end } = table.frameRange(i);
      const frame = await readExactly(fh, start, end, what);
      blobHash?.hash.update(frame);
      await out.write(decoder.decode(frame, i, table, { context: ` (layer ${layer.digest})`, allowUnverified: true }));
    }
    if (blobHash) {
      for (let pos = table.tableOffset; pos < size; pos += TAIL_READ_CHUNK) {
        blobHash.hash.update(await readExactly(fh, pos, Math.min(size, pos + TAIL_READ_CHUNK), what));
      }
    }
    const result = finalChecks(
      what,
      out,
      { uncompressedSize: table.uncompressedSize, diffId: options.diffId, blobDigest: layer.digest, blobSize: layout.blobSize },
      { size, hash: blobHash },
    );
    return { ...result, chunkCount: table.chunkCount };
  } finally {
    await fh.close();
  }
}

/** What the stream decoder saw of one data frame. */
interface SeenFrame {
  start: number;
  end: number;
  hash: Hash;
  digest?: Buffer;
  produced: number;
  headerBytes: Buffer[];
  headerLength: number;
  header?: ZstdFrameHeader;
}

async function decodeSeekableStream(
  input: AsyncIterable<Uint8Array>,
  sink: Sink,
  layer: Descriptor,
  layout: SeekableLayout,
  options: DecodeSeekableOptions,
): Promise<DecodeResult> {
  const what = `layer ${layer.digest}`;
  const context = ` (layer ${layer.digest})`;
  const T = layout.chunkTableOffset;
  const B = layout.blobSize;
  const tableEnd = layout.verity?.offset ?? B;
  const maxTableBytes = options.maxTableBytes ?? DEFAULT_MAX_CHUNK_TABLE_BYTES;
  if (T + SKIPPABLE_HEADER_SIZE > B) throw new SeekableFormatError(4, `T + 8 = ${T + SKIPPABLE_HEADER_SIZE} > blob size ${B}${context}`);
  if (tableEnd - T > maxTableBytes) {
    throw new SeekableFormatError(12, `chunk table frame of ${tableEnd - T} bytes exceeds the limit of ${maxTableBytes}${context}`);
  }
  const out = new OutputCounter(sink, options.maxOutputBytes, what);
  const verifyBlob = options.verifyBlobDigest ?? true;
  const blobHash = verifyBlob ? blobHasher(layer.digest) : undefined;
  const zs = new StreamingZstd(options.windowLogMax ?? DEFAULT_STREAM_WINDOW_LOG_MAX, what);
  const frames: SeenFrame[] = [];
  const tablePieces: Buffer[] = [];
  let current: SeenFrame | undefined;
  let pos = 0;

  /** The frame being decoded; it starts at blob offset `at` when none is open yet. */
  const openFrame = (at: number): SeenFrame => {
    if (!current) {
      current = { start: at, end: at, hash: createHash('sha512'), produced: 0, headerBytes: [], headerLength: 0 };
      frames.push(current);
    }
    return current;
  };
  /** Hashes `bytes` (which start at blob offset `at`) into the current frame, opening one if needed. */
  const account = (bytes: Uint8Array, at: number): void => {
    if (bytes.length === 0) return;
    const frame = openFrame(at);
    frame.hash.update(bytes);
    frame.end = at + bytes.length;
    if (!frame.header && frame.headerLength < ZSTD_MAX_FRAME_HEADER) {
      const take = bytes.subarray(0, ZSTD_MAX_FRAME_HEADER - frame.headerLength);
      frame.headerBytes.push(Buffer.from(take));
      frame.headerLength += take.length;
      const parsed = parseZstdFrameHeader(Buffer.concat(frame.headerBytes), `frame at blob offset ${frame.start}${context}`);
      if (!('needMore' in parsed)) {
        if (parsed.dictionaryId !== 0) {
          throw new SeekableFormatError(16, `frame at blob offset ${frame.start}${context}: Dictionary_ID ${parsed.dictionaryId} != 0`);
        }
        frame.header = parsed;
        frame.headerBytes = [];
      }
    }
  };

  for await (const piece of iterateSource(input, what)) {
    blobHash?.hash.update(piece);
    const pieceStart = pos;
    pos += piece.length;
    if (pos > B) throw new SeekableFormatError(18, `${what}: blob stream is longer than its descriptor size ${B}`);
    // Data region [0, T).
    const dataEnd = Math.max(0, Math.min(piece.length, T - pieceStart));
    if (dataEnd > 0) {
      const data = piece.subarray(0, dataEnd);
      let mark = 0;
      await zs.feed(
        data,
        async (bytes) => {
          openFrame(pieceStart + mark).produced += bytes.length;
          await out.write(bytes);
        },
        (srcPos) => {
          account(data.subarray(mark, srcPos), pieceStart + mark);
          mark = srcPos;
          current = undefined;
        },
      );
      account(data.subarray(mark), pieceStart + mark);
    }
    // Chunk table frame [T, tableEnd).
    const tableFrom = Math.max(0, T - pieceStart);
    const tableTo = Math.min(piece.length, tableEnd - pieceStart);
    if (tableTo > tableFrom) tablePieces.push(Buffer.from(piece.subarray(tableFrom, tableTo)));
  }
  if (pos !== B) throw new SeekableFormatError(18, `${what}: blob stream has ${pos} bytes, descriptor size is ${B}`);
  if (!zs.atBoundary) {
    throw new SeekableFormatError(15, `${what}: the data frame at ${current?.start ?? '?'} does not end before the chunk table at ${T}`);
  }
  const tableBytes = Buffer.concat(tablePieces);
  const table = await loadChunkTable(layout, async () => tableBytes, { maxTableBytes, context });
  for (const frame of frames) frame.digest = frame.hash.digest();
  compareFrames(frames, table, context);
  const result = finalChecks(
    what,
    out,
    { uncompressedSize: table.uncompressedSize, diffId: options.diffId, blobDigest: layer.digest, blobSize: B },
    { size: pos, hash: blobHash },
  );
  return { ...result, chunkCount: table.chunkCount };
}

/** Matches the frames a stream decode saw against the (verified) chunk table: rules 13–17. */
function compareFrames(frames: SeenFrame[], table: ChunkTable, context: string): void {
  const n = table.chunkCount;
  const limit = windowLimitFor(table.chunkSize);
  for (let i = 0; i < n; i++) {
    const { start, end } = table.frameRange(i);
    const seen = frames[i];
    const what = `chunk ${i}${context}`;
    if (!seen || seen.start !== start) {
      throw new SeekableFormatError(15, `${what}: table frame [${start}, ${end}) does not start a zstd frame of the blob`);
    }
    if (seen.end < end) {
      throw new SeekableFormatError(16, `${what}: table frame [${start}, ${end}) holds more than one zstd frame (first ends at ${seen.end})`);
    }
    if (seen.end > end) {
      throw new SeekableFormatError(15, `${what}: zstd frame runs to ${seen.end}, past the table bound ${end} (truncated)`);
    }
    const checksum = table.checksum(i);
    if (checksum !== undefined) {
      // The frame's bytes were hashed as they streamed past; compare like verifyFrameDigest would.
      verifyDigestValue(seen.digest!, checksum, i, context);
    }
    const size = table.chunkLength(i);
    if (!seen.header) throw new SeekableFormatError(15, `${what}: incomplete zstd frame header`);
    if (seen.header.windowSize > limit) {
      throw new SeekableFormatError(16, `${what}: window ${seen.header.windowSize} > max(8 MiB, C) = ${limit}`);
    }
    if (seen.header.contentSize !== undefined && seen.header.contentSize !== BigInt(size)) {
      throw new SeekableFormatError(17, `${what}: Frame_Content_Size ${seen.header.contentSize} != chunk size ${size}`);
    }
    if (seen.produced !== size) throw new SeekableFormatError(17, `${what}: decoded ${seen.produced} bytes, want ${size}`);
  }
  if (frames.length > n) {
    throw new SeekableFormatError(11, `blob has ${frames.length} data frames before the chunk table, table lists ${n}${context}`);
  }
}

/** IntegrityError (rule 14) when a frame's SHA-512, hashed as it streamed past, differs from the table entry. */
function verifyDigestValue(actual: Buffer, expected: Buffer, index: number, context: string): void {
  if (actual.length !== expected.length || !timingSafeEqual(actual, expected)) {
    throw new IntegrityError(
      `chunk ${index}${context}: frame SHA-512 mismatch (got ${actual.toString('hex').slice(0, 16)}…, want ${expected.toString('hex').slice(0, 16)}…)`,
      'frame',
      index,
    );
  }
}

/**
 * Decodes any layer of the two EROFS media types whole: seekable blobs with their chunk table, plain zstd
 * streams and annotation-less `+zstd` layers sequentially, raw `application/vnd.erofs.layer.v1` layers by
 * copying; always checking the blob digest and size, and the DiffID when given.
 */
export async function decodeLayerBlob(
  input: ByteSource,
  output: ByteSink,
  layer: Descriptor,
  options: { diffId?: string; end?: boolean; maxOutputBytes?: number } = {},
): Promise<DecodeResult> {
  const verdict = parseSeekableAnnotations(layer);
  if (verdict.kind === 'seekable') return decodeSeekableBlob(input, output, layer, options);
  if (verdict.kind === 'sequential' || layer.mediaType === MEDIA_TYPE.erofs) {
    return decodeSequential(input, output, {
      ...options,
      compressed: verdict.kind === 'sequential',
      blobDigest: layer.digest,
      blobSize: layer.size,
      context: ` (layer ${layer.digest})`,
    });
  }
  throw new TypeError(`layer ${layer.digest}: media type ${layer.mediaType} is not an EROFS layer`);
}
