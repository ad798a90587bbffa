// Layer decompression: turns an OCI/Docker layer blob stream into the plain tar byte stream inside it.
// The media type says what to expect (tar, tar+gzip, tar+zstd); the first bytes are sniffed as well, so a
// mislabelled layer (gzip content under a "tar" type, or the reverse) still opens. Unknown media types
// are rejected before any byte is read.
import { Readable, pipeline } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { DecompressStream } from 'zstd-napi';
import { MEDIA_TYPE } from '../oci/types.js';

export type LayerCompression = 'none' | 'gzip' | 'zstd';

/** gzip member magic (RFC 1952). */
export const GZIP_MAGIC: Buffer = Buffer.from([0x1f, 0x8b]);
/** zstd frame magic 0xFD2FB528, little-endian on the wire. */
export const ZSTD_MAGIC: Buffer = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
/** zstd skippable frames (magic 0x184D2A50..0x184D2A5F, little-endian) may open a zstd stream too. */
const ZSTD_SKIPPABLE_MAGIC_HIGH: Buffer = Buffer.from([0x2a, 0x4d, 0x18]);
const ZSTD_SKIPPABLE_LOW_NIBBLE_BASE = 0x50;
/** Bytes needed to recognise every magic above. */
export const SNIFF_LENGTH = 4;
/**
 * Largest zstd window (log2) accepted by default: zstd's own default decoder limit (128 MiB). Layers
 * compressed with `zstd --long=31` need a larger value, given through `zstdWindowLogMax`.
 */
export const DEFAULT_ZSTD_WINDOW_LOG_MAX = 27;

/** Layer media types that hold a tar stream, with the compression each declares. */
export const LAYER_TAR_MEDIA_TYPES: ReadonlyMap<string, LayerCompression> = new Map<string, LayerCompression>([
  [MEDIA_TYPE.ociLayerTar, 'none'],
  [MEDIA_TYPE.ociLayerTarGzip, 'gzip'],
  [MEDIA_TYPE.ociLayerTarZstd, 'zstd'],
  [MEDIA_TYPE.dockerLayerTar, 'none'],
  [MEDIA_TYPE.dockerLayerTarGzip, 'gzip'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar', 'none'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', 'gzip'],
  ['application/vnd.oci.image.layer.nondistributable.v1.tar+zstd', 'zstd'],
  ['application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', 'gzip'],
]);

export class UnsupportedLayerMediaTypeError extends Error {
  override name = 'UnsupportedLayerMediaTypeError';
  constructor(
    readonly mediaType: string,
    readonly layerDigest?: string,
  ) {
    super(
      `${layerDigest ? `layer ${layerDigest}: ` : ''}media type ${JSON.stringify(mediaType)} is not a tar layer ` +
        `(expected one of ${[...LAYER_TAR_MEDIA_TYPES.keys()].join(', ')})`,
    );
  }
}

/** The compression a layer media type declares; throws UnsupportedLayerMediaTypeError for anything else. */
export function declaredCompression(mediaType: string, layerDigest?: string): LayerCompression {
  const c = LAYER_TAR_MEDIA_TYPES.get(mediaType);
  if (c === undefined) throw new UnsupportedLayerMediaTypeError(mediaType, layerDigest);
  return c;
}

/** Compression recognised from the first bytes, or undefined when they match no known magic (plain tar). */
export function sniffCompression(head: Uint8Array): LayerCompression | undefined {
  const b = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  if (b.length >= GZIP_MAGIC.length && b.subarray(0, GZIP_MAGIC.length).equals(GZIP_MAGIC)) return 'gzip';
  if (b.length >= ZSTD_MAGIC.length && b.subarray(0, ZSTD_MAGIC.length).equals(ZSTD_MAGIC)) return 'zstd';
  if (
    b.length >= SNIFF_LENGTH &&
    (b[0]! & 0xf0) === ZSTD_SKIPPABLE_LOW_NIBBLE_BASE &&
    b.subarray(1, SNIFF_LENGTH).equals(ZSTD_SKIPPABLE_MAGIC_HIGH)
  ) {
    return 'zstd';
  }
  return undefined;
}

export interface OpenLayerOptions {
  /** For error messages. */
  layerDigest?: string;
  /** log2 of the largest zstd window accepted; DEFAULT_ZSTD_WINDOW_LOG_MAX when omitted. */
  zstdWindowLogMax?: number;
}

export interface OpenedLayerTar {
  /** The uncompressed tar bytes. Errors of the blob stream and of the decompressor surface here. */
  tar: Readable;
  /** What the media type says. */
  declared: LayerCompression;
  /** What the content actually is (by magic bytes); this is what was used. */
  detected: LayerCompression;
}

/**
 * Opens a layer blob as a tar byte stream. Reads only the first few bytes before returning. Destroying
 * the returned stream destroys the blob stream too.
 */
export async function openLayerTar(
  blob: Readable | AsyncIterable<Uint8Array>,
  mediaType: string,
  opts: OpenLayerOptions = {},
): Promise<OpenedLayerTar> {
  const declared = declaredCompression(mediaType, opts.layerDigest);
  const iterator = (blob as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
  const headChunks: Buffer[] = [];
  let headLength = 0;
  let ended = false;
  while (headLength < SNIFF_LENGTH) {
    const r = await iterator.next();
    if (r.done) {
      ended = true;
      break;
    }
    const chunk = typeof r.value === 'string' ? Buffer.from(r.value) : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
    if (chunk.length === 0) continue;
    headChunks.push(chunk);
    headLength += chunk.length;
  }
  const head = Buffer.concat(headChunks);
  const detected = sniffCompression(head) ?? 'none';

  async function* replay(): AsyncGenerator<Buffer> {
    if (head.length > 0) yield head;
    if (ended) return;
    for (;;) {
      const r = await iterator.next();
      if (r.done) return;
      yield typeof r.value === 'string' ? Buffer.from(r.value) : Buffer.from(r.value.buffer, r.value.byteOffset, r.value.byteLength);
    }
  }
  const source = Readable.from(replay(), { objectMode: false });
  // When the consumer gives up early, release the blob stream (an HTTP body, a file) as well.
  source.once('close', () => {
    if (blob instanceof Readable && !blob.destroyed) blob.destroy();
  });

  if (detected === 'none') return { tar: source, declared, detected };
  const decompressor =
    detected === 'gzip'
      ? createGunzip()
      : new DecompressStream({ windowLogMax: opts.zstdWindowLogMax ?? DEFAULT_ZSTD_WINDOW_LOG_MAX });
  // pipeline destroys every stream on failure, so the error (a zlib or zstd message) reaches `tar`'s
  // consumer, which adds the layer context.
  const tar = pipeline(source, decompressor, () => undefined);
  return { tar, declared, detected };
}
