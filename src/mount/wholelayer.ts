// Layers that cannot be read lazily (tar, tar+gzip, tar+zstd, raw EROFS, EROFS as one plain zstd stream,
// or a seekable table without per-chunk hashes) are fetched whole into the layer cache, as a raw EROFS
// image: decoded for EROFS layers, converted with mkfs.erofs for tar layers. The converter (tar-stream, the
// staging extractor) is loaded only when a tar layer is met, not by every mount.
import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { decodeLayerBlob } from '../chunktable/index.js';
import type { WholeLayerCache } from '../cache/index.js';
import { LAYER_TAR_MEDIA_TYPES } from '../convert/layertar.js';
import type { ImageStore } from '../oci/store.js';
import { MEDIA_TYPE } from '../oci/types.js';
import type { Descriptor } from '../oci/types.js';
import { sha256FileDigest } from '../util/digest.js';

/** Returns the path of the layer's raw EROFS image in the cache, fetching and building it if needed. */
export async function fetchWholeLayer(
  store: ImageStore,
  layer: Descriptor,
  diffId: string | undefined,
  cache: WholeLayerCache,
): Promise<{ path: string; fetched: boolean }> {
  const cached = await cache.lookup(layer.digest);
  if (cached) return { path: cached, fetched: false };
  const tmp = cache.tempPath(layer.digest);
  try {
    if (LAYER_TAR_MEDIA_TYPES.has(layer.mediaType)) {
      const { layerToErofs } = await import('../convert/layer.js');
      await layerToErofs(await store.openBlob(layer), layer.mediaType, tmp, {
        layerDigest: layer.digest,
        workDir: `${dirname(tmp)}/.tmp-staging-${process.pid}-${Date.now()}`,
      });
    } else if (layer.mediaType === MEDIA_TYPE.erofsZstd || layer.mediaType === MEDIA_TYPE.erofs) {
      await decodeLayerBlob(await store.openBlob(layer), tmp, layer, diffId ? { diffId } : {});
    } else {
      throw new Error(`layer ${layer.digest}: media type ${layer.mediaType} cannot be mounted`);
    }
    const digest = await sha256FileDigest(tmp);
    return { path: await cache.commit(layer.digest, tmp, digest), fetched: true };
  } finally {
    await rm(tmp, { force: true });
  }
}
