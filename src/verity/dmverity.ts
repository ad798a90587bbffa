// dm-verity payload of a seekable EROFS blob (spec §9): a streaming hash-tree builder that produces the
// payload byte-for-byte like `veritysetup format --hash=sha512 --salt=-`, the reader-side parser that
// enforces spec §10 rules 20–21, root/tree verification, the `root_digest` annotation codec, and the
// materialized single-file layout plus its `.dmverity` JSON sidecar (§9.5).
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';

// ---------------------------------------------------------------------------------------------------
// Constants (spec §9.1, §9.2, §11)

/** Default data/hash block size (spec §11). */
export const DEFAULT_VERITY_BLOCK_SIZE = 4096;
/** Smallest and largest allowed block sizes; every power of two in between is valid (spec §11). */
export const MIN_VERITY_BLOCK_SIZE = 512;
export const MAX_VERITY_BLOCK_SIZE = 524288;
/** Size of the cryptsetup verity superblock at payload offset 0 (spec §9.2). */
export const VERITY_SUPERBLOCK_SIZE = 512;
/** `verity\0\0` (spec §9.2). */
export const VERITY_SIGNATURE: Buffer = Buffer.from('verity\0\0', 'latin1');
export const VERITY_VERSION = 1;
export const VERITY_HASH_TYPE = 1;
export const VERITY_ALGORITHM = 'sha512';
/** SHA-512 digest length; also the size of one hash-tree entry. */
export const VERITY_DIGEST_SIZE = 64;
export const VERITY_UUID_SIZE = 16;
/** Largest payload a skippable frame can carry (spec §3, §11). */
export const MAX_VERITY_PAYLOAD_LENGTH = 0xffffffff;
/** Prefix of the `dev.containerd.erofs.dmverity.root_digest` annotation value (spec §8.2). */
export const VERITY_ROOT_DIGEST_PREFIX = 'sha512:';
/** Suffix of the materialized file's sidecar (spec §9.5). */
export const VERITY_SIDECAR_SUFFIX = '.dmverity';
/** Skippable frame magic range and header size (spec §3). */
export const SKIPPABLE_MAGIC_MIN = 0x184d2a50;
export const SKIPPABLE_MAGIC_MAX = 0x184d2a5f;
export const SKIPPABLE_HEADER_SIZE = 8;
/** Read size used when streaming a raw image from disk. */
const IMAGE_READ_CHUNK = 1 << 20;

// Superblock field offsets (spec §9.2).
const SB_SIGNATURE = 0;
const SB_VERSION = 8;
const SB_HASH_TYPE = 12;
const SB_UUID = 16;
const SB_ALGORITHM = 32;
const SB_ALGORITHM_SIZE = 32;
const SB_DATA_BLOCK_SIZE = 64;
const SB_HASH_BLOCK_SIZE = 68;
const SB_DATA_BLOCKS = 72;
const SB_SALT_SIZE = 80;

const HEX128 = /^[0-9a-f]{128}$/;
const UUID_PATTERN = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

// ---------------------------------------------------------------------------------------------------
// Errors

/** Spec §10 rule a malformed dm-verity input breaks: 3 (root_digest annotation), 20 or 21 (the frame). */
export type VerityRule = 3 | 20 | 21;

/** A dm-verity frame, payload or root_digest annotation that a reader must reject (spec §10). */
export class VerityFormatError extends Error {
  override name = 'VerityFormatError';
  constructor(
    /** The spec §10 rule that was broken. */
    readonly rule: VerityRule,
    /** The offending field, e.g. `hash_type` or `payload length`. */
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** What a verification found different from the trusted value. */
export type VerityMismatchSubject = 'root' | 'hash-block' | 'image-size';

/**
 * Well-formed dm-verity data that does not match what it must match: the root_digest annotation, the
 * payload's own upper levels, or a tree recomputed from the full image (spec §10 rule 21).
 */
export class VerityIntegrityError extends Error {
  override name = 'VerityIntegrityError';
  readonly rule = 21;
  constructor(
    message: string,
    readonly subject: VerityMismatchSubject,
    /** For `hash-block`: tree level (0 = leaf level) and block index within it. */
    readonly location?: { level: number; block: number },
  ) {
    super(message);
  }
}

/** A `.dmverity` sidecar file that is not the JSON of spec §9.5. */
export class VeritySidecarError extends Error {
  override name = 'VeritySidecarError';
}

// ---------------------------------------------------------------------------------------------------
// Small helpers

function ctx(context: string | undefined): string {
  return context ? ` (${context})` : '';
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function sha512(data: Uint8Array): Buffer {
  return createHash('sha512').update(data).digest();
}

function shortHex(b: Uint8Array): string {
  return `${Buffer.from(b.subarray(0, 8)).toString('hex')}…`;
}

/** True when `bs` is a valid dm-verity block size: a power of two in [512, 524288] (spec §11). */
export function isValidVerityBlockSize(bs: number): boolean {
  return Number.isInteger(bs) && bs >= MIN_VERITY_BLOCK_SIZE && bs <= MAX_VERITY_BLOCK_SIZE && (bs & (bs - 1)) === 0;
}

function checkBlockSizeArg(bs: number, what: string): void {
  if (!isValidVerityBlockSize(bs)) {
    throw new RangeError(
      `${what}: invalid dm-verity block size ${bs}; must be a power of two from ${MIN_VERITY_BLOCK_SIZE} to ${MAX_VERITY_BLOCK_SIZE}`,
    );
  }
}

/** Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` into 16 bytes. */
export function parseUuid(uuid: string): Buffer {
  if (!UUID_PATTERN.test(uuid)) throw new RangeError(`invalid UUID ${JSON.stringify(uuid.slice(0, 64))}`);
  return Buffer.from(uuid.replaceAll('-', ''), 'hex');
}

/** Formats 16 bytes as a lowercase hyphenated UUID. */
export function formatUuid(uuid: Uint8Array): string {
  if (uuid.length !== VERITY_UUID_SIZE) throw new RangeError(`UUID must be ${VERITY_UUID_SIZE} bytes, got ${uuid.length}`);
  const h = Buffer.from(uuid).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ---------------------------------------------------------------------------------------------------
// Tree geometry (spec §9.3, §9.4)

export interface VerityLayout {
  /** Number of tree levels (0 when data_blocks = 1). */
  levels: number;
  /** Blocks per level, top level first (the order they are stored in). */
  levelBlocks: number[];
  /** Total hash blocks H on all levels. */
  hashBlocks: number;
  /** Nv as this module writes it: 512 when data_blocks = 1, otherwise bs + H × bs. */
  payloadLength: number;
}

/** Computes the tree shape for `dataBlocks` ≥ 1 blocks of size `blockSize` (already validated). */
export function computeVerityLayout(dataBlocks: number, blockSize: number): VerityLayout {
  if (!Number.isSafeInteger(dataBlocks) || dataBlocks < 1) throw new RangeError(`data_blocks ${dataBlocks} must be a positive safe integer`);
  checkBlockSizeArg(blockSize, 'computeVerityLayout');
  const perBlock = blockSize / VERITY_DIGEST_SIZE;
  const bottomUp: number[] = [];
  let n = dataBlocks;
  while (n > 1) {
    n = Math.ceil(n / perBlock);
    bottomUp.push(n);
  }
  const hashBlocks = bottomUp.reduce((a, b) => a + b, 0);
  return {
    levels: bottomUp.length,
    levelBlocks: bottomUp.reverse(),
    hashBlocks,
    payloadLength: dataBlocks === 1 ? VERITY_SUPERBLOCK_SIZE : blockSize + hashBlocks * blockSize,
  };
}

function encodeSuperblock(uuid: Uint8Array, blockSize: number, dataBlocks: number): Buffer {
  const sb = Buffer.alloc(VERITY_SUPERBLOCK_SIZE);
  VERITY_SIGNATURE.copy(sb, SB_SIGNATURE);
  sb.writeUInt32LE(VERITY_VERSION, SB_VERSION);
  sb.writeUInt32LE(VERITY_HASH_TYPE, SB_HASH_TYPE);
  Buffer.from(uuid).copy(sb, SB_UUID);
  sb.write(VERITY_ALGORITHM, SB_ALGORITHM, 'latin1');
  sb.writeUInt32LE(blockSize, SB_DATA_BLOCK_SIZE);
  sb.writeUInt32LE(blockSize, SB_HASH_BLOCK_SIZE);
  sb.writeBigUInt64LE(BigInt(dataBlocks), SB_DATA_BLOCKS);
  sb.writeUInt16LE(0, SB_SALT_SIZE);
  return sb;
}

/** Builds the next level up: one digest per block of `blocks`, packed `bs / 64` per zero-filled block. */
function buildLevel(blocks: readonly Buffer[], blockSize: number): Buffer[] {
  const perBlock = blockSize / VERITY_DIGEST_SIZE;
  const out: Buffer[] = [];
  for (let i = 0; i < blocks.length; i += perBlock) {
    const block = Buffer.alloc(blockSize);
    const end = Math.min(blocks.length, i + perBlock);
    for (let j = i; j < end; j++) {
      createHash('sha512').update(blocks[j]!).digest().copy(block, (j - i) * VERITY_DIGEST_SIZE);
    }
    out.push(block);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Writer: streaming tree builder

export interface VerityTreeBuilderOptions {
  /** Data and hash block size; default 4096. */
  blockSize?: number;
  /** 16-byte non-zero UUID for the superblock; default a random v4 UUID. */
  uuid?: Uint8Array;
}

export interface VerityTreeResult {
  /** The dm-verity frame payload exactly as spec §9.4 (Nv = payload.length). */
  payload: Buffer;
  /** Raw 64-byte root hash. */
  rootHash: Buffer;
  dataBlocks: number;
  /** data_blocks × bs: where the superblock lands in the materialized single file (§9.5). */
  hashOffset: number;
}

/**
 * Builds the dm-verity payload of a raw EROFS image fed in order through `update()`, in pieces of any
 * size. Only the leaf digests (1/64 of the image at bs 4096) and one partial data block are kept.
 */
export class VerityTreeBuilder {
  readonly blockSize: number;
  readonly uuid: Buffer;
  private readonly perBlock: number;
  private readonly partial: Buffer;
  private partialLength = 0;
  private totalBytes = 0;
  private dataBlocks = 0;
  /** Completed leaf-level hash blocks, then the one being filled. */
  private readonly leafBlocks: Buffer[] = [];
  private leafCurrent: Buffer;
  private leafEntries = 0;
  private finished = false;

  constructor(opts: VerityTreeBuilderOptions = {}) {
    this.blockSize = opts.blockSize ?? DEFAULT_VERITY_BLOCK_SIZE;
    checkBlockSizeArg(this.blockSize, 'VerityTreeBuilder');
    if (opts.uuid !== undefined) {
      if (opts.uuid.length !== VERITY_UUID_SIZE) {
        throw new RangeError(`VerityTreeBuilder: UUID must be ${VERITY_UUID_SIZE} bytes, got ${opts.uuid.length}`);
      }
      if (opts.uuid.every((b) => b === 0)) throw new RangeError('VerityTreeBuilder: UUID must be non-zero');
      this.uuid = Buffer.from(opts.uuid);
    } else {
      this.uuid = parseUuid(randomUUID());
    }
    this.perBlock = this.blockSize / VERITY_DIGEST_SIZE;
    this.partial = Buffer.alloc(this.blockSize);
    this.leafCurrent = Buffer.alloc(this.blockSize);
  }

  /** Bytes of raw image consumed so far. */
  get bytesIn(): number {
    return this.totalBytes;
  }

  update(data: Uint8Array): void {
    if (this.finished) throw new Error('VerityTreeBuilder: update() after finish()');
    const bs = this.blockSize;
    let pos = 0;
    const len = data.length;
    this.totalBytes += len;
    if (this.partialLength > 0) {
      const take = Math.min(bs - this.partialLength, len);
      this.partial.set(data.subarray(0, take), this.partialLength);
      this.partialLength += take;
      pos = take;
      if (this.partialLength < bs) return;
      this.addDataBlock(this.partial);
      this.partialLength = 0;
    }
    while (len - pos >= bs) {
      this.addDataBlock(data.subarray(pos, pos + bs));
      pos += bs;
    }
    if (pos < len) {
      this.partial.set(data.subarray(pos), 0);
      this.partialLength = len - pos;
    }
  }

  private addDataBlock(block: Uint8Array): void {
    createHash('sha512').update(block).digest().copy(this.leafCurrent, this.leafEntries * VERITY_DIGEST_SIZE);
    this.dataBlocks++;
    if (++this.leafEntries === this.perBlock) {
      this.leafBlocks.push(this.leafCurrent);
      this.leafCurrent = Buffer.alloc(this.blockSize);
      this.leafEntries = 0;
    }
  }

  /** Pads the last data block with zeros, builds every level and returns the payload and root. */
  finish(): VerityTreeResult {
    if (this.finished) throw new Error('VerityTreeBuilder: finish() called twice');
    this.finished = true;
    const bs = this.blockSize;
    if (this.partialLength > 0) {
      this.partial.fill(0, this.partialLength);
      this.addDataBlock(this.partial);
      this.partialLength = 0;
    }
    if (this.dataBlocks === 0) throw new RangeError('VerityTreeBuilder: dm-verity cannot be built for an empty image (spec §11)');
    const hashOffset = this.dataBlocks * bs;
    if (!Number.isSafeInteger(hashOffset)) throw new RangeError(`VerityTreeBuilder: image of ${this.totalBytes} bytes is too large`);
    if (this.leafEntries > 0) this.leafBlocks.push(this.leafCurrent);

    if (this.dataBlocks === 1) {
      // No tree: root = digest(data block 0), which is the first entry of the (unstored) leaf block.
      const rootHash = Buffer.from(this.leafBlocks[0]!.subarray(0, VERITY_DIGEST_SIZE));
      return { payload: encodeSuperblock(this.uuid, bs, 1), rootHash, dataBlocks: 1, hashOffset };
    }

    const levels: Buffer[][] = [this.leafBlocks];
    while (levels[levels.length - 1]!.length > 1) levels.push(buildLevel(levels[levels.length - 1]!, bs));
    const hashBlocks = levels.reduce((a, l) => a + l.length, 0);
    const length = bs + hashBlocks * bs;
    if (length > MAX_VERITY_PAYLOAD_LENGTH) {
      throw new RangeError(`VerityTreeBuilder: payload length ${length} exceeds ${MAX_VERITY_PAYLOAD_LENGTH} (image too large for one skippable frame)`);
    }
    const payload = Buffer.alloc(length);
    encodeSuperblock(this.uuid, bs, this.dataBlocks).copy(payload, 0);
    let off = bs;
    for (let k = levels.length - 1; k >= 0; k--) {
      for (const block of levels[k]!) {
        block.copy(payload, off);
        off += bs;
      }
    }
    const rootHash = sha512(levels[levels.length - 1]![0]!);
    return { payload, rootHash, dataBlocks: this.dataBlocks, hashOffset };
  }
}

// ---------------------------------------------------------------------------------------------------
// Reader: frame header and payload parsing (spec §10 rules 20–21)

export interface VerityFrameHeader {
  magic: number;
  /** Absolute blob offset of the payload (V + 8). */
  payloadOffset: number;
  /** Nv. */
  payloadLength: number;
}

/**
 * Checks the 8-byte skippable header of the dm-verity frame at blob offset `frameOffset` (V) in a blob of
 * `blobSize` (B) bytes: `V + 8 ≤ B`, a skippable magic, `V + 8 + Nv ≤ B` (rule 20). `header` holds at
 * least the 8 bytes at V (fewer means the blob ended early). Whether the blob ends exactly at V + 8 + Nv
 * is rule 12 and left to the caller.
 */
export function parseVerityFrameHeader(header: Uint8Array, frameOffset: number, blobSize: number, context?: string): VerityFrameHeader {
  const c = ctx(context);
  if (!Number.isSafeInteger(frameOffset) || frameOffset < 0 || !Number.isSafeInteger(blobSize) || blobSize < 0) {
    throw new VerityFormatError(20, 'offset', `dm-verity frame${c}: offset ${frameOffset} / blob size ${blobSize} not representable (rule 20)`);
  }
  if (frameOffset + SKIPPABLE_HEADER_SIZE > blobSize || header.length < SKIPPABLE_HEADER_SIZE) {
    throw new VerityFormatError(20, 'offset', `dm-verity frame${c}: header at ${frameOffset} runs past the blob end ${blobSize} (rule 20: V + 8 > B)`);
  }
  const h = asBuffer(header);
  const magic = h.readUInt32LE(0);
  if (magic < SKIPPABLE_MAGIC_MIN || magic > SKIPPABLE_MAGIC_MAX) {
    throw new VerityFormatError(20, 'magic', `dm-verity frame${c}: magic 0x${magic.toString(16).padStart(8, '0')} at ${frameOffset} is not a skippable frame magic (rule 20)`);
  }
  const payloadLength = h.readUInt32LE(4);
  const payloadOffset = frameOffset + SKIPPABLE_HEADER_SIZE;
  if (payloadOffset + payloadLength > blobSize) {
    throw new VerityFormatError(20, 'payload length', `dm-verity frame${c}: payload of ${payloadLength} bytes at ${payloadOffset} runs past the blob end ${blobSize} (rule 20: V + 8 + Nv > B)`);
  }
  return { magic, payloadOffset, payloadLength };
}

export interface VeritySuperblock {
  version: number;
  hashType: number;
  uuid: Buffer;
  algorithm: 'sha512';
  dataBlockSize: number;
  hashBlockSize: number;
  dataBlocks: number;
  saltSize: number;
}

export interface VerityPayloadInfo extends VeritySuperblock {
  /** Tree levels and blocks per level (top first). */
  levels: number;
  levelBlocks: number[];
  hashBlocks: number;
  /** Nv: the payload's actual length (512 or bs when data_blocks = 1). */
  payloadLength: number;
  /** data_blocks × bs: superblock offset in the materialized single file. */
  hashOffset: number;
}

export interface ParseVerityOptions {
  /** U, the raw image size from the chunk table. */
  uncompressedSize: number;
  /** Prefix for error messages, e.g. the layer digest. */
  context?: string;
}

/**
 * Checks the superblock fields that do not depend on the image size (rules 20–21). data_blocks is
 * returned as a bigint because the field is a u64.
 */
function readSuperblock(payload: Uint8Array, context: string | undefined): VeritySuperblock & { dataBlocksRaw: bigint } {
  const c = ctx(context);
  const fail = (rule: 20 | 21, field: string, detail: string): never => {
    throw new VerityFormatError(rule, field, `dm-verity payload${c}: ${detail} (rule ${rule})`);
  };
  if (!(payload instanceof Uint8Array)) fail(20, 'payload', 'payload is not a byte array');
  if (payload.length < VERITY_SUPERBLOCK_SIZE) fail(20, 'payload length', `payload length ${payload.length} < ${VERITY_SUPERBLOCK_SIZE}`);
  const p = asBuffer(payload);
  if (!p.subarray(SB_SIGNATURE, SB_SIGNATURE + VERITY_SIGNATURE.length).equals(VERITY_SIGNATURE)) {
    fail(20, 'signature', `signature ${p.subarray(0, 8).toString('hex')}, want ${VERITY_SIGNATURE.toString('hex')} ("verity\\0\\0")`);
  }
  const version = p.readUInt32LE(SB_VERSION);
  if (version !== VERITY_VERSION) fail(20, 'version', `version ${version}, want ${VERITY_VERSION}`);
  const uuid = Buffer.from(p.subarray(SB_UUID, SB_UUID + VERITY_UUID_SIZE));
  if (uuid.every((b) => b === 0)) fail(20, 'uuid', 'UUID is all zero');
  const hashType = p.readUInt32LE(SB_HASH_TYPE);
  if (hashType !== VERITY_HASH_TYPE) fail(21, 'hash_type', `hash_type ${hashType}, want ${VERITY_HASH_TYPE}`);
  const alg = p.subarray(SB_ALGORITHM, SB_ALGORITHM + SB_ALGORITHM_SIZE);
  const algOk = alg.subarray(0, VERITY_ALGORITHM.length).toString('latin1') === VERITY_ALGORITHM && alg.subarray(VERITY_ALGORITHM.length).every((b) => b === 0);
  if (!algOk) fail(21, 'algorithm', `algorithm field ${JSON.stringify(alg.toString('latin1').replace(/\0+$/, ''))} (hex ${alg.toString('hex')}), want "${VERITY_ALGORITHM}" followed by NUL bytes`);
  const dataBlockSize = p.readUInt32LE(SB_DATA_BLOCK_SIZE);
  if (!isValidVerityBlockSize(dataBlockSize)) {
    fail(21, 'data_block_size', `data_block_size ${dataBlockSize} is not a power of two from ${MIN_VERITY_BLOCK_SIZE} to ${MAX_VERITY_BLOCK_SIZE}`);
  }
  const hashBlockSize = p.readUInt32LE(SB_HASH_BLOCK_SIZE);
  if (hashBlockSize !== dataBlockSize) fail(21, 'hash_block_size', `hash_block_size ${hashBlockSize} differs from data_block_size ${dataBlockSize}`);
  const saltSize = p.readUInt16LE(SB_SALT_SIZE);
  if (saltSize !== 0) fail(21, 'salt_size', `salt_size ${saltSize}, want 0`);
  const dataBlocksRaw = p.readBigUInt64LE(SB_DATA_BLOCKS);
  if (dataBlocksRaw === 0n) fail(21, 'data_blocks', 'data_blocks is 0');
  return {
    version,
    hashType,
    uuid,
    algorithm: VERITY_ALGORITHM,
    dataBlockSize,
    hashBlockSize,
    dataBlocks: Number(dataBlocksRaw),
    saltSize,
    dataBlocksRaw,
  };
}

function checkUncompressedSize(u: number, what: string): void {
  if (!Number.isSafeInteger(u) || u < 0) throw new RangeError(`${what}: uncompressedSize ${u} must be a non-negative safe integer`);
}

/**
 * Parses and validates a dm-verity frame payload (everything after the 8-byte skippable header) against
 * the raw image size U. Throws only VerityFormatError for malformed payloads (a RangeError only when
 * `uncompressedSize` itself is not a non-negative safe integer).
 */
export function parseVerityPayload(payload: Uint8Array, opts: ParseVerityOptions): VerityPayloadInfo {
  checkUncompressedSize(opts.uncompressedSize, 'parseVerityPayload');
  const c = ctx(opts.context);
  const sb = readSuperblock(payload, opts.context);
  const bs = sb.dataBlockSize;
  const u = BigInt(opts.uncompressedSize);
  const expectedBlocks = (u + BigInt(bs) - 1n) / BigInt(bs);
  if (sb.dataBlocksRaw !== expectedBlocks) {
    throw new VerityFormatError(
      21,
      'data_blocks',
      `dm-verity payload${c}: data_blocks ${sb.dataBlocksRaw}, want ceil(${opts.uncompressedSize} / ${bs}) = ${expectedBlocks} (rule 21)`,
    );
  }
  const layout = computeVerityLayout(sb.dataBlocks, bs);
  const nv = payload.length;
  const accepted = sb.dataBlocks === 1 ? [VERITY_SUPERBLOCK_SIZE, bs] : [layout.payloadLength];
  if (!accepted.includes(nv)) {
    throw new VerityFormatError(
      21,
      'payload length',
      `dm-verity payload${c}: length ${nv}, want ${[...new Set(accepted)].join(' or ')} for ${sb.dataBlocks} data blocks of ${bs} bytes (rule 21)`,
    );
  }
  const { dataBlocksRaw: _raw, ...rest } = sb;
  return {
    ...rest,
    levels: layout.levels,
    levelBlocks: layout.levelBlocks,
    hashBlocks: layout.hashBlocks,
    payloadLength: nv,
    hashOffset: sb.dataBlocks * bs,
  };
}

// ---------------------------------------------------------------------------------------------------
// root_digest annotation (spec §8.2, §10 rule 3)

/** `sha512:` + 128 lowercase hex of a raw 64-byte root hash. */
export function formatVerityRootDigest(rootHash: Uint8Array): string {
  if (rootHash.length !== VERITY_DIGEST_SIZE) throw new RangeError(`root hash must be ${VERITY_DIGEST_SIZE} bytes, got ${rootHash.length}`);
  return VERITY_ROOT_DIGEST_PREFIX + Buffer.from(rootHash).toString('hex');
}

/** Parses a `dev.containerd.erofs.dmverity.root_digest` value into the raw root; VerityFormatError (rule 3) otherwise. */
export function parseVerityRootDigest(value: string, context?: string): Buffer {
  const hex = typeof value === 'string' && value.startsWith(VERITY_ROOT_DIGEST_PREFIX) ? value.slice(VERITY_ROOT_DIGEST_PREFIX.length) : undefined;
  if (hex === undefined || !HEX128.test(hex)) {
    const shown = typeof value === 'string' ? JSON.stringify(value.slice(0, 140)) : typeof value;
    throw new VerityFormatError(3, 'root_digest', `dm-verity root_digest${ctx(context)}: ${shown} is not "sha512:" + 128 lowercase hex (rule 3)`);
  }
  return Buffer.from(hex, 'hex');
}

// ---------------------------------------------------------------------------------------------------
// Verification

export interface VerityRootCheck {
  info: VerityPayloadInfo;
  /**
   * True when the payload's top-level block hashed to the root and every stored upper level matched
   * the level below. False for data_blocks = 1: there is no tree, and the root (the digest of data
   * block 0) can only be checked with the image (verifyVerityTree).
   */
  rootChecked: boolean;
}

/**
 * Checks a payload against the root_digest annotation without the image: parses it (rules 20–21),
 * requires SHA-512 of the top-level block to equal the root, and requires each stored interior level
 * block's digest to match its entry in the level above (so the whole hash area is anchored to the
 * root; only the leaf-vs-data link needs the image). Throws VerityFormatError or VerityIntegrityError.
 */
export function verifyVerityRoot(payload: Uint8Array, rootDigest: string, opts: ParseVerityOptions): VerityRootCheck {
  const root = parseVerityRootDigest(rootDigest, opts.context);
  const info = parseVerityPayload(payload, opts);
  if (info.dataBlocks === 1) return { info, rootChecked: false };
  const c = ctx(opts.context);
  const bs = info.dataBlockSize;
  const p = asBuffer(payload);
  const top = p.subarray(bs, 2 * bs);
  const actual = sha512(top);
  if (!actual.equals(root)) {
    throw new VerityIntegrityError(
      `dm-verity payload${c}: SHA-512 of the top-level hash block is ${shortHex(actual)}, root_digest is ${shortHex(root)} (rule 21)`,
      'root',
    );
  }
  // Interior levels: stored level t (top first) holds the digests of the blocks of level t + 1.
  let parentOff = bs;
  for (let t = 0; t + 1 < info.levelBlocks.length; t++) {
    const childOff = parentOff + info.levelBlocks[t]! * bs;
    const childCount = info.levelBlocks[t + 1]!;
    for (let j = 0; j < childCount; j++) {
      const got = sha512(p.subarray(childOff + j * bs, childOff + (j + 1) * bs));
      const entry = p.subarray(parentOff + j * VERITY_DIGEST_SIZE, parentOff + (j + 1) * VERITY_DIGEST_SIZE);
      if (!got.equals(entry)) {
        const level = info.levels - 2 - t; // 0 = leaf level
        throw new VerityIntegrityError(
          `dm-verity payload${c}: hash block ${j} of level ${level} (0 = leaves) hashes to ${shortHex(got)} but its parent entry is ${shortHex(entry)} (rule 21)`,
          'hash-block',
          { level, block: j },
        );
      }
    }
    parentOff = childOff;
  }
  return { info, rootChecked: true };
}

/** A raw image given as a file path or as a stream of byte chunks. */
export type VerityImageSource = string | AsyncIterable<Uint8Array>;

async function* imageChunks(source: VerityImageSource): AsyncGenerator<Uint8Array> {
  const iterable: AsyncIterable<unknown> = typeof source === 'string' ? createReadStream(source, { highWaterMark: IMAGE_READ_CHUNK }) : source;
  for await (const chunk of iterable) {
    if (!(chunk instanceof Uint8Array)) throw new TypeError('image stream yielded a non-binary chunk (set no encoding on the stream)');
    yield chunk;
  }
}

export interface VerifyVerityTreeOptions {
  /** U from the chunk table; when given, the image must have exactly this many bytes. */
  uncompressedSize?: number;
  context?: string;
}

/** Compares a tree recomputed from the image with the stored payload and root (internal). */
function compareRecomputed(built: VerityTreeResult, payload: Buffer, info: VerityPayloadInfo, root: Buffer, c: string): void {
  const bs = info.dataBlockSize;
  if (info.dataBlocks > 1) {
    // Name the lowest differing hash block: scan from the leaf level (stored last) upwards.
    let off = payload.length;
    for (let t = info.levelBlocks.length - 1; t >= 0; t--) {
      const count = info.levelBlocks[t]!;
      off -= count * bs;
      for (let j = 0; j < count; j++) {
        const a = payload.subarray(off + j * bs, off + (j + 1) * bs);
        const b = built.payload.subarray(off + j * bs, off + (j + 1) * bs);
        if (!a.equals(b)) {
          const level = info.levels - 1 - t;
          throw new VerityIntegrityError(
            `dm-verity payload${c}: stored hash block ${j} of level ${level} (0 = leaves; data blocks ${j * (bs / VERITY_DIGEST_SIZE) ** (level + 1)}+) differs from the one recomputed from the image (rule 21)`,
            'hash-block',
            { level, block: j },
          );
        }
      }
    }
  }
  if (!built.rootHash.equals(root)) {
    throw new VerityIntegrityError(
      `dm-verity${c}: root recomputed from the image is ${shortHex(built.rootHash)}, root_digest is ${shortHex(root)} (rule 21)`,
      'root',
    );
  }
}

/**
 * Recomputes the whole tree from the full raw image (streamed, never held whole) and requires it to equal
 * the payload's hash area and the root_digest annotation (rule 21, "when the reader has the full image").
 * The image size U is whatever the image yields (checked against `opts.uncompressedSize` if given).
 */
export async function verifyVerityTree(
  image: VerityImageSource,
  payload: Uint8Array,
  rootDigest: string,
  opts: VerifyVerityTreeOptions = {},
): Promise<VerityPayloadInfo> {
  const c = ctx(opts.context);
  if (opts.uncompressedSize !== undefined) checkUncompressedSize(opts.uncompressedSize, 'verifyVerityTree');
  const root = parseVerityRootDigest(rootDigest, opts.context);
  const sb = readSuperblock(payload, opts.context);
  if (opts.uncompressedSize !== undefined) parseVerityPayload(payload, { uncompressedSize: opts.uncompressedSize, context: opts.context });
  const builder = new VerityTreeBuilder({ blockSize: sb.dataBlockSize, uuid: sb.uuid });
  for await (const chunk of imageChunks(image)) builder.update(chunk);
  const u = builder.bytesIn;
  if (opts.uncompressedSize !== undefined && u !== opts.uncompressedSize) {
    throw new VerityIntegrityError(`dm-verity${c}: image has ${u} bytes, expected ${opts.uncompressedSize}`, 'image-size');
  }
  const info = parseVerityPayload(payload, { uncompressedSize: u, context: opts.context });
  compareRecomputed(builder.finish(), asBuffer(payload), info, root, c);
  return info;
}

// ---------------------------------------------------------------------------------------------------
// Sidecar (spec §9.5)

export interface VeritySidecar {
  /** 128 lowercase hex, no algorithm prefix. */
  rootHash: string;
  hashOffset: number;
}

/** The exact sidecar text: two-space-indented JSON, keys `roothash` then `hashoffset`, trailing newline. */
export function formatVeritySidecar(sidecar: VeritySidecar): string {
  if (!HEX128.test(sidecar.rootHash)) throw new RangeError(`sidecar roothash ${JSON.stringify(sidecar.rootHash.slice(0, 140))} is not 128 lowercase hex`);
  if (!Number.isSafeInteger(sidecar.hashOffset) || sidecar.hashOffset < 0) throw new RangeError(`sidecar hashoffset ${sidecar.hashOffset} is not a non-negative integer`);
  return `${JSON.stringify({ roothash: sidecar.rootHash, hashoffset: sidecar.hashOffset }, null, 2)}\n`;
}

/** Parses sidecar JSON; tolerates a `sha512:` prefix on roothash (older revision) and ignores unknown keys. */
export function parseVeritySidecar(text: string, context?: string): VeritySidecar {
  const c = ctx(context);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new VeritySidecarError(`dm-verity sidecar${c}: not JSON: ${(err as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new VeritySidecarError(`dm-verity sidecar${c}: not a JSON object`);
  const rec = doc as Record<string, unknown>;
  let root = rec.roothash;
  if (typeof root === 'string' && root.startsWith(VERITY_ROOT_DIGEST_PREFIX)) root = root.slice(VERITY_ROOT_DIGEST_PREFIX.length);
  if (typeof root !== 'string' || !HEX128.test(root)) {
    throw new VeritySidecarError(`dm-verity sidecar${c}: roothash ${JSON.stringify(rec.roothash)?.slice(0, 150)} is not 128 lowercase hex`);
  }
  const off = rec.hashoffset;
  if (typeof off !== 'number' || !Number.isSafeInteger(off) || off < 0) {
    throw new VeritySidecarError(`dm-verity sidecar${c}: hashoffset ${JSON.stringify(off)} is not a non-negative integer`);
  }
  return { rootHash: root, hashOffset: off };
}

export async function readVeritySidecar(path: string): Promise<VeritySidecar> {
  return parseVeritySidecar(await readFile(path, 'utf8'), path);
}

// ---------------------------------------------------------------------------------------------------
// Materialized single file (spec §9.5)

export interface MaterializeVerityOptions {
  /** Expected block size; must match the payload's superblock when given. */
  blockSize?: number;
  /** The root_digest annotation. When given, the sidecar root must equal it. */
  rootDigest?: string;
  /** Recompute the whole tree from the image while copying and require it to match (default true). */
  verify?: boolean;
  context?: string;
}

export interface MaterializeVerityResult {
  path: string;
  sidecarPath: string;
  /** Root hash as written to the sidecar (128 lowercase hex). */
  rootHash: string;
  hashOffset: number;
  fileSize: number;
  info: VerityPayloadInfo;
}

async function writeFully(fh: import('node:fs/promises').FileHandle, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done);
    if (bytesWritten <= 0) throw new Error(`short write (${done} of ${data.length} bytes)`);
    done += bytesWritten;
  }
}

/**
 * Writes `outPath` = raw image || zeros to a multiple of bs || payload verbatim, and the sidecar
 * `outPath + '.dmverity'`. The image is streamed from `rawImagePath`. Both files are written to temporary
 * names and renamed into place, so a failure leaves neither behind.
 */
export async function materializeVerityFile(
  rawImagePath: string,
  payload: Buffer,
  outPath: string,
  opts: MaterializeVerityOptions = {},
): Promise<MaterializeVerityResult> {
  const context = opts.context ?? rawImagePath;
  const c = ctx(context);
  const u = (await stat(rawImagePath)).size;
  const info = parseVerityPayload(payload, { uncompressedSize: u, context });
  const bs = info.dataBlockSize;
  if (opts.blockSize !== undefined && opts.blockSize !== bs) {
    throw new VerityFormatError(21, 'data_block_size', `dm-verity payload${c}: block size ${bs}, caller expects ${opts.blockSize} (rule 21)`);
  }
  const annotated = opts.rootDigest !== undefined ? parseVerityRootDigest(opts.rootDigest, context) : undefined;
  if (annotated && info.dataBlocks > 1) verifyVerityRoot(payload, opts.rootDigest!, { uncompressedSize: u, context });
  const verify = opts.verify ?? true;
  // With one data block the root is the digest of that block, so the image must be hashed anyway.
  const builder = verify || info.dataBlocks === 1 ? new VerityTreeBuilder({ blockSize: bs, uuid: info.uuid }) : undefined;

  const sidecarPath = outPath + VERITY_SIDECAR_SUFFIX;
  const tmpSuffix = `.tmp-${process.pid}-${Date.now().toString(36)}`;
  const tmpOut = outPath + tmpSuffix;
  const tmpSidecar = sidecarPath + tmpSuffix;
  try {
    const fh = await open(tmpOut, 'wx');
    try {
      let copied = 0;
      for await (const chunk of imageChunks(rawImagePath)) {
        builder?.update(chunk);
        await writeFully(fh, chunk);
        copied += chunk.length;
      }
      if (copied !== u) throw new VerityIntegrityError(`dm-verity${c}: raw image changed while copying (${copied} bytes read, ${u} expected)`, 'image-size');
      const pad = info.hashOffset - u;
      if (pad > 0) await writeFully(fh, Buffer.alloc(pad));
      await writeFully(fh, payload);
      await fh.datasync();
    } finally {
      await fh.close();
    }

    let root: Buffer;
    if (builder) {
      const built = builder.finish();
      if (verify) compareRecomputed(built, payload, info, annotated ?? built.rootHash, c);
      root = built.rootHash;
    } else {
      root = sha512(payload.subarray(bs, 2 * bs));
    }
    if (annotated && !annotated.equals(root)) {
      throw new VerityIntegrityError(`dm-verity${c}: root ${shortHex(root)} differs from root_digest ${shortHex(annotated)} (rule 21)`, 'root');
    }
    const rootHash = root.toString('hex');
    await writeFile(tmpSidecar, formatVeritySidecar({ rootHash, hashOffset: info.hashOffset }), { flag: 'wx' });
    await rename(tmpOut, outPath);
    await rename(tmpSidecar, sidecarPath);
    return { path: outPath, sidecarPath, rootHash, hashOffset: info.hashOffset, fileSize: info.hashOffset + payload.length, info };
  } catch (err) {
    await unlink(tmpOut).catch(() => undefined);
    await unlink(tmpSidecar).catch(() => undefined);
    throw err;
  }
}
