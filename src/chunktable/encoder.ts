// Seekable EROFS writer (spec §2, §4, §5, §9, §11): streams a raw EROFS image into one independent zstd frame
// per chunk, then the SHA-512 chunk table frame and optionally the dm-verity frame, hashing as it goes. Holds
// at most one chunk and one compressed frame in memory (plus the table entries and dm-verity leaf digests).
import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import zstd from 'zstd-napi/binding.js';
import type { Descriptor } from '../oci/types.js';
import { DEFAULT_VERITY_BLOCK_SIZE, VerityTreeBuilder } from '../verity/dmverity.js';
import { buildSeekableDescriptor, formatSeekableAnnotations } from './annotations.js';
import { iterateSource, openSink } from './io.js';
import type { ByteSink, ByteSource, Sink } from './io.js';
import {
  encodeSkippableFrame,
  HASH_ALGO_SHA512,
  MAX_CHUNK_COUNT,
  MAX_CHUNK_SIZE,
  MAX_SKIPPABLE_PAYLOAD,
  serializeChunkTable,
  WRITER_SKIPPABLE_MAGIC,
} from './table.js';
import type { ChunkTableEntry } from './table.js';

/** Spec §11 default chunk size: 4 MiB. */
export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;
/** zstd level used unless told otherwise (the zstd CLI default). */
export const DEFAULT_COMPRESSION_LEVEL = 3;
/** dm-verity block sizes a writer may use (spec §11): powers of two from 512 to 512 KiB. */
export const MIN_VERITY_BLOCK_SIZE = 512;
export const MAX_VERITY_BLOCK_SIZE = 524288;

export interface EncodeVerityOptions {
  /** Data and hash block size; default 4096. */
  blockSize?: number;
  /** 16-byte non-zero superblock UUID; default random v4 (pass one for reproducible blobs). */
  uuid?: Uint8Array;
}

export interface EncodeOptions {
  /** Uncompressed bytes per chunk, 1..0xFFFFFFFF; default 4 MiB. */
  chunkSize?: number;
  /** zstd compression level; default 3. */
  level?: number;
  /**
   * The first `count` chunks at another level (e.g. a start-up region every cold start fetches: worth a
   * slower, smaller encoding). Frames stay independent; readers see no difference.
   */
  leadingChunks?: { count: number; level: number };
  /**
   * Write Frame_Content_Size in every frame header (default true, RECOMMENDED by spec §11). False compresses
   * each chunk as a stream of unknown size, as `zstd` reading stdin does (the frames of spec vector V4).
   */
  contentSize?: boolean;
  /** Append a dm-verity frame (spec §9); refused for an empty image. */
  verity?: EncodeVerityOptions;
  /** End a Writable output when done (default true). */
  end?: boolean;
}

export interface EncodeResult {
  /** `sha256:` of the whole blob. */
  blobDigest: string;
  /** `B`. */
  blobSize: number;
  /** `sha256:` of the raw image. */
  diffId: string;
  /** `U`. */
  uncompressedSize: number;
  chunkSize: number;
  chunkCount: number;
  /** `T`. */
  chunkTableOffset: number;
  /** `sha512:` of the chunk table payload. */
  chunkDigest: string;
  verity?: { offset: number; rootDigest: string; blockSize: number; dataBlocks: number; hashOffset: number };
  /** The §8.2 annotations for the layer descriptor. */
  annotations: Record<string, string>;
}

function checkLevel(level: number, what: string): void {
  const { lowerBound, upperBound } = zstd.cParamGetBounds(zstd.CParameter.compressionLevel);
  if (!Number.isInteger(level) || level < lowerBound || level > upperBound) {
    throw new RangeError(`${what} ${level} is outside ${lowerBound}..${upperBound}`);
  }
}

function checkOptions(options: EncodeOptions): { chunkSize: number; level: number; verityBlockSize?: number } {
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (!Number.isInteger(chunkSize) || chunkSize < 1 || chunkSize > MAX_CHUNK_SIZE) {
    throw new RangeError(`chunk size ${chunkSize} is outside 1..0xFFFFFFFF (spec §11)`);
  }
  const level = options.level ?? DEFAULT_COMPRESSION_LEVEL;
  checkLevel(level, 'compression level');
  if (options.leadingChunks !== undefined) {
    checkLevel(options.leadingChunks.level, 'leading chunks compression level');
    if (!Number.isSafeInteger(options.leadingChunks.count) || options.leadingChunks.count < 0) {
      throw new RangeError(`leading chunk count ${options.leadingChunks.count} is not a non-negative integer`);
    }
  }
  if (!options.verity) return { chunkSize, level };
  const bs = options.verity.blockSize ?? DEFAULT_VERITY_BLOCK_SIZE;
  if (!Number.isInteger(bs) || bs < MIN_VERITY_BLOCK_SIZE || bs > MAX_VERITY_BLOCK_SIZE || (bs & (bs - 1)) !== 0) {
    throw new RangeError(`dm-verity block size ${bs} is not a power of two in ${MIN_VERITY_BLOCK_SIZE}..${MAX_VERITY_BLOCK_SIZE} (spec §11)`);
  }
  const uuid = options.verity.uuid;
  if (uuid !== undefined && (uuid.length !== 16 || uuid.every((b) => b === 0))) {
    throw new RangeError('dm-verity UUID must be 16 bytes and non-zero (spec §11)');
  }
  return { chunkSize, level, verityBlockSize: bs };
}

/** Compresses chunks into independent frames and keeps the running blob state. */
class FrameWriter {
  readonly #cctx = new zstd.CCtx();
  readonly entries: ChunkTableEntry[] = [];
  readonly blobHash = createHash('sha256');
  offset = 0;
  #level: number;

  constructor(
    private readonly sink: Sink,
    private readonly levelOf: (index: number) => number,
    private readonly contentSize: boolean,
  ) {
    this.#level = levelOf(0);
    this.#cctx.setParameter(zstd.CParameter.compressionLevel, this.#level);
    this.#cctx.setParameter(zstd.CParameter.checksumFlag, 1);
    this.#cctx.setParameter(zstd.CParameter.contentSizeFlag, 1);
  }

  /** One frame; without content size, fed as a stream of unknown length and then ended. */
  #compress(chunk: Uint8Array): Buffer {
    let dst = Buffer.allocUnsafe(zstd.compressBound(chunk.length));
    if (this.contentSize) return dst.subarray(0, this.#cctx.compress2(dst, chunk));
    let written = 0;
    let consumed = 0;
    for (;;) {
      if (written === dst.length) dst = Buffer.concat([dst, Buffer.allocUnsafe(zstd.cStreamOutSize())]);
      const directive = consumed < chunk.length ? zstd.EndDirective.continue : zstd.EndDirective.end;
      const [remaining, produced, used] = this.#cctx.compressStream2(dst.subarray(written), chunk.subarray(consumed), directive);
      written += produced;
      consumed += used;
      if (directive === zstd.EndDirective.end && remaining === 0) return dst.subarray(0, written);
    }
  }

  async addChunk(chunk: Uint8Array): Promise<void> {
    if (this.entries.length >= MAX_CHUNK_COUNT) {
      throw new RangeError(`image needs more than ${MAX_CHUNK_COUNT} chunks: the chunk table would exceed 0xFFFFFFFF bytes (spec §11); use a larger chunk size`);
    }
    const level = this.levelOf(this.entries.length);
    if (level !== this.#level) {
      this.#cctx.setParameter(zstd.CParameter.compressionLevel, level);
      this.#level = level;
    }
    const frame = this.#compress(chunk);
    this.entries.push({ offset: this.offset, checksum: createHash('sha512').update(frame).digest() });
    await this.append(frame);
  }

  async append(bytes: Uint8Array): Promise<void> {
    this.blobHash.update(bytes);
    this.offset += bytes.length;
    await this.sink.write(bytes);
  }
}

/**
 * Encodes a raw EROFS image (file path or byte stream) into a seekable blob (file path or Writable).
 * Throws RangeError/TypeError for bad options, an empty image with dm-verity, or too many chunks; a file
 * output is removed on failure.
 */
export async function encodeSeekableBlob(input: ByteSource, output: ByteSink, options: EncodeOptions = {}): Promise<EncodeResult> {
  const { chunkSize, level, verityBlockSize } = checkOptions(options);
  if (verityBlockSize !== undefined && typeof input === 'string' && (await stat(input)).size === 0) {
    throw new RangeError(`${input}: dm-verity cannot be produced for an empty image (spec §11)`);
  }
  const verity =
    verityBlockSize === undefined ? undefined : new VerityTreeBuilder({ blockSize: verityBlockSize, uuid: options.verity?.uuid ? Buffer.from(options.verity.uuid) : undefined });
  const sink = await openSink(output, { end: options.end });
  try {
    const leading = options.leadingChunks;
    const levelOf = (index: number): number => (leading !== undefined && index < leading.count ? leading.level : level);
    const writer = new FrameWriter(sink, levelOf, options.contentSize ?? true);
    const rawHash = createHash('sha256');
    let uncompressedSize = 0;
    let pending: Buffer[] = [];
    let pendingLength = 0;
    for await (const piece of iterateSource(input, 'raw image')) {
      rawHash.update(piece);
      verity?.update(piece);
      uncompressedSize += piece.length;
      let pos = 0;
      while (pos < piece.length) {
        const take = Math.min(chunkSize - pendingLength, piece.length - pos);
        if (pendingLength === 0 && take === chunkSize) {
          await writer.addChunk(piece.subarray(pos, pos + take));
        } else {
          pending.push(Buffer.from(piece.subarray(pos, pos + take)));
          pendingLength += take;
          if (pendingLength === chunkSize) {
            await writer.addChunk(Buffer.concat(pending, pendingLength));
            pending = [];
            pendingLength = 0;
          }
        }
        pos += take;
      }
    }
    if (pendingLength > 0) await writer.addChunk(Buffer.concat(pending, pendingLength));
    if (!Number.isSafeInteger(uncompressedSize)) throw new RangeError(`image of ${uncompressedSize} bytes is too large`);
    if (verity && uncompressedSize === 0) throw new RangeError('dm-verity cannot be produced for an empty image (spec §11)');

    const chunkTableOffset = writer.offset;
    const payload = serializeChunkTable({ uncompressedSize, chunkSize, hashAlgo: HASH_ALGO_SHA512, entries: writer.entries });
    const chunkDigest = `sha512:${createHash('sha512').update(payload).digest('hex')}`;
    await writer.append(encodeSkippableFrame(payload, WRITER_SKIPPABLE_MAGIC));

    let verityResult: EncodeResult['verity'];
    if (verity) {
      const tree = verity.finish();
      if (tree.payload.length > MAX_SKIPPABLE_PAYLOAD) throw new RangeError(`dm-verity payload of ${tree.payload.length} bytes exceeds 0xFFFFFFFF`);
      const offset = writer.offset;
      await writer.append(encodeSkippableFrame(tree.payload, WRITER_SKIPPABLE_MAGIC));
      verityResult = {
        offset,
        rootDigest: `sha512:${tree.rootHash.toString('hex')}`,
        blockSize: verityBlockSize!,
        dataBlocks: tree.dataBlocks,
        hashOffset: tree.hashOffset,
      };
    }
    await sink.close();
    const annotations = formatSeekableAnnotations({
      chunkTableOffset,
      chunkDigest,
      verity: verityResult && { offset: verityResult.offset, rootDigest: verityResult.rootDigest },
    });
    return {
      blobDigest: `sha256:${writer.blobHash.digest('hex')}`,
      blobSize: writer.offset,
      diffId: `sha256:${rawHash.digest('hex')}`,
      uncompressedSize,
      chunkSize,
      chunkCount: writer.entries.length,
      chunkTableOffset,
      chunkDigest,
      ...(verityResult ? { verity: verityResult } : {}),
      annotations,
    };
  } catch (err) {
    await sink.abort();
    throw err;
  }
}

/**
 * The layer descriptor for an encoded blob: media type application/vnd.erofs.layer.v1+zstd, its digest and
 * size, and the original descriptor's other annotations with this format's keys replaced.
 */
export function seekableLayerDescriptor(result: EncodeResult, original?: Descriptor): Descriptor {
  return buildSeekableDescriptor(result, original);
}
