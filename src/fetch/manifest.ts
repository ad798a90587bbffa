// Manifest documents as stores see them: parsing bytes into an image manifest or an index (OCI or Docker
// schema 2), and walking from a tag's descriptor through nested indexes to one platform's manifest.
import type { Descriptor, ImageIndex, ImageManifest, Platform, ResolvedImage } from '../oci/types.js';
import { MEDIA_TYPE } from '../oci/types.js';
import { ManifestFormatError } from './errors.js';
import { selectManifest } from './platform.js';

/** Largest manifest or index accepted (the limit distribution registries apply to manifest PUTs). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Deepest chain of indexes followed before giving up (index → index → … → manifest). */
export const MAX_INDEX_DEPTH = 4;

const INDEX_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPE.ociIndex, MEDIA_TYPE.dockerManifestList]);
const MANIFEST_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPE.ociManifest, MEDIA_TYPE.dockerManifest]);

export function isIndexMediaType(mediaType: string): boolean {
  return INDEX_TYPES.has(mediaType);
}

export function isManifestMediaType(mediaType: string): boolean {
  return MANIFEST_TYPES.has(mediaType) || INDEX_TYPES.has(mediaType);
}

/** A media type from a Content-Type header, without parameters. */
export function bareMediaType(contentType: string | undefined): string | undefined {
  const bare = contentType?.split(';')[0]?.trim().toLowerCase();
  return bare ? bare : undefined;
}

export type ManifestDocument =
  | { kind: 'manifest'; mediaType: string; manifest: ImageManifest }
  | { kind: 'index'; mediaType: string; index: ImageIndex };

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isDescriptor(value: unknown): value is Descriptor {
  return isObject(value) && typeof value['mediaType'] === 'string' && typeof value['digest'] === 'string' && typeof value['size'] === 'number';
}

/**
 * Parses manifest bytes. The document's own mediaType wins, then `hint` (Content-Type or descriptor), then
 * its shape. Throws ManifestFormatError naming `where` for non-JSON, schema 1, or a shape that fits neither kind.
 */
export function parseManifestDocument(bytes: Buffer, hint: string | undefined, where: string): ManifestDocument {
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new ManifestFormatError(`${where}: manifest is not valid JSON`);
  }
  if (!isObject(json)) throw new ManifestFormatError(`${where}: manifest is not a JSON object`);
  if (json['schemaVersion'] === 1) throw new ManifestFormatError(`${where}: Docker schema 1 manifests are not supported`);
  if (json['schemaVersion'] !== 2) throw new ManifestFormatError(`${where}: unsupported manifest schemaVersion ${JSON.stringify(json['schemaVersion'])}`);
  const declared = typeof json['mediaType'] === 'string' ? json['mediaType'] : undefined;
  const usableHint = hint !== undefined && isManifestMediaType(hint) ? hint : undefined;
  const mediaType =
    declared ?? usableHint ?? (Array.isArray(json['manifests']) ? MEDIA_TYPE.ociIndex : isObject(json['config']) ? MEDIA_TYPE.ociManifest : undefined);
  if (mediaType !== undefined && isIndexMediaType(mediaType)) {
    if (!Array.isArray(json['manifests']) || !json['manifests'].every(isDescriptor)) throw new ManifestFormatError(`${where}: index has no valid "manifests" list`);
    return { kind: 'index', mediaType, index: json as unknown as ImageIndex };
  }
  if (mediaType !== undefined && MANIFEST_TYPES.has(mediaType)) {
    if (!isDescriptor(json['config']) || !Array.isArray(json['layers']) || !json['layers'].every(isDescriptor)) {
      throw new ManifestFormatError(`${where}: image manifest lacks a valid config or layers`);
    }
    return { kind: 'manifest', mediaType, manifest: json as unknown as ImageManifest };
  }
  throw new ManifestFormatError(`${where}: unsupported manifest media type ${JSON.stringify(mediaType ?? 'unknown')}`);
}

/** Loads a manifest or index named by a descriptor, with its bytes already verified against the digest. */
export type ManifestLoader = (desc: Descriptor) => Promise<Buffer>;

/**
 * From a tag's manifest (bytes already verified against `descriptor`), follows indexes by platform down to
 * an image manifest, loading each child through `load`.
 */
export async function resolveThroughIndexes(
  descriptor: Descriptor,
  bytes: Buffer,
  platform: Platform,
  load: ManifestLoader,
  where: string,
): Promise<ResolvedImage> {
  let current = descriptor;
  let currentBytes = bytes;
  let parent: ResolvedImage['index'];
  for (let depth = 0; depth <= MAX_INDEX_DEPTH; depth++) {
    const doc = parseManifestDocument(currentBytes, current.mediaType, `${where} ${current.digest}`);
    if (doc.kind === 'manifest') {
      const resolvedDescriptor: Descriptor = { mediaType: doc.mediaType, digest: current.digest, size: currentBytes.length };
      if (current.platform) resolvedDescriptor.platform = current.platform;
      if (current.annotations) resolvedDescriptor.annotations = current.annotations;
      const result: ResolvedImage = { descriptor: resolvedDescriptor, manifest: doc.manifest, manifestBytes: currentBytes };
      if (parent) result.index = parent;
      return result;
    }
    const indexDescriptor: Descriptor = { ...current, mediaType: doc.mediaType, size: currentBytes.length };
    parent = { descriptor: indexDescriptor, index: doc.index };
    const child = selectManifest(doc.index.manifests, platform, `${where} index ${current.digest}`);
    currentBytes = await load(child);
    current = child;
  }
  throw new ManifestFormatError(`${where}: more than ${MAX_INDEX_DEPTH} nested indexes`);
}
