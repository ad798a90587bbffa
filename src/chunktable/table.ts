// The chunk table of a seekable EROFS blob (spec §3, §5, §6): skippable frame headers, the strict parser
// of the table payload (spec §10 rules 4–12), the ChunkTable model with frame bounds and chunk sizes, the
// one-request loader that checks the payload against the chunk_digest annotation before parsing, and the
// writer's serializer.
import zstd from 'zstd-napi/binding.js';
import type { Descriptor } from '../oci/types.js';
import { verifyChunkTableDigest } from '../verity/digests.js';
import { parseSeekableAnnotations } from './annotations.js';
import type { SeekableLayout } from './annotations.js';
import { SeekableFormatError } from './errors.js';

/** Skippable frame magic range accepted by readers (spec §3, rule 5). */
export const SKIPPABLE_MAGIC_FIRST = 0x184d2a50;
export const SKIPPABLE_MAGIC_LAST = 0x184d2a5f;
/** The one magic writers use for both the chunk table and the dm-verity frame. */
export const WRITER_SKIPPABLE_MAGIC = 0x184d2a50;
/** Magic (u32) and payload length (u32) in front of every skippable frame's payload. */
export const SKIPPABLE_HEADER_SIZE = 8;
/** Largest payload a skippable frame can declare. */
export const MAX_SKIPPABLE_PAYLOAD = 0xffffffff;

/** Chunk table header fields (spec §5). */
export const CHUNK_TABLE_MAGIC = 0xcde4ec67;
export const CHUNK_TABLE_VERSION = 1;
export const CHUNK_TABLE_HEADER_SIZE = 23;
export const HASH_ALGO_NONE = 0;
export const HASH_ALGO_SHA512 = 1;
export type HashAlgo = typeof HASH_ALGO_NONE | typeof HASH_ALGO_SHA512;
/** Checksum bytes per entry for HashAlgo 1. */
export const SHA512_SIZE = 64;
/** Size of the BlockOffset field of an entry. */
export const ENTRY_OFFSET_SIZE = 8;
/** ChunkSize is a u32 (spec §5, §11). */
export const MAX_CHUNK_SIZE = 0xffffffff;
/** Most chunks a SHA-512 table can hold with Nt ≤ 0xFFFFFFFF (spec §11: 59,652,323). */
export const MAX_CHUNK_COUNT = Math.floor((MAX_SKIPPABLE_PAYLOAD - CHUNK_TABLE_HEADER_SIZE) / (ENTRY_OFFSET_SIZE + SHA512_SIZE));
/** Smallest dm-verity payload (the bare 512-byte superblock, spec §9.4, rule 20). */
export const MIN_VERITY_PAYLOAD = 512;
/**
 * Largest chunk table frame loadChunkTable fetches unless told otherwise (rule 12: beyond what this reader
 * handles). 256 MiB is about 3.7 million SHA-512 entries, i.e. 14 TiB of image at the default chunk size.
 */
export const DEFAULT_MAX_CHUNK_TABLE_BYTES = 256 * 1024 * 1024;

/**
 * Slack over zstd's compressBound(size_i) that a frame may use (rule 12: larger frames are beyond what this
 * reader handles). Any ordinary encoder stays under compressBound; the slack leaves room for odd ones, and
 * the bound keeps a forged table from making a reader allocate or fetch absurd frame sizes.
 */
export const MAX_FRAME_SLACK = 64 * 1024;

/** Largest frame this reader accepts for a chunk of `chunkLength` bytes. */
export function maxFrameLength(chunkLength: number): number {
  return zstd.compressBound(chunkLength) + MAX_FRAME_SLACK;
}

const TWO_POW_32 = 0x1_0000_0000;
/** High u32 word of 2^63: BlockOffsets at or above it break rule 10. */
const HIGH_WORD_2_POW_63 = 0x8000_0000;
/** Largest high u32 word of a value ≤ 2^53−1. */
const MAX_SAFE_HIGH_WORD = 0x1f_ffff;
const MAX_U64_EXACT = BigInt(Number.MAX_SAFE_INTEGER);

/** Hash size `h` for a HashAlgo (0 or 64). */
export function hashSizeOf(hashAlgo: HashAlgo): number {
  return hashAlgo === HASH_ALGO_SHA512 ? SHA512_SIZE : 0;
}

/** `n = 0` if `U = 0`, else `ceil(U / C)`, computed exactly. */
export function chunkCountFor(uncompressedSize: bigint, chunkSize: bigint): bigint {
  if (chunkSize <= 0n) throw new RangeError(`chunk size ${chunkSize} must be positive`);
  return uncompressedSize === 0n ? 0n : (uncompressedSize + chunkSize - 1n) / chunkSize;
}

/** `Nt = 23 + n × (8 + h)`, exactly (may exceed 0xFFFFFFFF, which a reader must reject). */
export function expectedChunkTableLength(uncompressedSize: bigint, chunkSize: bigint, hashAlgo: HashAlgo): bigint {
  const n = chunkCountFor(uncompressedSize, chunkSize);
  return BigInt(CHUNK_TABLE_HEADER_SIZE) + n * BigInt(ENTRY_OFFSET_SIZE + hashSizeOf(hashAlgo));
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function hex32(v: number): string {
  return `0x${v.toString(16).padStart(8, '0')}`;
}

/** Parsed 8-byte skippable frame header. */
export interface SkippableHeader {
  magic: number;
  payloadLength: number;
}

/**
 * Reads a skippable frame header at `bytes[0, 8)`. `what` names the frame in messages. A short input breaks
 * rule 4 (for the chunk table; pass `truncatedRule` 20 for the dm-verity frame), a magic outside
 * 0x184D2A50..0x184D2A5F rule 5 (or `magicRule`).
 */
export function parseSkippableHeader(
  bytes: Uint8Array,
  what = 'chunk table frame',
  rules: { truncated: number; magic: number } = { truncated: 4, magic: 5 },
): SkippableHeader {
  if (bytes.length < SKIPPABLE_HEADER_SIZE) {
    throw new SeekableFormatError(rules.truncated, `${what}: ${bytes.length} bytes, need ${SKIPPABLE_HEADER_SIZE} for a skippable frame header`);
  }
  const buf = asBuffer(bytes);
  const magic = buf.readUInt32LE(0);
  if (magic < SKIPPABLE_MAGIC_FIRST || magic > SKIPPABLE_MAGIC_LAST) {
    throw new SeekableFormatError(
      rules.magic,
      `${what}: magic ${hex32(magic)} is not a skippable frame magic (${hex32(SKIPPABLE_MAGIC_FIRST)}..${hex32(SKIPPABLE_MAGIC_LAST)})`,
    );
  }
  return { magic, payloadLength: buf.readUInt32LE(4) };
}

/** Builds a skippable frame: magic, u32 payload length, payload. */
export function encodeSkippableFrame(payload: Uint8Array, magic: number = WRITER_SKIPPABLE_MAGIC): Buffer {
  if (!Number.isInteger(magic) || magic < SKIPPABLE_MAGIC_FIRST || magic > SKIPPABLE_MAGIC_LAST) {
    throw new RangeError(`skippable magic ${magic} is outside ${hex32(SKIPPABLE_MAGIC_FIRST)}..${hex32(SKIPPABLE_MAGIC_LAST)}`);
  }
  if (payload.length > MAX_SKIPPABLE_PAYLOAD) {
    throw new RangeError(`skippable frame payload of ${payload.length} bytes exceeds 0xFFFFFFFF`);
  }
  const header = Buffer.alloc(SKIPPABLE_HEADER_SIZE);
  header.writeUInt32LE(magic, 0);
  header.writeUInt32LE(payload.length, 4);
  return Buffer.concat([header, payload]);
}

/** Where the chunk table frame sits in its blob; all values come from the trusted descriptor. */
export interface ChunkTablePlacement {
  /** `T`: offset of the chunk table frame's first magic byte. */
  tableOffset: number;
  /** `B`: blob size. */
  blobSize: number;
  /** `V`: offset of the dm-verity frame, when the descriptor announces one. */
  verityOffset?: number;
}

/** A half-open blob byte range `[start, end)`. */
export interface ByteRange {
  start: number;
  end: number;
}

/** The minimum a range mapper needs to know about a chunk table. */
export interface ChunkGeometry {
  readonly uncompressedSize: number;
  readonly chunkSize: number;
  readonly chunkCount: number;
  frameRange(index: number): ByteRange;
}

/** A validated chunk table (spec §5, §6). Created by parseChunkTable / loadChunkTable only. */
export class ChunkTable implements ChunkGeometry {
  /** `U`. */
  readonly uncompressedSize: number;
  /** `C`. */
  readonly chunkSize: number;
  /** `n`. */
  readonly chunkCount: number;
  readonly hashAlgo: HashAlgo;
  /** `T`: the last frame ends here. */
  readonly tableOffset: number;
  /** `Nt`. */
  readonly payloadLength: number;
  /** `B`. */
  readonly blobSize: number;
  /** `V`, when the blob has a dm-verity frame. */
  readonly verityOffset: number | undefined;
  readonly #offsets: Float64Array;
  readonly #payload: Buffer;

  /** @internal Use parseChunkTable. */
  constructor(
    fields: { uncompressedSize: number; chunkSize: number; hashAlgo: HashAlgo; placement: ChunkTablePlacement },
    offsets: Float64Array,
    payload: Buffer,
  ) {
    this.uncompressedSize = fields.uncompressedSize;
    this.chunkSize = fields.chunkSize;
    this.chunkCount = offsets.length;
    this.hashAlgo = fields.hashAlgo;
    this.tableOffset = fields.placement.tableOffset;
    this.payloadLength = payload.length;
    this.blobSize = fields.placement.blobSize;
    this.verityOffset = fields.placement.verityOffset;
    this.#offsets = offsets;
    this.#payload = payload;
  }

  /** True when every frame has a SHA-512 anchor, i.e. lazy serving is allowed (rule 19). */
  get verifiable(): boolean {
    return this.hashAlgo === HASH_ALGO_SHA512;
  }

  /** End of the chunk table frame, `T + 8 + Nt` (= `V` with dm-verity, `B` without). */
  get tableFrameEnd(): number {
    return this.tableOffset + SKIPPABLE_HEADER_SIZE + this.payloadLength;
  }

  #check(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.chunkCount) {
      throw new RangeError(`chunk index ${index} out of range [0, ${this.chunkCount})`);
    }
  }

  /** Blob range `[Start_i, End_i)` of chunk i's zstd frame; `End_{n-1} = T`. */
  frameRange(index: number): ByteRange {
    this.#check(index);
    const end = index + 1 < this.chunkCount ? this.#offsets[index + 1]! : this.tableOffset;
    return { start: this.#offsets[index]!, end };
  }

  /** Compressed length `End_i − Start_i`. */
  frameLength(index: number): number {
    const { start, end } = this.frameRange(index);
    return end - start;
  }

  /** `size_i = min(C, U − i×C)`. */
  chunkLength(index: number): number {
    this.#check(index);
    return Math.min(this.chunkSize, this.uncompressedSize - index * this.chunkSize);
  }

  /** Image offset `i×C` where chunk i starts. */
  chunkOffset(index: number): number {
    this.#check(index);
    return index * this.chunkSize;
  }

  /** Index of the chunk holding image byte `offset` (0 ≤ offset < U). */
  chunkIndexAt(offset: number): number {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset >= this.uncompressedSize) {
      throw new RangeError(`image offset ${offset} out of range [0, ${this.uncompressedSize})`);
    }
    return Math.floor(offset / this.chunkSize);
  }

  /** A copy of entry i's 64-byte SHA-512, or undefined when HashAlgo is 0. */
  checksum(index: number): Buffer | undefined {
    this.#check(index);
    if (this.hashAlgo !== HASH_ALGO_SHA512) return undefined;
    const at = CHUNK_TABLE_HEADER_SIZE + index * (ENTRY_OFFSET_SIZE + SHA512_SIZE) + ENTRY_OFFSET_SIZE;
    return Buffer.from(this.#payload.subarray(at, at + SHA512_SIZE));
  }

  /** A copy of the table payload (the bytes chunk_digest covers). */
  payload(): Buffer {
    return Buffer.from(this.#payload);
  }
}

function checkPlacement(p: ChunkTablePlacement): void {
  const fields: Array<[string, number | undefined]> = [
    ['table offset', p.tableOffset],
    ['blob size', p.blobSize],
    ['dm-verity offset', p.verityOffset],
  ];
  for (const [name, value] of fields) {
    if (value !== undefined && (!Number.isSafeInteger(value) || value < 0)) {
      throw new SeekableFormatError(12, `${name} ${value} is not an integer in [0, 2^53-1]`);
    }
  }
}

/**
 * Parses and validates a chunk table payload (the `Nt` bytes after the skippable header) against where the
 * trusted descriptor places it. Enforces spec §10 rules 4 and 7–12 (and the cheap part of rule 20: room for a
 * dm-verity frame after the table). Does not check chunk_digest: loadChunkTable does that first (rule 6).
 */
export function parseChunkTable(payload: Uint8Array, placement: ChunkTablePlacement, context = ''): ChunkTable {
  checkPlacement(placement);
  const { tableOffset: T, blobSize: B, verityOffset: V } = placement;
  const Nt = payload.length;
  if (Nt < CHUNK_TABLE_HEADER_SIZE) {
    throw new SeekableFormatError(7, `payload length ${Nt} < ${CHUNK_TABLE_HEADER_SIZE}${context}`);
  }
  const buf = asBuffer(payload);
  const magic = buf.readUInt32LE(0);
  if (magic !== CHUNK_TABLE_MAGIC) {
    throw new SeekableFormatError(8, `table magic ${hex32(magic)} != ${hex32(CHUNK_TABLE_MAGIC)}${context}`);
  }
  const version = buf.readUInt32LE(4);
  if (version !== CHUNK_TABLE_VERSION) {
    throw new SeekableFormatError(8, `table version ${version} != ${CHUNK_TABLE_VERSION}${context}`);
  }
  const bigU = buf.readBigUInt64LE(8);
  const C = buf.readUInt32LE(16);
  if (C === 0) throw new SeekableFormatError(8, `ChunkSize 0${context}`);
  const hashAlgoByte = buf.readUInt8(20);
  const reserved = buf.readUInt16LE(21);
  if (reserved !== 0) throw new SeekableFormatError(8, `Reserved field ${reserved} != 0${context}`);
  if (hashAlgoByte !== HASH_ALGO_NONE && hashAlgoByte !== HASH_ALGO_SHA512) {
    throw new SeekableFormatError(8, `HashAlgo ${hashAlgoByte} is neither 0 (none) nor 1 (SHA-512)${context}`);
  }
  const hashAlgo: HashAlgo = hashAlgoByte;
  const expected = expectedChunkTableLength(bigU, BigInt(C), hashAlgo);
  const describe = `(U=${bigU}, C=${C}, HashAlgo=${hashAlgo})`;
  if (expected > BigInt(MAX_SKIPPABLE_PAYLOAD)) {
    throw new SeekableFormatError(9, `expected payload length ${expected} exceeds 0xFFFFFFFF ${describe}${context}`);
  }
  if (BigInt(Nt) !== expected) {
    throw new SeekableFormatError(9, `payload length ${Nt} != expected ${expected} ${describe}${context}`);
  }
  if (bigU > MAX_U64_EXACT) {
    throw new SeekableFormatError(12, `UncompressedSize ${bigU} exceeds 2^53-1${context}`);
  }
  const U = Number(bigU);
  const n = Number(chunkCountFor(bigU, BigInt(C)));

  const tableEnd = T + SKIPPABLE_HEADER_SIZE + Nt;
  if (tableEnd > B) {
    throw new SeekableFormatError(4, `chunk table frame [${T}, ${tableEnd}) extends past blob size ${B}${context}`);
  }
  if (V === undefined) {
    if (B !== tableEnd) {
      throw new SeekableFormatError(12, `blob size ${B} != T + 8 + Nt = ${tableEnd} (no dm-verity frame announced)${context}`);
    }
  } else {
    if (V !== tableEnd) {
      throw new SeekableFormatError(12, `dm-verity offset ${V} != T + 8 + Nt = ${tableEnd}${context}`);
    }
    if (V + SKIPPABLE_HEADER_SIZE > B) {
      throw new SeekableFormatError(20, `dm-verity frame header [${V}, ${V + SKIPPABLE_HEADER_SIZE}) extends past blob size ${B}${context}`);
    }
    if (B - V - SKIPPABLE_HEADER_SIZE < MIN_VERITY_PAYLOAD) {
      throw new SeekableFormatError(20, `dm-verity payload would be ${B - V - SKIPPABLE_HEADER_SIZE} bytes (< ${MIN_VERITY_PAYLOAD})${context}`);
    }
  }
  if (n === 0 && T !== 0) {
    throw new SeekableFormatError(11, `empty image (U=0) but chunk table offset ${T} != 0${context}`);
  }

  const entrySize = ENTRY_OFFSET_SIZE + hashSizeOf(hashAlgo);
  const offsets = new Float64Array(n);
  let previous = -1;
  for (let i = 0; i < n; i++) {
    const at = CHUNK_TABLE_HEADER_SIZE + i * entrySize;
    const low = buf.readUInt32LE(at);
    const high = buf.readUInt32LE(at + 4);
    if (high >= HIGH_WORD_2_POW_63) {
      throw new SeekableFormatError(10, `entry ${i}: BlockOffset ${buf.readBigUInt64LE(at)} >= 2^63${context}`);
    }
    if (high > MAX_SAFE_HIGH_WORD) {
      throw new SeekableFormatError(12, `entry ${i}: BlockOffset ${buf.readBigUInt64LE(at)} exceeds 2^53-1${context}`);
    }
    const offset = high * TWO_POW_32 + low;
    if (i === 0 && offset !== 0) {
      throw new SeekableFormatError(11, `entry 0: BlockOffset ${offset} != 0${context}`);
    }
    if (offset <= previous) {
      throw new SeekableFormatError(11, `entry ${i}: BlockOffset ${offset} not after entry ${i - 1}'s ${previous}${context}`);
    }
    offsets[i] = offset;
    previous = offset;
  }
  if (n > 0 && previous >= T) {
    throw new SeekableFormatError(11, `entry ${n - 1}: BlockOffset ${previous} >= chunk table offset ${T}${context}`);
  }
  if (n > 0) {
    const fullLimit = maxFrameLength(Math.min(C, U));
    const lastSize = U - (n - 1) * C;
    const lastLimit = maxFrameLength(lastSize);
    for (let i = 0; i < n; i++) {
      const length = (i + 1 < n ? offsets[i + 1]! : T) - offsets[i]!;
      const limit = i + 1 < n ? fullLimit : lastLimit;
      if (length > limit) {
        throw new SeekableFormatError(
          12,
          `chunk ${i}: frame of ${length} bytes exceeds the ${limit}-byte limit for a ${i + 1 < n ? C : lastSize}-byte chunk${context}`,
        );
      }
    }
  }
  return new ChunkTable({ uncompressedSize: U, chunkSize: C, hashAlgo, placement }, offsets, Buffer.from(buf));
}

function isSeekableLayout(x: Descriptor | SeekableLayout): x is SeekableLayout {
  return (x as Partial<SeekableLayout>).kind === 'seekable' && !('mediaType' in x);
}

/** Fetches the blob bytes `[start, end)` (end exclusive). */
export type ReadRange = (start: number, end: number) => Promise<Uint8Array>;

export interface LoadChunkTableOptions {
  /** Refuse chunk table frames larger than this many bytes (rule 12). */
  maxTableBytes?: number;
  /** Appended to error messages, e.g. " (layer sha256:…)". Defaults to the descriptor digest. */
  context?: string;
}

/**
 * Loads the chunk table of a seekable layer with ONE read of `[T, V)` (dm-verity) or `[T, B)`: checks the
 * skippable header (rules 4, 5) and that its declared length fills the range exactly (rules 4, 12), then the
 * payload SHA-512 against chunk_digest BEFORE parsing (rule 6, IntegrityError), then parses (rules 7–12).
 * A descriptor without the annotations needed for random access breaks rule 19.
 */
export async function loadChunkTable(
  layer: Descriptor | SeekableLayout,
  readRange: ReadRange,
  options: LoadChunkTableOptions = {},
): Promise<ChunkTable> {
  let layout: SeekableLayout;
  let context = options.context;
  if (isSeekableLayout(layer)) {
    layout = layer;
  } else {
    const verdict = parseSeekableAnnotations(layer);
    if (verdict.kind !== 'seekable') {
      throw new SeekableFormatError(19, `layer ${layer.digest} cannot be read lazily: ${verdict.reason}`);
    }
    layout = verdict;
    context ??= ` (layer ${layer.digest})`;
  }
  context ??= '';
  const maxTableBytes = options.maxTableBytes ?? DEFAULT_MAX_CHUNK_TABLE_BYTES;
  const T = layout.chunkTableOffset;
  const B = layout.blobSize;
  const V = layout.verity?.offset;
  if (T + SKIPPABLE_HEADER_SIZE > B) {
    throw new SeekableFormatError(4, `T + 8 = ${T + SKIPPABLE_HEADER_SIZE} > blob size ${B}${context}`);
  }
  if (V !== undefined && V + SKIPPABLE_HEADER_SIZE > B) {
    throw new SeekableFormatError(20, `V + 8 = ${V + SKIPPABLE_HEADER_SIZE} > blob size ${B}${context}`);
  }
  const end = V ?? B;
  if (end < T + SKIPPABLE_HEADER_SIZE) {
    throw new SeekableFormatError(12, `dm-verity offset ${end} leaves no room for the chunk table frame at ${T}${context}`);
  }
  const frameLength = end - T;
  if (frameLength - SKIPPABLE_HEADER_SIZE > MAX_SKIPPABLE_PAYLOAD) {
    throw new SeekableFormatError(12, `${V === undefined ? 'blob' : 'dm-verity offset'} ends ${frameLength} bytes after T; a chunk table frame is at most 8 + 0xFFFFFFFF${context}`);
  }
  if (frameLength > maxTableBytes) {
    throw new SeekableFormatError(12, `chunk table frame of ${frameLength} bytes exceeds the limit of ${maxTableBytes}${context}`);
  }
  const bytes = await readRange(T, end);
  if (bytes.length !== frameLength) {
    throw new SeekableFormatError(4, `read of [${T}, ${end}) returned ${bytes.length} bytes, want ${frameLength}${context}`);
  }
  const header = parseSkippableHeader(bytes, `chunk table frame at ${T}${context}`);
  const declaredEnd = T + SKIPPABLE_HEADER_SIZE + header.payloadLength;
  if (declaredEnd > B) {
    throw new SeekableFormatError(4, `T + 8 + Nt = ${declaredEnd} > blob size ${B} (Nt=${header.payloadLength})${context}`);
  }
  if (declaredEnd !== end) {
    throw new SeekableFormatError(
      12,
      `chunk table frame declares Nt=${header.payloadLength}, ending at ${declaredEnd}, but ${V === undefined ? 'the blob ends' : 'the dm-verity frame starts'} at ${end}${context}`,
    );
  }
  const payload = asBuffer(bytes).subarray(SKIPPABLE_HEADER_SIZE);
  verifyChunkTableDigest(payload, layout.chunkDigest, context);
  return parseChunkTable(payload, { tableOffset: T, blobSize: B, verityOffset: V }, context);
}

/** One chunk table entry for the serializer. */
export interface ChunkTableEntry {
  /** Absolute blob offset of the chunk's frame. */
  offset: number | bigint;
  /** 64-byte SHA-512 of the frame; required with HashAlgo 1, forbidden with 0. */
  checksum?: Uint8Array;
}

export interface ChunkTableFields {
  uncompressedSize: number | bigint;
  chunkSize: number;
  hashAlgo: HashAlgo;
  entries: readonly ChunkTableEntry[];
}

/**
 * Serializes a chunk table payload (23-byte header + entries). Checks what a writer must (spec §11):
 * 1 ≤ C ≤ 0xFFFFFFFF, exactly n entries, checksums of 64 bytes iff HashAlgo 1, Nt ≤ 0xFFFFFFFF.
 */
export function serializeChunkTable(fields: ChunkTableFields): Buffer {
  const { chunkSize, hashAlgo, entries } = fields;
  const U = BigInt(fields.uncompressedSize);
  if (U < 0n || U >= 1n << 64n) throw new RangeError(`uncompressed size ${U} is not a u64`);
  if (!Number.isInteger(chunkSize) || chunkSize < 1 || chunkSize > MAX_CHUNK_SIZE) {
    throw new RangeError(`chunk size ${chunkSize} is outside 1..0xFFFFFFFF`);
  }
  if (hashAlgo !== HASH_ALGO_NONE && hashAlgo !== HASH_ALGO_SHA512) {
    throw new RangeError(`HashAlgo ${String(hashAlgo)} is neither 0 nor 1`);
  }
  const n = chunkCountFor(U, BigInt(chunkSize));
  if (BigInt(entries.length) !== n) {
    throw new RangeError(`${entries.length} entries for U=${U}, C=${chunkSize}: want ${n}`);
  }
  const Nt = expectedChunkTableLength(U, BigInt(chunkSize), hashAlgo);
  if (Nt > BigInt(MAX_SKIPPABLE_PAYLOAD)) {
    throw new RangeError(`chunk table of ${Nt} bytes exceeds 0xFFFFFFFF (${n} chunks; at most ${MAX_CHUNK_COUNT})`);
  }
  const h = hashSizeOf(hashAlgo);
  const out = Buffer.alloc(Number(Nt));
  out.writeUInt32LE(CHUNK_TABLE_MAGIC, 0);
  out.writeUInt32LE(CHUNK_TABLE_VERSION, 4);
  out.writeBigUInt64LE(U, 8);
  out.writeUInt32LE(chunkSize, 16);
  out.writeUInt8(hashAlgo, 20);
  out.writeUInt16LE(0, 21);
  entries.forEach((entry, i) => {
    const at = CHUNK_TABLE_HEADER_SIZE + i * (ENTRY_OFFSET_SIZE + h);
    const offset = BigInt(entry.offset);
    if (offset < 0n || offset >= 1n << 63n) throw new RangeError(`entry ${i}: offset ${offset} is outside [0, 2^63)`);
    out.writeBigUInt64LE(offset, at);
    if (h === 0) {
      if (entry.checksum !== undefined) throw new RangeError(`entry ${i}: checksum given for HashAlgo 0`);
    } else {
      if (entry.checksum?.length !== h) throw new RangeError(`entry ${i}: checksum of ${entry.checksum?.length ?? 0} bytes, want ${h}`);
      out.set(entry.checksum, at + ENTRY_OFFSET_SIZE);
    }
  });
  return out;
}

/** The complete chunk table skippable frame (magic 0x184D2A50, Nt, payload). */
export function serializeChunkTableFrame(fields: ChunkTableFields): Buffer {
  return encodeSkippableFrame(serializeChunkTable(fields), WRITER_SKIPPABLE_MAGIC);
}
