// Digest strings ("algorithm:hex") and the hashes behind them.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';

const DIGEST_PATTERN = /^(sha256|sha512):([0-9a-f]+)$/;
const HEX_LENGTH: Record<string, number> = { sha256: 64, sha512: 128 };

export class DigestFormatError extends Error {
  override name = 'DigestFormatError';
}

export interface ParsedDigest {
  algorithm: 'sha256' | 'sha512';
  hex: string;
}

/** Parses "sha256:<64 hex>" or "sha512:<128 hex>" (lowercase only); throws DigestFormatError otherwise. */
export function parseDigest(digest: string): ParsedDigest {
  const m = DIGEST_PATTERN.exec(digest);
  if (!m || m[2]!.length !== HEX_LENGTH[m[1]!]) {
    throw new DigestFormatError(`invalid digest ${JSON.stringify(digest.slice(0, 140))}`);
  }
  return { algorithm: m[1] as ParsedDigest['algorithm'], hex: m[2]! };
}

export function sha256Digest(data: Uint8Array): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function sha512Digest(data: Uint8Array): string {
  return `sha512:${createHash('sha512').update(data).digest('hex')}`;
}

/** "sha256:<hex>" of a file's content, streamed. */
export async function sha256FileDigest(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}
