// The registry store against the real distribution registry (docker-registry 2.8): monolithic and chunked
// pushes, custom media types and annotations, resolve by tag / digest / through an index by platform,
// verified whole and ranged reads, refused wrong-digest pushes, cross-repository mounts, an unreachable
// registry, and copies layout → registry → layout that keep manifest digests.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { ContentVerificationError, RegistryError } from '../../src/fetch/errors.js';
import { openImageStore } from '../../src/fetch/open.js';
import { hostPlatform, parsePlatform } from '../../src/fetch/platform.js';
import { RegistryStore } from '../../src/fetch/registry.js';
import type { ImageStore } from '../../src/oci/store.js';
import { MEDIA_TYPE, type Descriptor, type Platform } from '../../src/oci/types.js';
import { sha256Digest } from '../../src/util/digest.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/tmp.js';

/** Forces chunked uploads for anything over 64 KiB, in chunks that divide nothing evenly. */
const SMALL_UPLOADS = { monolithicUploadMaxBytes: 64 * 1024, uploadChunkBytes: 100_003 };

function bytesOf(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size);
  let x = seed >>> 0;
  for (let i = 0; i < size; i++) {
    x = (x * 1664525 + 1013904223) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

function descriptorOf(mediaType: string, data: Buffer, annotations?: Record<string, string>): Descriptor {
  const d: Descriptor = { mediaType, digest: sha256Digest(data), size: data.length };
  if (annotations) d.annotations = annotations;
  return d;
}

interface TestImage {
  layers: Array<{ data: Buffer; desc: Descriptor }>;
  config: { data: Buffer; desc: Descriptor };
  manifest: Buffer;
}

function makeImage(platform: Platform, seed: number, layerSizes: number[]): TestImage {
  const layers = layerSizes.map((size, i) => {
    const data = bytesOf(size, seed * 100 + i);
    return { data, desc: descriptorOf(MEDIA_TYPE.erofsZstd, data, { 'dev.example.layer': `${seed}-${i}`, 'dev.example.size': String(size) }) };
  });
  const configData = Buffer.from(
    JSON.stringify({ ...platform, rootfs: { type: 'layers', diff_ids: layers.map((l) => l.desc.digest) }, config: { Cmd: ['/bin/sh'] } }),
  );
  const config = { data: configData, desc: descriptorOf(MEDIA_TYPE.ociConfig, configData) };
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE.ociManifest,
      config: config.desc,
      layers: layers.map((l) => l.desc),
      annotations: { 'org.opencontainers.image.title': `test image ${seed}` },
    }),
  );
  return { layers, config, manifest };
}

async function pushImage(store: ImageStore, image: TestImage): Promise<Descriptor> {
  for (const layer of image.layers) await store.pushBlob(layer.desc, { bytes: layer.data });
  await store.pushBlob(image.config.desc, { bytes: image.config.data });
  return store.pushManifest(MEDIA_TYPE.ociManifest, image.manifest);
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Copies the resolved image (manifest bytes unchanged) from one store to another. */
async function copyImage(from: ImageStore, to: ImageStore): Promise<string> {
  const resolved = await from.resolve();
  for (const desc of [resolved.manifest.config, ...resolved.manifest.layers]) {
    await to.pushBlob(desc, { stream: () => from.openBlob(desc) });
  }
  return (await to.pushManifest(resolved.descriptor.mediaType, resolved.manifestBytes)).digest;
}

describe('registry store against docker-registry', () => {
  let registry: TestRegistry;
  const stores: ImageStore[] = [];
  const open = (ref: string, options: ConstructorParameters<typeof RegistryStore>[1] = {}): RegistryStore => {
    const store = new RegistryStore(`${registry.host}/${ref}`, options);
    stores.push(store);
    return store;
  };

  before(async () => {
    registry = await startRegistry();
  });
  after(async () => {
    await Promise.all(stores.map((s) => s.close()));
    await registry.stop();
  });

  test('push (monolithic and chunked) and resolve by tag and by digest', async (t) => {
    const image = makeImage({ os: 'linux', architecture: 'amd64' }, 1, [1_000, 300_000, 1_500_123]);
    const small = open('fetch/app:v1');
    // Small blobs in one PUT; the big layers from a file and a stream through PATCH chunks.
    await small.pushBlob(image.layers[0]!.desc, { bytes: image.layers[0]!.data });
    await small.pushBlob(image.config.desc, { bytes: image.config.data });
    const chunked = open('fetch/app:v1', SMALL_UPLOADS);
    const file = join(await tempDir(t), 'layer1');
    await writeFile(file, image.layers[1]!.data);
    await chunked.pushBlob(image.layers[1]!.desc, { path: file });
    const big = image.layers[2]!;
    await chunked.pushBlob(big.desc, { stream: async () => Readable.from([big.data.subarray(0, 7), big.data.subarray(7, 250_000), big.data.subarray(250_000)]) });
    for (const layer of image.layers) assert.equal(await small.hasBlob(layer.desc), true);
    // Already there: no upload at all (the stream factory would throw).
    await chunked.pushBlob(big.desc, { stream: () => Promise.reject(new Error('must not be read')) });

    const pushed = await small.pushManifest(MEDIA_TYPE.ociManifest, image.manifest);
    assert.deepEqual(pushed, descriptorOf(MEDIA_TYPE.ociManifest, image.manifest));

    const byTag = await small.resolve();
    assert.deepEqual(byTag.descriptor, pushed);
    assert.deepEqual(byTag.manifestBytes, image.manifest);
    assert.equal(byTag.manifest.layers[2]!.mediaType, 'application/vnd.erofs.layer.v1+zstd');
    assert.deepEqual(byTag.manifest.layers[1]!.annotations, image.layers[1]!.desc.annotations);
    assert.equal(byTag.manifest.annotations?.['org.opencontainers.image.title'], 'test image 1');
    assert.equal(byTag.index, undefined);

    const byDigest = await open(`fetch/app@${pushed.digest}`).resolve();
    assert.deepEqual(byDigest.manifestBytes, image.manifest);
    assert.equal(byDigest.descriptor.digest, pushed.digest);

    // Verified reads of what was pushed.
    assert.deepEqual(await small.fetchBlob(image.config.desc), image.config.data);
    assert.deepEqual(await small.fetchBlob(big.desc), big.data);
    assert.deepEqual(await readAll(await small.openBlob(big.desc)), big.data);
    assert.deepEqual(await small.fetchBlob(pushed), image.manifest);
    await assert.rejects(small.fetchBlob({ ...big.desc, size: big.desc.size + 1 }), ContentVerificationError);
    await assert.rejects(
      readAll(await small.openBlob({ ...big.desc, size: big.desc.size - 1 })),
      (err: unknown) => err instanceof ContentVerificationError && err.kind === 'size',
    );

    // Exact ranges, including the first and last byte and the whole blob.
    const n = big.data.length;
    for (const [start, end] of [[0, 1], [n - 1, n], [0, n], [1, n - 1], [65_536, 65_536 + 4096], [1_000_000, 1_400_000], [n - 10, n]] as const) {
      assert.deepEqual(await small.fetchRange(big.desc, start, end), big.data.subarray(start, end), `range ${start}-${end}`);
    }
    await assert.rejects(small.fetchRange(big.desc, n - 1, n + 1), RangeError);

    // Unknown tag and unknown blob carry the registry's error code.
    await assert.rejects(open('fetch/app:missing').resolve(), (err: unknown) => err instanceof RegistryError && err.status === 404 && err.code === 'MANIFEST_UNKNOWN');
    const absent = descriptorOf(MEDIA_TYPE.erofsZstd, Buffer.from('not pushed'));
    assert.equal(await small.hasBlob(absent), false);
    await assert.rejects(small.fetchBlob(absent), (err: unknown) => err instanceof RegistryError && err.status === 404 && err.code === 'BLOB_UNKNOWN');
  });

  test('a push whose content does not match the digest fails and stores nothing', async () => {
    const good = bytesOf(200_000, 7);
    const evil = Buffer.from(good);
    evil[150_000] ^= 0x55;
    const desc = descriptorOf(MEDIA_TYPE.erofsZstd, good);
    for (const store of [open('fetch/evil:v1'), open('fetch/evil:v1', SMALL_UPLOADS)]) {
      await assert.rejects(store.pushBlob(desc, { bytes: evil }), (err: unknown) => err instanceof ContentVerificationError && err.kind === 'digest');
      await assert.rejects(store.pushBlob(desc, { stream: async () => Readable.from([evil.subarray(0, 1000)]) }), ContentVerificationError);
      assert.equal(await store.hasBlob(desc), false);
    }
    // A manifest naming blobs the registry does not have is refused by the registry itself.
    const orphan = makeImage({ os: 'linux', architecture: 'amd64' }, 9, [10]);
    await assert.rejects(
      open('fetch/evil:v1').pushManifest(MEDIA_TYPE.ociManifest, orphan.manifest),
      (err: unknown) => err instanceof RegistryError && err.status === 400 && err.code === 'MANIFEST_BLOB_UNKNOWN',
    );
  });

  test('cross-repository mount between two repositories', async () => {
    const data = bytesOf(120_000, 11);
    const desc = descriptorOf(MEDIA_TYPE.erofsZstd, data);
    const source = open('mount/source:v1');
    await source.pushBlob(desc, { bytes: data });
    const target = open('mount/target:v1');
    assert.equal(await target.hasBlob(desc), false, 'blobs are only visible in repositories that have them');
    await target.pushBlob(desc, { stream: () => Promise.reject(new Error('the blob should be mounted, not uploaded')) }, { crossMountFrom: source.registryRepository });
    assert.equal(await target.hasBlob(desc), true);
    assert.deepEqual(await target.fetchRange(desc, 100, 200), data.subarray(100, 200));

    // Mount from a repository without the blob: the registry starts a normal upload instead.
    const other = descriptorOf(MEDIA_TYPE.erofsZstd, bytesOf(5_000, 12));
    await target.pushBlob(other, { bytes: bytesOf(5_000, 12) }, { crossMountFrom: `${registry.host}/mount/empty` });
    assert.equal(await target.hasBlob(other), true);
  });

  test('resolve through an OCI image index with two platforms', async () => {
    const host = hostPlatform();
    const otherArch = host.architecture === 'arm64' ? { os: 'linux', architecture: 'amd64' } : { os: 'linux', architecture: 'arm64', variant: 'v8' };
    const hostImage = makeImage(host, 21, [2_000]);
    const otherImage = makeImage(otherArch, 22, [3_000]);
    // One child manifest pushed by digest through a digest reference, the other through pushBlob.
    const byDigest = open(`multi/app@sha256:${'0'.repeat(64)}`);
    const hostDesc = { ...(await pushImage(byDigest, hostImage)), platform: host };
    const tagged = open('multi/app:latest');
    for (const part of [...otherImage.layers, otherImage.config]) await tagged.pushBlob(part.desc, { bytes: part.data });
    const otherDesc = { ...descriptorOf(MEDIA_TYPE.ociManifest, otherImage.manifest), platform: otherArch };
    await tagged.pushBlob(otherDesc, { bytes: otherImage.manifest });
    assert.equal(await tagged.hasBlob(otherDesc), true);
    const indexBytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociIndex, manifests: [otherDesc, hostDesc] }));
    const indexDesc = await tagged.pushManifest(MEDIA_TYPE.ociIndex, indexBytes);

    const byHost = await open('multi/app').resolve();
    assert.equal(byHost.descriptor.digest, hostDesc.digest);
    assert.deepEqual(byHost.manifestBytes, hostImage.manifest);
    assert.deepEqual(byHost.index?.descriptor, { mediaType: MEDIA_TYPE.ociIndex, digest: indexDesc.digest, size: indexBytes.length });
    assert.equal(byHost.index?.index.manifests.length, 2);

    const store = open('multi/app');
    const picked = await store.resolve({ platform: parsePlatform(`${otherArch.os}/${otherArch.architecture}`) });
    assert.equal(picked.descriptor.digest, otherDesc.digest);
    assert.deepEqual(picked.descriptor.platform, otherArch);
    const viaOption = await open('multi/app', { platform: otherArch }).resolve();
    assert.equal(viaOption.descriptor.digest, otherDesc.digest);
    await assert.rejects(store.resolve({ platform: parsePlatform('linux/s390x') }), /no manifest for platform linux\/s390x.*available: /);
    // An index pinned by digest resolves the same way.
    assert.equal((await open(`multi/app@${indexDesc.digest}`).resolve()).descriptor.digest, hostDesc.digest);
  });

  test('layout → registry → layout keeps manifest digests', async (t) => {
    const dir = await tempDir(t);
    const image = makeImage({ os: 'linux', architecture: 'amd64' }, 31, [10_000, 90_000]);
    const layout = openImageStore(`oci:${join(dir, 'a')}:v1`);
    stores.push(layout);
    const original = await pushImage(layout, image);

    const remote = openImageStore(`${registry.host}/copy/app:v1`, { registry: SMALL_UPLOADS });
    stores.push(remote);
    assert.equal(await copyImage(layout, remote), original.digest);
    const back = openImageStore(`oci:${join(dir, 'b')}:copied`);
    stores.push(back);
    assert.equal(await copyImage(remote, back), original.digest);
    const resolved = await back.resolve();
    assert.equal(resolved.descriptor.digest, original.digest);
    assert.deepEqual(await back.fetchBlob(image.layers[1]!.desc), image.layers[1]!.data);
    assert.deepEqual(await back.fetchRange(image.layers[1]!.desc, 89_990, 90_000), image.layers[1]!.data.subarray(89_990));
  });
});

test('a stopped registry fails fast with "unreachable" naming the host', async (t) => {
  const registry = await startRegistry();
  t.after(() => registry.stop());
  const store = new RegistryStore(`${registry.host}/gone/app:v1`);
  t.after(() => store.close());
  assert.equal(await store.hasBlob(descriptorOf('x', Buffer.from('x'))), false);
  await registry.stop({ keepData: true });
  const started = Date.now();
  await assert.rejects(store.resolve(), (err: unknown) => {
    assert.ok(err instanceof RegistryError);
    assert.equal(err.status, undefined);
    assert.match(err.message, new RegExp(`registry ${registry.host.replace(/\./g, '\\.')} is unreachable`));
    return true;
  });
  assert.ok(Date.now() - started < 2_000, `took ${Date.now() - started} ms`);
});
