// Converts one image into seekable EROFS form: every tar layer becomes a raw EROFS image (src/convert
// layer builder), then a seekable blob (src/chunktable encoder); layers already seekable are copied as
// they are. Writes the new config (diff_ids = sha256 of the raw images) and an OCI manifest.
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_CHUNK_SIZE, encodeSeekableBlob, parseSeekableAnnotations, decodeSequential } from '../chunktable/index.js';
import type { EncodeResult } from '../chunktable/index.js';
import { MEDIA_TYPE } from '../oci/types.js';
import type { Descriptor, ImageConfig, ImageManifest, Platform } from '../oci/types.js';
import type { ImageStore } from '../oci/store.js';
import { sha256Digest } from '../util/digest.js';
import { STARTUP_BYTES_ANNOTATION } from '../prefetch/startup.js';
import { layerToErofs } from './layer.js';
import { LAYER_TAR_MEDIA_TYPES } from './layertar.js';

/**
 * zstd level of the chunks holding a start-up region (`hotPaths`): level 19 makes the Debian+python3 start-up
 * region 18% smaller than the default level 3 (5.4 vs 6.6 MB for 4 chunks), at a few seconds of encoding.
 */
export const STARTUP_COMPRESSION_LEVEL = 19;

/** How each source layer was treated. */
export type LayerAction = 'kept' | 'converted-tar' | 'reencoded-erofs';

export interface ConvertOptions {
  chunkSize?: number;
  dmVerity?: boolean;
  dmVerityBlockSize?: number;
  platform?: Platform;
  /** Scratch space for staging trees, raw images and blobs; defaults to the OS temp dir. */
  workDir?: string;
  /**
   * Paths a workload reads first (from `profile paths`, most urgent first): tar layers are then built by
   * erofs-lazy's own EROFS writer (src/mkfs) with these paths laid out together at the front, instead of
   * by mkfs.erofs. Each layer takes the paths it holds.
   */
  hotPaths?: readonly string[];
  onProgress?: (event: ConvertProgress) => void;
}

export interface ConvertProgress {
  layerIndex: number;
  layerCount: number;
  sourceDigest: string;
  phase: 'fetch-and-build' | 'encode' | 'push' | 'keep' | 'done';
}

export interface ConvertedLayer {
  sourceDigest: string;
  sourceMediaType: string;
  action: LayerAction;
  digest: string;
  mediaType: string;
  size: number;
  diffId: string;
  uncompressedSize?: number;
  chunkCount?: number;
}

export interface ConvertResult {
  manifestDigest: string;
  manifestSize: number;
  configDigest: string;
  layers: ConvertedLayer[];
}


/** The fixed UUID of dm-verity superblocks written by convert, so that conversions are reproducible. */
function verityUuidFor(layerDigest: string): Buffer {
  const uuid = Buffer.from(sha256Digest(Buffer.from(`dm-verity:${layerDigest}`)).slice(7, 39), 'hex');
  uuid[6] = (uuid[6]! & 0x0f) | 0x40;
  uuid[8] = (uuid[8]! & 0x3f) | 0x80;
  return uuid;
}

function sameRegistryHost(a: ImageStore, b: ImageStore): string | undefined {
  const from = a.registryRepository;
  const to = b.registryRepository;
  if (!from || !to) return undefined;
  const host = (r: string) => r.slice(0, r.indexOf('/'));
  return host(from) === host(to) ? from.slice(from.indexOf('/') + 1) : undefined;
}

export async function convertImage(source: ImageStore, target: ImageStore, options: ConvertOptions = {}): Promise<ConvertResult> {
  const resolved = await source.resolve({ platform: options.platform });
  const { manifest } = resolved;
  const configBytes = await source.fetchBlob(manifest.config);
  const config = JSON.parse(configBytes.toString('utf8')) as ImageConfig;
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== manifest.layers.length) {
    throw new Error(
      `${source.displayName}: config lists ${diffIds.length} diff_ids for ${manifest.layers.length} layers`,
    );
  }
  const workRoot = options.workDir ?? tmpdir();
  await mkdir(workRoot, { recursive: true });
  const work = await mkdtemp(join(workRoot, 'erofs-lazy-convert-'));
  const layers: ConvertedLayer[] = [];
  try {
    for (const [index, layer] of manifest.layers.entries()) {
      const progress = (phase: ConvertProgress['phase']) =>
        options.onProgress?.({ layerIndex: index, layerCount: manifest.layers.length, sourceDigest: layer.digest, phase });
      layers.push(await convertLayer(source, target, layer, diffIds[index]!, join(work, `layer-${index}`), options, progress));
      progress('done');
    }
    const newConfig: ImageConfig = { ...config, rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) } };
    const newConfigBytes = Buffer.from(JSON.stringify(newConfig));
    const configDesc: Descriptor = {
      mediaType: MEDIA_TYPE.ociConfig,
      digest: sha256Digest(newConfigBytes),
      size: newConfigBytes.length,
    };
    await target.pushBlob(configDesc, { bytes: newConfigBytes });
    const newManifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPE.ociManifest,
      config: configDesc,
      layers: layers.map((l, i) => layerDescriptor(manifest.layers[i]!, l)),
      ...(manifest.annotations ? { annotations: manifest.annotations } : {}),
    };
    const manifestBytes = Buffer.from(JSON.stringify(newManifest));
    const pushed = await target.pushManifest(MEDIA_TYPE.ociManifest, manifestBytes);
    return { manifestDigest: pushed.digest, manifestSize: manifestBytes.length, configDigest: configDesc.digest, layers };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** The new manifest's descriptor for a layer: seekable (and start-up layout) annotations replace stale ones, others are kept. */
function layerDescriptor(original: Descriptor, converted: ConvertedLayer & { annotations?: Record<string, string> }): Descriptor {
  if (converted.action === 'kept') return original;
  const annotations = { ...(original.annotations ?? {}) };
  for (const key of Object.keys(annotations)) {
    if (key.startsWith('dev.containerd.erofs.') || key === STARTUP_BYTES_ANNOTATION) delete annotations[key];
  }
  Object.assign(annotations, converted.annotations ?? {});
  return { mediaType: converted.mediaType, digest: converted.digest, size: converted.size, annotations };
}

async function convertLayer(
  source: ImageStore,
  target: ImageStore,
  layer: Descriptor,
  diffId: string,
  work: string,
  options: ConvertOptions,
  progress: (phase: ConvertProgress['phase']) => void,
): Promise<ConvertedLayer & { annotations?: Record<string, string> }> {
  const base = { sourceDigest: layer.digest, sourceMediaType: layer.mediaType };
  if (layer.mediaType === MEDIA_TYPE.erofsZstd && parseSeekableAnnotations(layer).kind === 'seekable') {
    progress('keep');
    await target.pushBlob(layer, { stream: () => source.openBlob(layer) }, { crossMountFrom: sameRegistryHost(source, target) });
    return { ...base, action: 'kept', digest: layer.digest, mediaType: layer.mediaType, size: layer.size, diffId };
  }

  const rawPath = `${work}.erofs`;
  const blobPath = `${work}.blob`;
  let action: LayerAction;
  let startupBytes: number | undefined;
  progress('fetch-and-build');
  if (LAYER_TAR_MEDIA_TYPES.has(layer.mediaType)) {
    ({ startupBytes } = await layerToErofs(await source.openBlob(layer), layer.mediaType, rawPath, {
      layerDigest: layer.digest,
      workDir: `${work}.staging`,
      hotPaths: options.hotPaths,
    }));
    action = 'converted-tar';
  } else if (layer.mediaType === MEDIA_TYPE.erofsZstd || layer.mediaType === MEDIA_TYPE.erofs) {
    await decodeSequential(await source.openBlob(layer), rawPath, {
      compressed: layer.mediaType === MEDIA_TYPE.erofsZstd,
      diffId,
    });
    action = 'reencoded-erofs';
  } else {
    throw new Error(`layer ${layer.digest}: cannot convert media type ${layer.mediaType}`);
  }

  progress('encode');
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  const encoded: EncodeResult = await encodeSeekableBlob(createReadStream(rawPath), blobPath, {
    chunkSize,
    // Every cold start fetches the start-up region: its few chunks get the slow, small encoding.
    ...(startupBytes ? { leadingChunks: { count: Math.ceil(startupBytes / chunkSize), level: STARTUP_COMPRESSION_LEVEL } } : {}),
    verity: options.dmVerity
      ? { blockSize: options.dmVerityBlockSize, uuid: verityUuidFor(layer.digest) }
      : undefined,
  });
  await rm(rawPath, { force: true });
  if (action === 'reencoded-erofs' && encoded.diffId !== diffId) {
    throw new Error(`layer ${layer.digest}: decoded EROFS image has DiffID ${encoded.diffId}, config says ${diffId}`);
  }

  progress('push');
  const desc: Descriptor = { mediaType: MEDIA_TYPE.erofsZstd, digest: encoded.blobDigest, size: encoded.blobSize };
  await target.pushBlob(desc, { path: blobPath });
  await rm(blobPath, { force: true });
  return {
    ...base,
    action,
    digest: encoded.blobDigest,
    mediaType: MEDIA_TYPE.erofsZstd,
    size: encoded.blobSize,
    diffId: encoded.diffId,
    uncompressedSize: encoded.uncompressedSize,
    chunkCount: encoded.chunkCount,
    annotations: startupBytes ? { ...encoded.annotations, [STARTUP_BYTES_ANNOTATION]: String(startupBytes) } : encoded.annotations,
  };
}
