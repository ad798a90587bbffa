// Errors of the chunk caches (src/cache): every one names the layer, chunk index and/or path it is about.

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
