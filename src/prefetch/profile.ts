// Prefetch profiles: the chunks a workload read, in the order it first read them, so that a later mount can
// fetch them ahead of the workload. A profile is a small JSON document (format in docs/prefetch.md):
//
//   { "mediaType": PROFILE_MEDIA_TYPE, "version": 1, "image": "sha256:<manifest>",
//     "layers": ["sha256:<layer 0 blob>", ...], "chunks": [[layerIndex, chunkIndex], ...],
//     "ranges": [[layerIndex, offset, length], ...] }
//
// `chunks` is one global first-access order across layers. `ranges` (optional) is the same order at block
// granularity: the raw-image byte ranges the kernel read, which `profile paths` maps back to files so that
// `convert --hot-paths` can lay them out together. Parsing is strict and bounded: a profile comes from
// a registry or a file and is never trusted to be sane.
import { parseDigest } from '../util/digest.js';

export const PROFILE_MEDIA_TYPE = 'application/vnd.erofs-lazy.prefetch-profile.v1+json';
export const PROFILE_VERSION = 1;
/** Largest profile accepted (bytes of JSON). */
export const MAX_PROFILE_BYTES = 16 * 1024 * 1024;
/** Most chunk entries accepted in one profile. */
export const MAX_PROFILE_CHUNKS = 1_000_000;
/** Most range entries accepted in one profile. */
export const MAX_PROFILE_RANGES = 1_000_000;

export class ProfileFormatError extends Error {
  override name = 'ProfileFormatError';
}

export interface PrefetchProfile {
  /** Digest of the image manifest the profile was recorded on (informational: layers are matched by digest). */
  image: string;
  /** Layer blob digests, in manifest order. */
  layers: string[];
  /** [layer index into `layers`, chunk index], in first-access order. */
  chunks: Array<[number, number]>;
  /** [layer index, raw-image offset, length], in first-access order; empty when not recorded. */
  ranges: Array<[number, number, number]>;
}

/** Serializes a profile (stable key order, one line). */
export function serializeProfile(profile: PrefetchProfile): Buffer {
  return Buffer.from(
    JSON.stringify({
      mediaType: PROFILE_MEDIA_TYPE,
      version: PROFILE_VERSION,
      image: profile.image,
      layers: profile.layers,
      chunks: profile.chunks,
      ...(profile.ranges.length > 0 ? { ranges: profile.ranges } : {}),
    }),
  );
}

function fail(where: string, what: string): never {
  throw new ProfileFormatError(`${where}: ${what}`);
}

/** Parses and checks a profile; `where` names its origin in errors (a file, or a registry artifact). */
export function parseProfile(bytes: Buffer, where: string): PrefetchProfile {
  if (bytes.length > MAX_PROFILE_BYTES) fail(where, `profile of ${bytes.length} bytes exceeds ${MAX_PROFILE_BYTES}`);
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    fail(where, `not JSON (${(err as Error).message})`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) fail(where, 'not a JSON object');
  const record = doc as Record<string, unknown>;
  if (record.mediaType !== PROFILE_MEDIA_TYPE) fail(where, `mediaType ${JSON.stringify(record.mediaType)}, want ${PROFILE_MEDIA_TYPE}`);
  if (record.version !== PROFILE_VERSION) fail(where, `version ${JSON.stringify(record.version)} is not supported (want ${PROFILE_VERSION})`);
  const digestOk = (value: unknown): value is string => {
    if (typeof value !== 'string') return false;
    try {
      parseDigest(value);
      return true;
    } catch {
      return false;
    }
  };
  if (!digestOk(record.image)) fail(where, 'image is not a digest');
  if (!Array.isArray(record.layers) || !record.layers.every(digestOk)) fail(where, 'layers is not a list of digests');
  const layers = record.layers as string[];
  if (!Array.isArray(record.chunks)) fail(where, 'chunks is not a list');
  if (record.chunks.length > MAX_PROFILE_CHUNKS) fail(where, `${record.chunks.length} chunks exceed ${MAX_PROFILE_CHUNKS}`);
  const chunks: Array<[number, number]> = [];
  for (const [k, entry] of (record.chunks as unknown[]).entries()) {
    if (!Array.isArray(entry) || entry.length !== 2 || !entry.every((n) => Number.isSafeInteger(n) && (n as number) >= 0)) {
      fail(where, `chunks[${k}] is not a [layer, chunk] pair of non-negative integers`);
    }
    const [layer, chunk] = entry as [number, number];
    if (layer >= layers.length) fail(where, `chunks[${k}] names layer ${layer} of ${layers.length}`);
    chunks.push([layer, chunk]);
  }
  const ranges: Array<[number, number, number]> = [];
  if (record.ranges !== undefined) {
    if (!Array.isArray(record.ranges)) fail(where, 'ranges is not a list');
    if (record.ranges.length > MAX_PROFILE_RANGES) fail(where, `${record.ranges.length} ranges exceed ${MAX_PROFILE_RANGES}`);
    for (const [k, entry] of (record.ranges as unknown[]).entries()) {
      if (!Array.isArray(entry) || entry.length !== 3 || !entry.every((n) => Number.isSafeInteger(n) && (n as number) >= 0) || entry[2] === 0) {
        fail(where, `ranges[${k}] is not a [layer, offset, length] triple of non-negative integers with length > 0`);
      }
      const [layer, offset, length] = entry as [number, number, number];
      if (layer >= layers.length) fail(where, `ranges[${k}] names layer ${layer} of ${layers.length}`);
      ranges.push([layer, offset, length]);
    }
  }
  return { image: record.image, layers, chunks, ranges };
}

/** The chunk order of one layer (by blob digest) in a profile; empty when the profile does not know it. */
export function chunksOfLayer(profile: PrefetchProfile, layerDigest: string): number[] {
  const indices = new Set<number>();
  profile.layers.forEach((digest, i) => {
    if (digest === layerDigest) indices.add(i);
  });
  const seen = new Set<number>();
  const out: number[] = [];
  for (const [layer, chunk] of profile.chunks) {
    if (!indices.has(layer) || seen.has(chunk)) continue;
    seen.add(chunk);
    out.push(chunk);
  }
  return out;
}

/** A layer whose first-access order can be read (LazyLayer.accessOrder). */
export interface RecordedLayer {
  layerDigest: string;
  /** Chunk indices with the time (ms since any fixed origin) of their first access. */
  accessLog(): ReadonlyArray<readonly [chunk: number, at: number]>;
  /** Raw-image ranges with the time of their first access (same clock as accessLog), if recorded. */
  rangeLog?(): ReadonlyArray<readonly [offset: number, length: number, at: number]>;
}

/** Merges the layers' access logs into one profile, in global first-access order. */
export function profileFromLayers(image: string, layers: readonly RecordedLayer[]): PrefetchProfile {
  const entries: Array<{ layer: number; chunk: number; at: number; seq: number }> = [];
  let seq = 0;
  layers.forEach((layer, i) => {
    for (const [chunk, at] of layer.accessLog()) entries.push({ layer: i, chunk, at, seq: seq++ });
  });
  entries.sort((a, b) => a.at - b.at || a.seq - b.seq);
  const rangeEntries: Array<{ layer: number; offset: number; length: number; at: number; seq: number }> = [];
  layers.forEach((layer, i) => {
    for (const [offset, length, at] of layer.rangeLog?.() ?? []) rangeEntries.push({ layer: i, offset, length, at, seq: seq++ });
  });
  rangeEntries.sort((a, b) => a.at - b.at || a.seq - b.seq);
  return {
    image,
    layers: layers.map((l) => l.layerDigest),
    chunks: entries.map((e) => [e.layer, e.chunk]),
    ranges: rangeEntries.slice(0, MAX_PROFILE_RANGES).map((e) => [e.layer, e.offset, e.length]),
  };
}
