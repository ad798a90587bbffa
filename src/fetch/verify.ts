// Content checks shared by the registry and layout stores: descriptor sanity, whole-content digest and
// size verification (in memory and as a stream that fails instead of ending), and range bounds.
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import type { Descriptor } from '../oci/types.js';
import { DigestFormatError, parseDigest, type ParsedDigest } from '../util/digest.js';
import { ContentVerificationError } from './errors.js';

/** Checks a descriptor's digest syntax and size (a non-negative safe integer); returns the parsed digest. */
export function checkDescriptor(desc: Descriptor): ParsedDigest {
  let parsed: ParsedDigest;
  try {
    parsed = parseDigest(desc.digest);
  } catch (err) {
    if (err instanceof DigestFormatError) throw new TypeError(`descriptor has an ${err.message}`);
    throw err;
  }
  if (!Number.isSafeInteger(desc.size) || desc.size < 0) {
    throw new TypeError(`descriptor ${desc.digest} has an invalid size ${String(desc.size)}`);
  }
  return parsed;
}

export function newHash(digest: string): Hash {
  return createHash(parseDigest(digest).algorithm);
}

/** The digest of `data` with the same algorithm as `like` ("sha256:…" → sha256). */
export function digestLike(like: string, data: Uint8Array): string {
  const { algorithm } = parseDigest(like);
  return `${algorithm}:${createHash(algorithm).update(data).digest('hex')}`;
}

/** Throws ContentVerificationError unless `data` has exactly the descriptor's size and digest. */
export function verifyContent(desc: Descriptor, data: Uint8Array, where: string): void {
  if (data.length !== desc.size) {
    throw new ContentVerificationError(`${where}: ${desc.digest} has ${data.length} bytes, descriptor says ${desc.size}`, desc.digest, 'size');
  }
  const actual = digestLike(desc.digest, data);
  if (actual !== desc.digest) {
    throw new ContentVerificationError(`${where}: content hashes to ${actual}, want ${desc.digest}`, desc.digest, 'digest');
  }
}

/** Checks 0 <= start <= end <= desc.size with integer bounds. */
export function checkRange(desc: Descriptor, start: number, end: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start || end > desc.size) {
    throw new RangeError(`range [${start}, ${end}) is outside blob ${desc.digest} of ${desc.size} bytes`);
  }
}

/**
 * Pass-through stream that hashes and counts what flows through it. It errors as soon as more bytes than
 * the descriptor's size arrive, and at the end when the size or digest differs, so a consumer never sees a
 * clean end of wrong content.
 */
export class VerifyingStream extends Transform {
  private readonly hash: Hash;
  private received = 0;

  constructor(
    private readonly desc: Descriptor,
    private readonly where: string,
  ) {
    super();
    this.hash = newHash(desc.digest);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.received += chunk.length;
    if (this.received > this.desc.size) {
      callback(
        new ContentVerificationError(`${this.where}: ${this.desc.digest} is longer than its ${this.desc.size} bytes`, this.desc.digest, 'size'),
      );
      return;
    }
    this.hash.update(chunk);
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    if (this.received !== this.desc.size) {
      callback(
        new ContentVerificationError(`${this.where}: ${this.desc.digest} ended after ${this.received} of ${this.desc.size} bytes`, this.desc.digest, 'size'),
      );
      return;
    }
    const actual = `${parseDigest(this.desc.digest).algorithm}:${this.hash.digest('hex')}`;
    if (actual !== this.desc.digest) {
      callback(new ContentVerificationError(`${this.where}: content hashes to ${actual}, want ${this.desc.digest}`, this.desc.digest, 'digest'));
      return;
    }
    callback();
  }
}
