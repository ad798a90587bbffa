// rpull's protocol with containerd, against the in-process fake containerd and an in-memory image store:
// which layers become remote snapshots and which are downloaded, applied and committed, the labels that
// remote snapshotters and containerd's garbage collector read, the lease, and the cleanup on failure.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import { ContainerdClient, chainIds, rpullImage } from '../../src/containerd/index.js';
import type { LayerResult, RpullSource } from '../../src/containerd/index.js';
import { MEDIA_TYPE } from '../../src/oci/types.js';
import type { Descriptor, ImageIndex, ImageManifest, ResolvedImage } from '../../src/oci/types.js';
import { startFakeContainerd } from '../helpers/containerd.js';
import type { FakeContainerd } from '../helpers/containerd.js';

function digestOf(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

function blob(mediaType: string, data: Buffer): { desc: Descriptor; data: Buffer } {
  return { desc: { mediaType, digest: digestOf(data), size: data.length }, data };
}

/** An image held in memory: layer blobs, config, manifest, optionally an index around it. */
class MemoryImage implements RpullSource {
  readonly displayName = 'memory/test:latest';
  readonly blobs = new Map<string, Buffer>();
  readonly opened: string[] = [];
  readonly layers: Descriptor[];
  readonly diffIds: string[];
  readonly manifest: { desc: Descriptor; data: Buffer; parsed: ImageManifest };
  readonly index?: { desc: Descriptor; data: Buffer; parsed: ImageIndex };

  constructor(layerTypes: string[], withIndex = false) {
    this.layers = [];
    this.diffIds = [];
    layerTypes.forEach((mediaType, i) => {
      const l = blob(mediaType, Buffer.from(`layer ${i} of type ${mediaType}`));
      this.blobs.set(l.desc.digest, l.data);
      this.layers.push(l.desc);
      this.diffIds.push(digestOf(Buffer.from(`diff ${i}`)));
    });
    const config = blob(MEDIA_TYPE.ociConfig, Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: this.diffIds } })));
    this.blobs.set(config.desc.digest, config.data);
    const parsed: ImageManifest = { schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config: config.desc, layers: this.layers };
    const m = blob(MEDIA_TYPE.ociManifest, Buffer.from(JSON.stringify(parsed)));
    this.blobs.set(m.desc.digest, m.data);
    this.manifest = { ...m, parsed };
    if (withIndex) {
      const other = { mediaType: MEDIA_TYPE.ociManifest, digest: digestOf(Buffer.from('arm')), size: 3, platform: { os: 'linux', architecture: 'arm64' } };
      const idx: ImageIndex = { schemaVersion: 2, mediaType: MEDIA_TYPE.ociIndex, manifests: [other, { ...m.desc, platform: { os: 'linux', architecture: 'amd64' } }] };
      const i = blob(MEDIA_TYPE.ociIndex, Buffer.from(JSON.stringify(idx)));
      this.blobs.set(i.desc.digest, i.data);
      this.index = { ...i, parsed: idx };
    }
  }

  get configDigest(): string {
    return this.manifest.parsed.config.digest;
  }

  async resolve(): Promise<ResolvedImage> {
    const r: ResolvedImage = { descriptor: this.manifest.desc, manifest: this.manifest.parsed, manifestBytes: this.manifest.data };
    if (this.index) r.index = { descriptor: this.index.desc, index: this.index.parsed };
    return r;
  }

  async fetchBlob(desc: Descriptor): Promise<Buffer> {
    const b = this.blobs.get(desc.digest);
    if (!b) throw new Error(`no blob ${desc.digest}`);
    return b;
  }

  async openBlob(desc: Descriptor): Promise<Readable> {
    this.opened.push(desc.digest);
    return Readable.from([await this.fetchBlob(desc)]);
  }

}

const REF = '127.0.0.1:5000/app:seekable';
const SN = 'erofs-lazy';

async function setup(t: Parameters<typeof startFakeContainerd>[0]): Promise<{ fake: FakeContainerd; client: ContainerdClient }> {
  const fake = await startFakeContainerd(t);
  const client = ContainerdClient.connect(fake.address, { namespace: 'testns' });
  t.after(() => client.close());
  return { fake, client };
}

describe('rpull against a fake containerd', () => {
  test('seekable layers become remote snapshots, the others are downloaded, applied and committed', async (t) => {
    const { fake, client } = await setup(t);
    const image = new MemoryImage([MEDIA_TYPE.erofsZstd, MEDIA_TYPE.ociLayerTarGzip, MEDIA_TYPE.erofsZstd]);
    for (const i of [0, 2]) fake.remoteLayers.add(image.layers[i]!.digest);
    const seen: LayerResult[] = [];
    const report = await rpullImage(image, client, { reference: REF, onLayer: (l) => seen.push(l) });

    const chain = chainIds(image.diffIds);
    assert.deepEqual(report.layers.map((l) => l.state), ['remote', 'applied', 'remote']);
    assert.deepEqual(seen.map((l) => l.chainId), chain);
    assert.equal(report.topChainId, chain[2]);
    assert.equal(report.layerBytesDownloaded, image.layers[1]!.size);
    assert.deepEqual(image.opened, [image.layers[1]!.digest], 'only the non-seekable layer is downloaded');

    // Committed snapshots named by chain ID, each on the previous one.
    for (const [i, id] of chain.entries()) {
      const s = fake.snapshots.get(`${SN}/${id}`);
      assert.equal(s?.kind, 'COMMITTED', `snapshot ${i}`);
      assert.equal(s?.parent, i === 0 ? '' : chain[i - 1]);
    }
    assert.equal([...fake.snapshots.values()].filter((s) => s.kind === 'ACTIVE').length, 0, 'no extraction snapshot left');

    // Every Prepare carries the target name and the CRI labels of the contract.
    const prepares = fake.calls.filter((c) => c.method === 'Snapshots/Prepare');
    assert.equal(prepares.length, 3);
    prepares.forEach((p, i) => {
      assert.equal(p.request.snapshotter, SN);
      assert.match(String(p.request.key), new RegExp(`^extract-\\S+ ${chain[i]}$`));
      assert.equal(p.request.parent, i === 0 ? '' : chain[i - 1]);
      assert.deepEqual(p.request.labels, {
        'containerd.io/snapshot.ref': chain[i],
        'containerd.io/snapshot/cri.image-ref': REF,
        'containerd.io/snapshot/cri.layer-digest': image.layers[i]!.digest,
        'containerd.io/snapshot/cri.manifest-digest': image.manifest.desc.digest,
      });
    });

    // Content with the garbage collector's references; seekable layer blobs are not downloaded.
    assert.deepEqual(fake.content.get(image.manifest.desc.digest)?.labels, {
      'containerd.io/gc.ref.content.config': image.configDigest,
      'containerd.io/gc.ref.content.l.0': image.layers[0]!.digest,
      'containerd.io/gc.ref.content.l.1': image.layers[1]!.digest,
      'containerd.io/gc.ref.content.l.2': image.layers[2]!.digest,
    });
    assert.deepEqual(fake.content.get(image.configDigest)?.labels, { 'containerd.io/gc.ref.snapshot.erofs-lazy': chain[2] });
    assert.deepEqual(fake.content.get(image.layers[1]!.digest)?.labels, { 'containerd.io/uncompressed': image.diffIds[1] });
    assert.ok(!fake.content.has(image.layers[0]!.digest) && !fake.content.has(image.layers[2]!.digest));

    // The image record, the lease around the pull, the namespace on every call.
    assert.deepEqual(fake.images.get(REF)?.target, { media_type: MEDIA_TYPE.ociManifest, digest: image.manifest.desc.digest, size: image.manifest.desc.size, annotations: {} });
    assert.equal(fake.leases.size, 0, 'the lease is deleted at the end');
    const leaseId = fake.calls.find((c) => c.method === 'Snapshots/Prepare')!.lease;
    assert.ok(leaseId);
    for (const c of fake.calls) {
      assert.equal(c.namespace, 'testns');
      if (/^(Content|Snapshots|Diff)\//.test(c.method)) assert.equal(c.lease, leaseId, `${c.method} runs under the lease`);
    }
    const leaseCreate = fake.calls.find((c) => c.method === 'Leases/Create')!;
    assert.ok(Date.parse(String((leaseCreate.request.labels as Record<string, string>)['containerd.io/gc.expire'])) > Date.now());
  });

  test('a second rpull finds every layer present and updates the image record', async (t) => {
    const { fake, client } = await setup(t);
    const image = new MemoryImage([MEDIA_TYPE.erofsZstd, MEDIA_TYPE.ociLayerTarGzip]);
    fake.remoteLayers.add(image.layers[0]!.digest);
    await rpullImage(image, client, { reference: REF });
    fake.calls.length = 0;
    const again = await rpullImage(image, client, { reference: REF });
    assert.deepEqual(again.layers.map((l) => l.state), ['present', 'present']);
    assert.equal(fake.calls.filter((c) => c.method === 'Snapshots/Prepare').length, 0);
    assert.deepEqual(fake.calls.filter((c) => c.method.startsWith('Images/')).map((c) => c.method), ['Images/Create', 'Images/Update']);
    assert.equal(image.opened.length, 1, 'the applied layer was downloaded once');
  });

  test('an image index becomes the target, stored with a reference to the chosen manifest', async (t) => {
    const { fake, client } = await setup(t);
    const image = new MemoryImage([MEDIA_TYPE.erofsZstd], true);
    fake.remoteLayers.add(image.layers[0]!.digest);
    const report = await rpullImage(image, client, { reference: REF });
    assert.equal(report.target.digest, image.index!.desc.digest);
    assert.equal(report.manifestDigest, image.manifest.desc.digest);
    assert.equal(fake.images.get(REF)?.target.digest, image.index!.desc.digest);
    assert.deepEqual(fake.content.get(image.index!.desc.digest)?.labels, { 'containerd.io/gc.ref.content.m.1': image.manifest.desc.digest });
  });

  test('a failed apply removes the extraction snapshot and the lease, and names the layer', async (t) => {
    const { fake, client } = await setup(t);
    const image = new MemoryImage([MEDIA_TYPE.ociLayerTarGzip]);
    fake.failApplyWith = status.INTERNAL;
    await assert.rejects(rpullImage(image, client, { reference: REF }), (err: Error) => {
      assert.match(err.message, new RegExp(`layer ${image.layers[0]!.digest} .*Diff/Apply: apply failed on purpose`));
      return true;
    });
    assert.equal(fake.snapshots.size, 0, 'extraction snapshot removed');
    assert.equal(fake.leases.size, 0, 'lease deleted');
    assert.equal(fake.images.size, 0, 'no image record');
  });

  test('a seekable layer that the snapshotter does not take is an error, not a download', async (t) => {
    const { fake, client } = await setup(t);
    const image = new MemoryImage([MEDIA_TYPE.erofsZstd]);
    await assert.rejects(rpullImage(image, client, { reference: REF, snapshotter: 'overlayfs' }), /did not mount this application\/vnd\.erofs\.layer\.v1\+zstd layer remotely/);
    assert.deepEqual(image.opened, []);
    assert.equal(fake.snapshots.size, 0);
  });
});
