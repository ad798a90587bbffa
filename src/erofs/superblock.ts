// The EROFS superblock (128 bytes at image offset 1024): magic, block size, root inode, metadata and shared
// xattr areas, feature bits; the checksum (crc32c of the superblock's block from offset 1024, checksum field
// zeroed) is checked when the SB_CHKSUM compat feature says it is present. Unknown incompatible features make
// the image unsupported, as they would for the kernel.
import { crc32cRaw } from './crc32c.js';
import { ErofsFormatError, ErofsUnsupportedError } from './errors.js';

export const EROFS_SUPER_OFFSET = 1024;
export const EROFS_SUPER_MAGIC = 0xe0f5e1e2;
export const EROFS_SUPERBLOCK_SIZE = 128;

export const FEATURE_COMPAT_SB_CHKSUM = 0x1;
export const FEATURE_COMPAT_MTIME = 0x2;

export const FEATURE_INCOMPAT_ZERO_PADDING = 0x1;
export const FEATURE_INCOMPAT_COMPR_CFGS = 0x2;
export const FEATURE_INCOMPAT_BIG_PCLUSTER = 0x2;
export const FEATURE_INCOMPAT_CHUNKED_FILE = 0x4;
export const FEATURE_INCOMPAT_DEVICE_TABLE = 0x8;
export const FEATURE_INCOMPAT_ZTAILPACKING = 0x10;
/** Incompatible features this reader implements (fragments, dedupe and xattr prefixes are not). */
export const SUPPORTED_INCOMPAT =
  FEATURE_INCOMPAT_ZERO_PADDING | FEATURE_INCOMPAT_COMPR_CFGS | FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE | FEATURE_INCOMPAT_ZTAILPACKING;

/** Block sizes the reader accepts: 512 B to 64 KiB (mkfs.erofs 1.5 always writes 4 KiB). */
export const MIN_BLOCK_SIZE_BITS = 9;
export const MAX_BLOCK_SIZE_BITS = 16;

export interface Superblock {
  checksum: number;
  /** Whether a checksum was present and verified. */
  checksumVerified: boolean;
  featureCompat: number;
  featureIncompat: number;
  blockSizeBits: number;
  blockSize: number;
  /** 16-byte slots of superblock extension. */
  extSlots: number;
  rootNid: number;
  inodeCount: number;
  /** Seconds; the mtime of every compact inode. */
  buildTime: number;
  buildTimeNsec: number;
  blocks: number;
  metaBlkAddr: number;
  xattrBlkAddr: number;
  uuid: string;
  volumeName: string;
  /** Bitmap of compression algorithms (with COMPR_CFGS) or the LZ4 max distance (without). */
  availableComprAlgs: number;
  extraDevices: number;
}

function uuidString(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Reads a little-endian u64 as a Number; throws when it is not a safe integer. */
export function readU64(buf: Buffer, at: number, structure: 'superblock' | 'inode', offset: number, what: string): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ErofsFormatError(structure, offset, `${what} ${v} is absurdly large`);
  return Number(v);
}

/**
 * Parses the superblock from `block`, the image bytes starting at offset 0 (at least 1024 + 128 bytes; a whole
 * first block when the checksum is to be verified).
 */
export function parseSuperblock(block: Buffer): Superblock {
  const at = EROFS_SUPER_OFFSET;
  if (block.length < at + EROFS_SUPERBLOCK_SIZE) {
    throw new ErofsFormatError('superblock', at, `image too small (${block.length} bytes) to hold a superblock`);
  }
  const sb = block.subarray(at, at + EROFS_SUPERBLOCK_SIZE);
  const magic = sb.readUInt32LE(0);
  if (magic !== EROFS_SUPER_MAGIC) {
    throw new ErofsFormatError('superblock', at, `bad magic 0x${magic.toString(16).padStart(8, '0')} (want 0x${EROFS_SUPER_MAGIC.toString(16)})`);
  }
  const blockSizeBits = sb.readUInt8(12);
  if (blockSizeBits < MIN_BLOCK_SIZE_BITS || blockSizeBits > MAX_BLOCK_SIZE_BITS) {
    throw new ErofsFormatError('superblock', at + 12, `block size bits ${blockSizeBits} outside ${MIN_BLOCK_SIZE_BITS}..${MAX_BLOCK_SIZE_BITS}`);
  }
  const blockSize = 2 ** blockSizeBits;
  if (blockSize < EROFS_SUPER_OFFSET + EROFS_SUPERBLOCK_SIZE) {
    throw new ErofsFormatError('superblock', at + 12, `block size ${blockSize} cannot hold the superblock at offset ${EROFS_SUPER_OFFSET}`);
  }
  const featureCompat = sb.readUInt32LE(8);
  const checksum = sb.readUInt32LE(4);
  let checksumVerified = false;
  if (featureCompat & FEATURE_COMPAT_SB_CHKSUM) {
    if (block.length < blockSize) {
      throw new ErofsFormatError('superblock', at, `image too small (${block.length} bytes) for its first ${blockSize}-byte block`);
    }
    const copy = Buffer.from(block.subarray(at, blockSize));
    copy.writeUInt32LE(0, 4);
    const actual = crc32cRaw(0xffffffff, copy);
    if (actual !== checksum) {
      throw new ErofsFormatError('superblock', at + 4, `checksum 0x${checksum.toString(16)} does not match the computed crc32c 0x${actual.toString(16)}`);
    }
    checksumVerified = true;
  }
  const featureIncompat = sb.readUInt32LE(80);
  const unknown = featureIncompat & ~SUPPORTED_INCOMPAT;
  if (unknown !== 0) {
    throw new ErofsUnsupportedError(`incompat 0x${unknown.toString(16)}`, at + 80, `the image needs incompatible features 0x${unknown.toString(16)} this reader does not implement`);
  }
  const extraDevices = featureIncompat & FEATURE_INCOMPAT_DEVICE_TABLE ? sb.readUInt16LE(86) : 0;
  const volume = sb.subarray(64, 80);
  const nul = volume.indexOf(0);
  return {
    checksum,
    checksumVerified,
    featureCompat,
    featureIncompat,
    blockSizeBits,
    blockSize,
    extSlots: sb.readUInt8(13),
    rootNid: sb.readUInt16LE(14),
    inodeCount: readU64(sb, 16, 'superblock', at + 16, 'inode count'),
    buildTime: readU64(sb, 24, 'superblock', at + 24, 'build time'),
    buildTimeNsec: sb.readUInt32LE(32),
    blocks: sb.readUInt32LE(36),
    metaBlkAddr: sb.readUInt32LE(40),
    xattrBlkAddr: sb.readUInt32LE(44),
    uuid: uuidString(sb.subarray(48, 64)),
    volumeName: (nul < 0 ? volume : volume.subarray(0, nul)).toString('latin1'),
    availableComprAlgs: sb.readUInt16LE(84),
    extraDevices,
  };
}
