// The label names containerd and remote snapshotters agree on (garbage-collection references, the
// snapshot target name, the CRI image/layer labels that remote snapshotters read on Prepare),
// and the layer chain IDs that name committed snapshots (OCI image spec: identity.ChainID).
import { createHash, randomBytes } from 'node:crypto';

/** Names the committed snapshot a Prepare should end up as (containerd's unpacker sets it to the chain ID). */
export const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref';
/** Image reference of the layer being prepared (CRI and stargz-style clients). */
export const LABEL_CRI_IMAGE_REF = 'containerd.io/snapshot/cri.image-ref';
/** Digest of the layer blob being prepared. */
export const LABEL_CRI_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest';
/** Digest of the image manifest that lists the layer. */
export const LABEL_CRI_MANIFEST_DIGEST = 'containerd.io/snapshot/cri.manifest-digest';
/** Uncompressed digest (diff ID) of a layer blob, as containerd's unpacker records it. */
export const LABEL_UNCOMPRESSED = 'containerd.io/uncompressed';
/** Lease expiry (RFC 3339 time): containerd deletes the lease after it. */
export const LABEL_GC_EXPIRE = 'containerd.io/gc.expire';

/** GC reference from a manifest to its config blob. */
export const LABEL_GC_REF_CONFIG = 'containerd.io/gc.ref.content.config';

/** GC reference from a manifest to its layer `i`. */
export function gcRefLayerLabel(i: number): string {
  return `containerd.io/gc.ref.content.l.${i}`;
}

/** GC reference from an index to its manifest `i`. */
export function gcRefManifestLabel(i: number): string {
  return `containerd.io/gc.ref.content.m.${i}`;
}

/** GC reference from a config blob to the top snapshot of the image in `snapshotter`. */
export function gcRefSnapshotLabel(snapshotter: string): string {
  return `containerd.io/gc.ref.snapshot.${snapshotter}`;
}

/**
 * Chain IDs of the layers given their diff IDs, bottom first: chain(0) = diff(0),
 * chain(n) = sha256(chain(n-1) + " " + diff(n)).
 */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const diffId of diffIds) {
    const prev = out.at(-1);
    out.push(prev === undefined ? diffId : `sha256:${createHash('sha256').update(`${prev} ${diffId}`).digest('hex')}`);
  }
  return out;
}

/** The key containerd's unpacker uses for an extraction snapshot: "extract-<unique> <chainID>". */
export function extractKey(chainId: string): string {
  return `extract-${Date.now() % 1_000_000_000}-${randomBytes(6).toString('base64url')} ${chainId}`;
}
