// Remote pull: makes an image known to containerd the way its own pull + unpack would (content blobs with
// garbage-collection labels, one committed snapshot per layer named by its chain ID, an image record),
// except that each layer is first offered to the snapshotter as a remote snapshot: a Prepare carrying the
// image reference and layer digest labels, which a remote snapshotter answers with ALREADY_EXISTS after
// mounting the layer lazily. Only layers the snapshotter does not take are downloaded and applied.
import type { ImageStore } from '../oci/store.js';
import { MEDIA_TYPE } from '../oci/types.js';
import type { Descriptor, ImageConfig, Platform } from '../oci/types.js';
import type { ContainerdClient } from './client.js';
import { isAlreadyExists } from './errors.js';
import type { Mount } from './types.js';
import {
  LABEL_CRI_IMAGE_REF,
  LABEL_CRI_LAYER_DIGEST,
  LABEL_CRI_MANIFEST_DIGEST,
  LABEL_GC_EXPIRE,
  LABEL_GC_REF_CONFIG,
  LABEL_SNAPSHOT_REF,
  LABEL_UNCOMPRESSED,
  chainIds,
  extractKey,
  gcRefLayerLabel,
  gcRefManifestLabel,
  gcRefSnapshotLabel,
} from './labels.js';

export const DEFAULT_SNAPSHOTTER = 'erofs-lazy';
/** How long the pull's lease protects what it wrote if rpull dies before deleting it. */
export const RPULL_LEASE_EXPIRY_MS = 60 * 60_000;
/** Tries of an extraction Prepare whose ALREADY_EXISTS is not (yet) backed by a snapshot (containerd's unpacker: 3). */
const PREPARE_ATTEMPTS = 3;

export type LayerState = 'remote' | 'applied' | 'present';

export interface LayerResult {
  index: number;
  digest: string;
  mediaType: string;
  size: number;
  diffId: string;
  chainId: string;
  /** remote: mounted by the snapshotter; applied: downloaded and unpacked by containerd; present: already there. */
  state: LayerState;
}

export interface RpullOptions {
  /** Image name in containerd and the cri.image-ref label: the reference as the user gave it. */
  reference: string;
  /** containerd snapshotter to unpack into (default erofs-lazy). */
  snapshotter?: string;
  platform?: Platform;
  /** Called as each layer is done. */
  onLayer?: (layer: LayerResult) => void;
}

export interface RpullReport {
  reference: string;
  snapshotter: string;
  /** What the image record points at: the index when the reference named one, else the manifest. */
  target: Descriptor;
  manifestDigest: string;
  configDigest: string;
  /** Chain ID of the top layer: the snapshot a container of this image starts from. */
  topChainId: string;
  layers: LayerResult[];
  /** Layer blob bytes downloaded into containerd (applied layers only). */
  layerBytesDownloaded: number;
}

/** What rpull reads from the image's location (any ImageStore). */
export type RpullSource = Pick<ImageStore, 'displayName' | 'resolve' | 'fetchBlob' | 'openBlob'>;

export class RpullError extends Error {
  override name = 'RpullError';
}

/** Content-store ingest ref for a blob, in the style of containerd's own ("manifest-sha256:…"). */
function ingestRef(kind: string, digest: string): string {
  return `erofs-lazy-${kind}-${digest}`;
}

/**
 * Writes a small blob with labels; when containerd already has it (it then joins the lease), only the
 * labels are set, leaving the blob's other labels alone.
 */
async function putBlob(client: ContainerdClient, kind: string, desc: Descriptor, bytes: Buffer, labels: Record<string, string>): Promise<void> {
  const result = await client.content.write(desc, bytes, { ref: ingestRef(kind, desc.digest), labels });
  if (result === 'exists' && Object.keys(labels).length > 0) await client.content.setLabels(desc.digest, labels);
}

function parseConfig(bytes: Buffer, digest: string): ImageConfig {
  let config: ImageConfig;
  try {
    config = JSON.parse(bytes.toString('utf8')) as ImageConfig;
  } catch (err) {
    throw new RpullError(`image config ${digest} is not JSON: ${(err as Error).message}`);
  }
  if (!config.rootfs || !Array.isArray(config.rootfs.diff_ids)) throw new RpullError(`image config ${digest} has no rootfs.diff_ids`);
  return config;
}

/** Pulls `store`'s image into containerd (see the module header). Resolves with what happened per layer. */
export async function rpullImage(store: RpullSource, client: ContainerdClient, options: RpullOptions): Promise<RpullReport> {
  const snapshotter = options.snapshotter ?? DEFAULT_SNAPSHOTTER;
  const resolved = await store.resolve(options.platform ? { platform: options.platform } : {});
  const manifest = resolved.manifest;
  const manifestDesc = resolved.descriptor;
  const configBytes = await store.fetchBlob(manifest.config);
  const config = parseConfig(configBytes, manifest.config.digest);
  const diffIds = config.rootfs.diff_ids;
  if (manifest.layers.length === 0) throw new RpullError(`${store.displayName}: the image has no layers`);
  if (diffIds.length !== manifest.layers.length) {
    throw new RpullError(`${store.displayName}: the manifest lists ${manifest.layers.length} layers but the config has ${diffIds.length} diff IDs`);
  }
  const chain = chainIds(diffIds);
  const topChainId = chain.at(-1)!;
  let indexBytes: Buffer | undefined;
  if (resolved.index) indexBytes = await store.fetchBlob(resolved.index.descriptor);

  const lease = await client.leases.create({ labels: { [LABEL_GC_EXPIRE]: new Date(Date.now() + RPULL_LEASE_EXPIRY_MS).toISOString() } });
  const leased = client.withLease(lease.id);
  try {
    await putBlob(leased, 'config', manifest.config, configBytes, { [gcRefSnapshotLabel(snapshotter)]: topChainId });
    const manifestLabels: Record<string, string> = { [LABEL_GC_REF_CONFIG]: manifest.config.digest };
    manifest.layers.forEach((l, i) => (manifestLabels[gcRefLayerLabel(i)] = l.digest));
    await putBlob(leased, 'manifest', manifestDesc, resolved.manifestBytes, manifestLabels);
    if (resolved.index && indexBytes) {
      const position = resolved.index.index.manifests.findIndex((m) => m.digest === manifestDesc.digest);
      const labels = position < 0 ? {} : { [gcRefManifestLabel(position)]: manifestDesc.digest };
      await putBlob(leased, 'index', resolved.index.descriptor, indexBytes, labels);
    }

    const layers: LayerResult[] = [];
    let downloaded = 0;
    let parent = '';
    for (const [i, layer] of manifest.layers.entries()) {
      const chainId = chain[i]!;
      const base = { index: i, digest: layer.digest, mediaType: layer.mediaType, size: layer.size, diffId: diffIds[i]!, chainId };
      const state = await unpackLayer(leased, store, {
        snapshotter,
        layer,
        diffId: diffIds[i]!,
        chainId,
        parent,
        labels: {
          [LABEL_SNAPSHOT_REF]: chainId,
          [LABEL_CRI_IMAGE_REF]: options.reference,
          [LABEL_CRI_LAYER_DIGEST]: layer.digest,
          [LABEL_CRI_MANIFEST_DIGEST]: manifestDesc.digest,
        },
      });
      if (state === 'applied') downloaded += layer.size;
      const result: LayerResult = { ...base, state };
      layers.push(result);
      options.onLayer?.(result);
      parent = chainId;
    }

    const target = resolved.index?.descriptor ?? manifestDesc;
    const record = { name: options.reference, target: { mediaType: target.mediaType, digest: target.digest, size: target.size } };
    try {
      await client.images.create(record);
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      await client.images.update(record);
    }
    return {
      reference: options.reference,
      snapshotter,
      target: record.target,
      manifestDigest: manifestDesc.digest,
      configDigest: manifest.config.digest,
      topChainId,
      layers,
      layerBytesDownloaded: downloaded,
    };
  } finally {
    await client.leases.delete(lease.id).catch(() => undefined);
  }
}

interface LayerJob {
  snapshotter: string;
  layer: Descriptor;
  diffId: string;
  chainId: string;
  parent: string;
  labels: Record<string, string>;
}

/** One layer, as containerd's unpacker does it: remote snapshot, or download + Diff/Apply + Commit. */
async function unpackLayer(client: ContainerdClient, store: RpullSource, job: LayerJob): Promise<LayerState> {
  const { snapshotter, layer, chainId } = job;
  const where = `layer ${layer.digest} (chain ${chainId})`;
  try {
    if (await client.snapshots.stat(snapshotter, chainId)) return 'present';
  } catch (err) {
    throw new RpullError(`${where}: stat in snapshotter ${snapshotter}: ${(err as Error).message}`, { cause: err });
  }

  let key = '';
  let mounts: Mount[] = [];
  for (let attempt = 1; ; attempt++) {
    key = extractKey(chainId);
    try {
      mounts = await client.snapshots.prepare(snapshotter, key, job.parent, job.labels);
      break;
    } catch (err) {
      if (!isAlreadyExists(err)) throw new RpullError(`${where}: prepare in snapshotter ${snapshotter}: ${(err as Error).message}`, { cause: err });
      if (await client.snapshots.stat(snapshotter, chainId)) return 'remote';
      if (attempt >= PREPARE_ATTEMPTS) {
        throw new RpullError(`${where}: snapshotter ${snapshotter} answered ALREADY_EXISTS but has no snapshot ${chainId}`, { cause: err });
      }
    }
  }

  try {
    if (layer.mediaType === MEDIA_TYPE.erofsZstd || layer.mediaType === MEDIA_TYPE.erofs) {
      throw new RpullError(`${where}: snapshotter ${snapshotter} did not mount this ${layer.mediaType} layer remotely, and containerd cannot unpack it`);
    }
    await client.content.write(layer, () => store.openBlob(layer), {
      ref: ingestRef('layer', layer.digest),
      labels: { [LABEL_UNCOMPRESSED]: job.diffId },
    });
    const applied = await client.diff.apply(layer, mounts);
    if (applied.digest !== job.diffId) {
      throw new RpullError(`${where}: unpacked content has digest ${applied.digest}, the config's diff ID is ${job.diffId}`);
    }
    try {
      await client.snapshots.commit(snapshotter, chainId, key, job.labels);
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      await client.snapshots.remove(snapshotter, key).catch(() => undefined);
    }
    return 'applied';
  } catch (err) {
    await client.snapshots.remove(snapshotter, key).catch(() => undefined);
    if (err instanceof RpullError) throw err;
    throw new RpullError(`${where}: ${(err as Error).message}`, { cause: err });
  }
}
