// Layer descriptor side of the seekable EROFS format (spec §8): the media type, the four annotation keys,
// the reader's strict parsing of them (spec §10 rules 1–3, 12, 19) and the writer's canonical formatting.
import type { Descriptor } from '../oci/types.js';
import { MEDIA_TYPE } from '../oci/types.js';
import { SeekableFormatError } from './errors.js';

/** Spec §8.1: compared as the full string, so `…+zstd+encrypted` or the raw `…layer.v1` do not match. */
export const SEEKABLE_EROFS_MEDIA_TYPE = MEDIA_TYPE.erofsZstd;

/** Spec §8.2 annotation keys. */
export const ANNOTATION_CHUNK_TABLE_OFFSET = 'dev.containerd.erofs.zstd.chunk_table_offset';
export const ANNOTATION_CHUNK_DIGEST = 'dev.containerd.erofs.zstd.chunk_digest';
export const ANNOTATION_DMVERITY_OFFSET = 'dev.containerd.erofs.dmverity.offset';
export const ANNOTATION_DMVERITY_ROOT_DIGEST = 'dev.containerd.erofs.dmverity.root_digest';

/** All keys this format owns; a writer replaces every one of them on a re-encoded layer. */
export const SEEKABLE_ANNOTATION_KEYS: readonly string[] = [
  ANNOTATION_CHUNK_TABLE_OFFSET,
  ANNOTATION_CHUNK_DIGEST,
  ANNOTATION_DMVERITY_OFFSET,
  ANNOTATION_DMVERITY_ROOT_DIGEST,
];

/** Largest offset the annotation syntax allows (spec §8.2, rule 1). */
export const MAX_ANNOTATION_OFFSET = (1n << 63n) - 1n;
/** Largest value handled exactly with Numbers (rule 12). */
export const MAX_EXACT_NUMBER = BigInt(Number.MAX_SAFE_INTEGER);

/** Canonical decimal: no sign, no leading zeros (spec §8.2, strict form `0|[1-9][0-9]*`). */
const CANONICAL_DECIMAL = /^(0|[1-9][0-9]*)$/;
/** `sha512:` followed by exactly 128 lowercase hex digits. */
const SHA512_DIGEST = /^sha512:[0-9a-f]{128}$/;
/** Longest quoted annotation value in an error message. */
const MAX_QUOTED = 80;

function quote(value: string): string {
  return JSON.stringify(value.length > MAX_QUOTED ? `${value.slice(0, MAX_QUOTED)}…` : value);
}

/** True only for exactly `application/vnd.erofs.layer.v1+zstd`. */
export function isSeekableErofsMediaType(mediaType: string): boolean {
  return mediaType === SEEKABLE_EROFS_MEDIA_TYPE;
}

/** What a descriptor says about random access to its blob. */
export interface SeekableLayout {
  kind: 'seekable';
  /** Blob size `B` (the descriptor's size). */
  blobSize: number;
  /** `T`: blob offset of the chunk table skippable frame. */
  chunkTableOffset: number;
  /** `sha512:<hex>` of the chunk table payload. */
  chunkDigest: string;
  /** Present when the layer carries a dm-verity frame. */
  verity?: { offset: number; rootDigest: string };
}

/** The layer is this media type but has no per-chunk anchor: decode it whole (spec §8.4, rule 19). */
export interface SequentialVerdict {
  kind: 'sequential';
  reason: string;
}

/** The descriptor is not `application/vnd.erofs.layer.v1+zstd` at all; neither path of this module applies. */
export interface UnsupportedVerdict {
  kind: 'unsupported';
  reason: string;
}

export type SeekableVerdict = SeekableLayout | SequentialVerdict | UnsupportedVerdict;

/**
 * Parses an offset annotation strictly: canonical decimal (rule 1), at most 2^63−1 (rule 1), and at most
 * 2^53−1 so that it is exact as a Number (rule 12).
 */
export function parseOffsetAnnotation(key: string, value: unknown): number {
  if (typeof value !== 'string' || !CANONICAL_DECIMAL.test(value)) {
    throw new SeekableFormatError(1, `${key} ${quote(String(value))} is not a canonical decimal string (0|[1-9][0-9]*)`);
  }
  const big = BigInt(value);
  if (big > MAX_ANNOTATION_OFFSET) {
    throw new SeekableFormatError(1, `${key} ${value} exceeds 2^63-1`);
  }
  if (big > MAX_EXACT_NUMBER) {
    throw new SeekableFormatError(12, `${key} ${value} exceeds 2^53-1, beyond what this reader handles exactly`);
  }
  return Number(big);
}

function checkBlobSize(desc: Descriptor): number {
  const size: unknown = desc.size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new SeekableFormatError(12, `descriptor size ${String(size)} is not an integer in [0, 2^53-1]`);
  }
  return size;
}

/**
 * Reads the seekable annotations of a layer descriptor (spec §8.2–§8.4).
 *
 * - Not the exact media type: `{ kind: 'unsupported' }`.
 * - No `chunk_table_offset`, or no `chunk_digest`: `{ kind: 'sequential' }` (rule 19; the sequential path uses
 *   none of the annotations, so the others are not examined then).
 * - Otherwise every present annotation must be well formed (rules 1–3, 12), else SeekableFormatError.
 */
export function parseSeekableAnnotations(desc: Descriptor): SeekableVerdict {
  if (!isSeekableErofsMediaType(desc.mediaType)) {
    return { kind: 'unsupported', reason: `media type ${quote(String(desc.mediaType))} is not ${SEEKABLE_EROFS_MEDIA_TYPE}` };
  }
  const ann: object = desc.annotations ?? {};
  const get = (key: string): unknown => (Object.hasOwn(ann, key) ? (ann as Record<string, unknown>)[key] : undefined);
  const tableOffset = get(ANNOTATION_CHUNK_TABLE_OFFSET);
  const chunkDigest = get(ANNOTATION_CHUNK_DIGEST);
  if (tableOffset === undefined) {
    return { kind: 'sequential', reason: `no ${ANNOTATION_CHUNK_TABLE_OFFSET} annotation (plain zstd stream)` };
  }
  if (chunkDigest === undefined) {
    return { kind: 'sequential', reason: `no ${ANNOTATION_CHUNK_DIGEST} annotation: chunks cannot be verified` };
  }
  const T = parseOffsetAnnotation(ANNOTATION_CHUNK_TABLE_OFFSET, tableOffset);
  if (typeof chunkDigest !== 'string' || !SHA512_DIGEST.test(chunkDigest)) {
    throw new SeekableFormatError(2, `${ANNOTATION_CHUNK_DIGEST} ${quote(String(chunkDigest))} is not sha512: + 128 lowercase hex`);
  }
  const blobSize = checkBlobSize(desc);
  const layout: SeekableLayout = { kind: 'seekable', blobSize, chunkTableOffset: T, chunkDigest };

  const verityOffset = get(ANNOTATION_DMVERITY_OFFSET);
  const rootDigest = get(ANNOTATION_DMVERITY_ROOT_DIGEST);
  if (verityOffset === undefined) {
    if (rootDigest !== undefined) {
      throw new SeekableFormatError(3, `${ANNOTATION_DMVERITY_ROOT_DIGEST} present without ${ANNOTATION_DMVERITY_OFFSET}`);
    }
    return layout;
  }
  const V = parseOffsetAnnotation(ANNOTATION_DMVERITY_OFFSET, verityOffset);
  if (rootDigest === undefined || rootDigest === '') {
    throw new SeekableFormatError(3, `${ANNOTATION_DMVERITY_OFFSET} present but ${ANNOTATION_DMVERITY_ROOT_DIGEST} is missing or empty`);
  }
  if (typeof rootDigest !== 'string' || !SHA512_DIGEST.test(rootDigest)) {
    throw new SeekableFormatError(3, `${ANNOTATION_DMVERITY_ROOT_DIGEST} ${quote(String(rootDigest))} is not sha512: + 128 lowercase hex`);
  }
  if (V <= T) {
    throw new SeekableFormatError(12, `${ANNOTATION_DMVERITY_OFFSET} ${V} is not after the chunk table at ${T}`);
  }
  layout.verity = { offset: V, rootDigest };
  return layout;
}

/** Values a writer puts into the §8.2 annotations. */
export interface SeekableAnnotationValues {
  chunkTableOffset: number;
  chunkDigest: string;
  verity?: { offset: number; rootDigest: string };
}

function formatOffset(name: string, value: number): string {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${name} ${value} is not an integer in [0, 2^53-1]`);
  }
  return String(value);
}

/**
 * The §8.2 annotations for a written blob, keys in lexicographic order, offsets in canonical decimal and
 * digests in lowercase hex. Throws RangeError/TypeError for values a reader would reject.
 */
export function formatSeekableAnnotations(values: SeekableAnnotationValues): Record<string, string> {
  if (!SHA512_DIGEST.test(values.chunkDigest)) {
    throw new TypeError(`chunk digest ${quote(values.chunkDigest)} is not sha512: + 128 lowercase hex`);
  }
  const out: Record<string, string> = {
    [ANNOTATION_CHUNK_DIGEST]: values.chunkDigest,
    [ANNOTATION_CHUNK_TABLE_OFFSET]: formatOffset('chunk table offset', values.chunkTableOffset),
  };
  if (values.verity) {
    if (!SHA512_DIGEST.test(values.verity.rootDigest)) {
      throw new TypeError(`dm-verity root digest ${quote(values.verity.rootDigest)} is not sha512: + 128 lowercase hex`);
    }
    if (values.verity.offset <= values.chunkTableOffset) {
      throw new RangeError(`dm-verity offset ${values.verity.offset} is not after the chunk table at ${values.chunkTableOffset}`);
    }
    out[ANNOTATION_DMVERITY_OFFSET] = formatOffset('dm-verity offset', values.verity.offset);
    out[ANNOTATION_DMVERITY_ROOT_DIGEST] = values.verity.rootDigest;
  }
  return sortKeys(out);
}

/** A copy of `record` with its keys in lexicographic (code unit) order. */
export function sortKeys(record: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of Object.keys(record).sort()) out[key] = record[key]!;
  return out;
}

/**
 * The writer's layer descriptor (spec §11): the seekable media type, the blob's digest and size, and the
 * original descriptor's other annotations with every key of this format replaced by `annotations`.
 */
export function buildSeekableDescriptor(
  blob: { blobDigest: string; blobSize: number; annotations: Record<string, string> },
  original?: Descriptor,
): Descriptor {
  const merged: Record<string, string> = {};
  for (const [key, value] of Object.entries(original?.annotations ?? {})) {
    if (!SEEKABLE_ANNOTATION_KEYS.includes(key)) merged[key] = value;
  }
  Object.assign(merged, blob.annotations);
  return {
    mediaType: SEEKABLE_EROFS_MEDIA_TYPE,
    digest: blob.blobDigest,
    size: blob.blobSize,
    annotations: sortKeys(merged),
  };
}
