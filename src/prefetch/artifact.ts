// Prefetch profiles stored beside the image they were recorded on, as an OCI 1.1 artifact: a manifest with
// artifactType PROFILE_MEDIA_TYPE, the empty config, the profile JSON as its one layer, and `subject` = the
// image manifest. Registries without the referrers API (distribution 2.8 among them) find it through the
// referrers tag schema of the OCI distribution spec: an index tagged `<alg>-<hex>` of the image digest lists
// the image's referrers. Pushing keeps the other referrers in that index and replaces an older profile.
import { MEDIA_TYPE, type Descriptor, type ImageIndex, type ImageManifest } from '../oci/types.js';
import type { ImageStore } from '../oci/store.js';
import { parseDigest, sha256Digest } from '../util/digest.js';
import { MAX_PROFILE_BYTES, parseProfile, PROFILE_MEDIA_TYPE, type PrefetchProfile } from './profile.js';

/** The OCI empty descriptor's media type and content (`{}`), used as an artifact's config. */
export const EMPTY_MEDIA_TYPE = 'application/vnd.oci.empty.v1+json';
const EMPTY_CONTENT = Buffer.from('{}');
/** Annotation with the profile's creation time (RFC 3339), on the artifact manifest and its index entry. */
export const CREATED_ANNOTATION = 'org.opencontainers.image.created';

/** The referrers tag schema's tag for a manifest digest: `sha256:abc…` → `sha256-abc…`. */
export function referrersTag(digest: string): string {
  const { algorithm, hex } = parseDigest(digest);
  return `${algorithm}-${hex}`;
}

function emptyDescriptor(): Descriptor {
  return { mediaType: EMPTY_MEDIA_TYPE, digest: sha256Digest(EMPTY_CONTENT), size: EMPTY_CONTENT.length };
}

/**
 * Pushes `profileBytes` (a serialized profile) as an artifact referring to `image` (the image manifest's
 * descriptor) and lists it in the image's referrers index. Returns the artifact manifest's descriptor.
 */
export async function pushProfile(store: ImageStore, image: Descriptor, profileBytes: Buffer, now: Date = new Date()): Promise<Descriptor> {
  parseProfile(profileBytes, 'profile to push');
  const created = now.toISOString();
  const config = emptyDescriptor();
  const layer: Descriptor = { mediaType: PROFILE_MEDIA_TYPE, digest: sha256Digest(profileBytes), size: profileBytes.length };
  await store.pushBlob(config, { bytes: EMPTY_CONTENT });
  await store.pushBlob(layer, { bytes: profileBytes });
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE.ociManifest,
    artifactType: PROFILE_MEDIA_TYPE,
    config,
    layers: [layer],
    subject: { mediaType: image.mediaType, digest: image.digest, size: image.size },
    annotations: { [CREATED_ANNOTATION]: created },
  };
  const artifact = await store.pushManifest(MEDIA_TYPE.ociManifest, Buffer.from(JSON.stringify(manifest)), { untagged: true });
  const tag = referrersTag(image.digest);
  const existing = await store.fetchManifest?.(tag);
  let manifests: Descriptor[] = [];
  if (existing) {
    const index = JSON.parse(existing.bytes.toString('utf8')) as Partial<ImageIndex>;
    if (!Array.isArray(index.manifests)) throw new Error(`${store.displayName}: tag ${tag} is not a referrers index`);
    manifests = index.manifests.filter((m) => m.artifactType !== PROFILE_MEDIA_TYPE);
  }
  manifests.push({ ...artifact, artifactType: PROFILE_MEDIA_TYPE, annotations: { [CREATED_ANNOTATION]: created } });
  const index: ImageIndex = { schemaVersion: 2, mediaType: MEDIA_TYPE.ociIndex, manifests };
  await store.pushManifest(MEDIA_TYPE.ociIndex, Buffer.from(JSON.stringify(index)), { tag });
  return { ...artifact, artifactType: PROFILE_MEDIA_TYPE };
}

/**
 * The newest prefetch profile referring to `image`, or undefined when there is none. A referrers index or
 * artifact that does not hold together (wrong subject, not a profile) is an error, not "none".
 */
export async function findProfile(store: ImageStore, image: Descriptor): Promise<PrefetchProfile | undefined> {
  if (!store.fetchManifest) return undefined;
  const tag = referrersTag(image.digest);
  const listed = await store.fetchManifest(tag);
  if (!listed) return undefined;
  const index = JSON.parse(listed.bytes.toString('utf8')) as Partial<ImageIndex>;
  if (!Array.isArray(index.manifests)) throw new Error(`${store.displayName}: tag ${tag} is not a referrers index`);
  const candidates = index.manifests.filter((m) => m.artifactType === PROFILE_MEDIA_TYPE);
  const entry = candidates[candidates.length - 1];
  if (!entry) return undefined;
  const where = `prefetch profile ${entry.digest} of ${store.displayName}`;
  const artifact = await store.fetchManifest(entry.digest);
  if (!artifact) throw new Error(`${where}: listed in ${tag} but not found`);
  const manifest = JSON.parse(artifact.bytes.toString('utf8')) as Partial<ImageManifest>;
  if (manifest.subject?.digest !== image.digest) throw new Error(`${where}: refers to ${manifest.subject?.digest ?? 'nothing'}, not ${image.digest}`);
  const layer = manifest.layers?.[0];
  if (manifest.artifactType !== PROFILE_MEDIA_TYPE || !layer || layer.mediaType !== PROFILE_MEDIA_TYPE) throw new Error(`${where}: not a prefetch profile artifact`);
  if (!(layer.size <= MAX_PROFILE_BYTES)) throw new Error(`${where}: profile of ${layer.size} bytes exceeds ${MAX_PROFILE_BYTES}`);
  return parseProfile(await store.fetchBlob(layer), where);
}
