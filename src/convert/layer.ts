// One tar layer to one raw EROFS image: decompress (layertar), extract into a staging directory with
// whiteouts in overlayfs form (extract), then mkfs.erofs with a UUID derived from the layer digest (mkfs), or,
// when hot paths are given, erofs-lazy's own writer (src/mkfs) laying those paths out first. The staging
// directory is removed afterwards, on failure too.
import { mkdir, mkdtemp, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { extractLayerTar } from './extract.js';
import type { DirMetadata, ExtractStats } from './extract.js';
import { openLayerTar } from './layertar.js';
import type { LayerCompression } from './layertar.js';
import { buildErofsImage, erofsUuidForLayer, fsckErofsImage, newestMtimeSeconds } from './mkfs.js';
import { writeErofsImage } from '../mkfs/index.js';

export { LayerEntryError, LayerExtractError } from './extract.js';
export type { DirMetadata, ExtractStats } from './extract.js';
export { ErofsToolError } from './mkfs.js';
export { UnsupportedLayerMediaTypeError } from './layertar.js';

/** Name prefix of the staging directory made inside `workDir`. */
const STAGING_PREFIX = 'staging-';

export interface LayerToErofsOptions {
  /** The layer blob's digest: names errors and seeds the image UUID. */
  layerDigest: string;
  /** Scratch directory (created if missing) for the staging tree; needs room for the whole layer, and
   * must support trusted.* xattrs (so not tmpfs without them). */
  workDir: string;
  /** Image UUID; erofsUuidForLayer(layerDigest) by default. */
  uuid?: string;
  /** See ExtractOptions.implicitDirMetadata. */
  implicitDirMetadata?: (relPath: string) => DirMetadata | undefined;
  /** Run fsck.erofs on the result. */
  fsck?: boolean;
  /** Build with erofs-lazy's writer, these paths (of the layer's tree) first; see ConvertOptions.hotPaths. */
  hotPaths?: readonly string[];
  /** See OpenLayerOptions.zstdWindowLogMax. */
  zstdWindowLogMax?: number;
}

export interface LayerToErofsResult {
  rawPath: string;
  stats: ExtractStats;
  /** What the media type declared and what the bytes were. */
  compression: { declared: LayerCompression; detected: LayerCompression };
  /** Built with hot paths: raw-image bytes from the start that hold them (0 when none of them is in the layer). */
  startupBytes?: number;
}

export async function layerToErofs(
  blob: Readable | AsyncIterable<Uint8Array>,
  mediaType: string,
  outPath: string,
  opts: LayerToErofsOptions,
): Promise<LayerToErofsResult> {
  let opened: Awaited<ReturnType<typeof openLayerTar>> | undefined;
  try {
    opened = await openLayerTar(blob, mediaType, { layerDigest: opts.layerDigest, zstdWindowLogMax: opts.zstdWindowLogMax });
  } catch (err) {
    if ('destroy' in blob && typeof blob.destroy === 'function') blob.destroy();
    throw err;
  }
  const createdWorkDir = await mkdir(opts.workDir, { recursive: true });
  const staging = await mkdtemp(join(opts.workDir, STAGING_PREFIX));
  try {
    const stats = await extractLayerTar(opened.tar, staging, {
      layerDigest: opts.layerDigest,
      implicitDirMetadata: opts.implicitDirMetadata,
    });
    const uuid = opts.uuid ?? erofsUuidForLayer(opts.layerDigest);
    let startupBytes: number | undefined;
    if (opts.hotPaths === undefined) {
      await buildErofsImage(staging, outPath, { uuid });
    } else {
      const written = await writeErofsImage(staging, outPath, { uuid, epoch: await newestMtimeSeconds(staging), hotPaths: [...opts.hotPaths] });
      startupBytes = written.hotBytes;
    }
    if (opts.fsck) await fsckErofsImage(outPath);
    return { rawPath: outPath, stats, compression: { declared: opened.declared, detected: opened.detected }, startupBytes };
  } finally {
    if (!opened.tar.destroyed) opened.tar.destroy();
    await rm(staging, { recursive: true, force: true });
    if (createdWorkDir !== undefined) await rmdir(opts.workDir).catch(() => undefined);
  }
}
