// Errors of the chunk caches (src/cache): every one names the layer, chunk index and/or path it is about;
// and the errno helpers both cache tiers share (a plain miss is not an error).
import type { Stats } from 'node:fs';
import { lstat, unlink } from 'node:fs/promises';

export interface CacheErrorContext {
  layerDigest?: string;
  index?: number;
  path?: string;
  cause?: unknown;
}

/** A cache operation failed (bad key, I/O error other than a plain miss). Misses are never errors. */
export class CacheError extends Error {
  override name = 'CacheError';
  readonly layerDigest?: string;
  readonly index?: number;
  readonly path?: string;

  constructor(message: string, context: CacheErrorContext = {}) {
    const where = [
      context.layerDigest !== undefined ? `layer ${context.layerDigest}` : undefined,
      context.index !== undefined ? `chunk ${context.index}` : undefined,
      context.path !== undefined ? `path ${context.path}` : undefined,
    ].filter((s) => s !== undefined);
    const causeText = context.cause instanceof Error ? `: ${context.cause.message}` : '';
    super(`${message}${where.length > 0 ? ` (${where.join(', ')})` : ''}${causeText}`, { cause: context.cause });
    this.layerDigest = context.layerDigest;
    this.index = context.index;
    this.path = context.path;
  }
}

/** The errno code of a node fs error, if it is one. */
export function errnoCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = (err as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

/** The path (or a directory on it) does not exist. */
export function isMissing(err: unknown): boolean {
  const code = errnoCode(err);
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** Unlinks `path` only if it is still the file described by `st` (not a newer file renamed over it). */
export async function unlinkIfSame(path: string, st: Stats): Promise<void> {
  try {
    const now = await lstat(path);
    if (now.ino === st.ino && now.dev === st.dev) await unlink(path);
  } catch (err) {
    if (!isMissing(err)) throw err;
  }
}
