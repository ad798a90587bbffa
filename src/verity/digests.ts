// Integrity checks of the seekable EROFS trust chain (spec §7): the chunk table payload against the
// manifest's chunk_digest annotation, and each compressed frame against its chunk-table SHA-512.
import { createHash, timingSafeEqual } from 'node:crypto';

export const SHA512_LENGTH = 64;

/** A frame or chunk table whose bytes do not hash to the value the manifest vouches for. */
export class IntegrityError extends Error {
  override name = 'IntegrityError';
  constructor(
    message: string,
    /** What failed: the chunk table, or a data frame. */
    readonly subject: 'chunk-table' | 'frame',
    readonly chunkIndex?: number,
  ) {
    super(message);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Checks SHA-512 of a compressed frame (all of blob[Start_i, End_i)) against its chunk-table entry.
 * Must be called before the frame is decoded; throws IntegrityError naming the chunk on mismatch.
 */
export function verifyFrameDigest(frame: Uint8Array, expected: Uint8Array, chunkIndex: number, context = ''): void {
  if (expected.length !== SHA512_LENGTH) {
    throw new IntegrityError(`chunk ${chunkIndex}${context}: checksum length ${expected.length}, want ${SHA512_LENGTH}`, 'frame', chunkIndex);
  }
  const actual = createHash('sha512').update(frame).digest();
  if (!sameBytes(actual, expected)) {
    throw new IntegrityError(
      `chunk ${chunkIndex}${context}: frame SHA-512 mismatch (got ${actual.toString('hex').slice(0, 16)}…, want ${Buffer.from(expected).toString('hex').slice(0, 16)}…)`,
      'frame',
      chunkIndex,
    );
  }
}

/**
 * Checks SHA-512 over exactly the chunk table payload (not its 8-byte skippable header) against the
 * `dev.containerd.erofs.zstd.chunk_digest` annotation ("sha512:" + 128 lowercase hex, already validated).
 */
export function verifyChunkTableDigest(payload: Uint8Array, chunkDigest: string, context = ''): void {
  const actual = `sha512:${createHash('sha512').update(payload).digest('hex')}`;
  if (actual !== chunkDigest) {
    throw new IntegrityError(
      `chunk table${context}: SHA-512 ${actual.slice(0, 23)}… does not match chunk_digest annotation ${chunkDigest.slice(0, 23)}…`,
      'chunk-table',
    );
  }
}
