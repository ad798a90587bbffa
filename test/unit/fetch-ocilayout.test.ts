// OCI image layout store: creating a layout by pushing, resolving by tag / lone manifest / digest, through
// nested indexes by platform, verified reads and ranges, atomic writes that refuse wrong content.
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { ContentVerificationError, OciLayoutError, PlatformError } from '../../src/fetch/errors.js';
import { OciLayoutStore, REF_NAME_ANNOTATION } from '../../src/fetch/ocilayout.js';
import { openImageStore } from '../../src/fetch/open.js';
import { parsePlatform } from '../../src/fetch/platform.js';
import type { ImageStore } from '../../src/oci/store.js';
import { MEDIA_TYPE, type Descriptor, type ImageIndex } from '../../src/oci/types.js';
import { sha256Digest } from '../../src/util/digest.js';
import { tempDir } from '../helpers/tmp.js';

function bytesOf(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size);
  let x = seed;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

function describe(mediaType: string, data: Buffer, annotations?: Record<string, string>): Descriptor {
  const d: Descriptor = { mediaType, digest: sha256Digest(data), size: data.length };
  if (annotations) d.annotations = annotations;
  return d;
}

/** Pushes a one-layer image; returns its parts. */
async function pushImage(store: ImageStore, arch: string, seed: number) {
  const layer = bytesOf(50_000 + seed, seed);
  const layerDesc = describe(MEDIA_TYPE.erofsZstd, layer, { 'org.example.seed': String(seed) });
  const config = Buffer.from(JSON.stringify({ architecture: arch, os: 'linux', rootfs: { type: 'layers', diff_ids: [layerDesc.digest] } }));
  const configDesc = describe(MEDIA_TYPE.ociConfig, config);
  await store.pushBlob(layerDesc, { stream: async () => Readable.from([layer.subarray(0, 1000), layer.subarray(1000)]) });
  await store.pushBlob(configDesc, { bytes: config });
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config: configDesc, layers: [layerDesc] }));
  return { layer, layerDesc, config, configDesc, manifest };
}

test('push creates the layout; resolve by tag, by lone manifest, by digest; verified reads', async (t) => {
  const dir = join(await tempDir(t), 'new', 'layout');
  const store = new OciLayoutStore(`oci:${dir}:v1`);
  const image = await pushImage(store, 'amd64', 1);
  const desc = await store.pushManifest(MEDIA_TYPE.ociManifest, image.manifest);
  assert.equal(desc.digest, sha256Digest(image.manifest));

  assert.deepEqual(JSON.parse(await readFile(join(dir, 'oci-layout'), 'utf8')), { imageLayoutVersion: '1.0.0' });
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as ImageIndex;
  assert.deepEqual(index.manifests, [{ ...desc, annotations: { [REF_NAME_ANNOTATION]: 'v1' } }]);
  assert.deepEqual(await readFile(join(dir, 'blobs/sha256', image.layerDesc.digest.slice(7))), image.layer);
  assert.deepEqual((await readdir(join(dir, 'blobs/sha256'))).filter((f) => f.startsWith('.tmp')), []);

  const resolved = await store.resolve();
  assert.equal(resolved.descriptor.digest, desc.digest);
  assert.deepEqual(resolved.manifestBytes, image.manifest);
  assert.equal(resolved.manifest.layers[0]!.annotations!['org.example.seed'], '1');
  assert.equal(resolved.index, undefined);

  // No tag and a single manifest: that one. Unknown tag: error listing the tags.
  assert.equal((await openImageStore(`oci:${dir}`).resolve()).descriptor.digest, desc.digest);
  await assert.rejects(new OciLayoutStore(`oci:${dir}:nope`).resolve(), (err: unknown) => err instanceof OciLayoutError && /tagged "nope" \(tags: v1;/.test(err.message));
  assert.equal((await new OciLayoutStore(`oci:${dir}@${desc.digest}`).resolve()).descriptor.digest, desc.digest);

  assert.deepEqual(await store.fetchBlob(image.configDesc), image.config);
  assert.deepEqual(await store.fetchBlob(desc), image.manifest);
  for (const [start, end] of [[0, 1], [0, image.layer.length], [image.layer.length - 1, image.layer.length], [12_345, 23_456]] as const) {
    assert.deepEqual(await store.fetchRange(image.layerDesc, start, end), image.layer.subarray(start, end));
  }
  await assert.rejects(store.fetchRange(image.layerDesc, 0, image.layer.length + 1), RangeError);
  const chunks: Buffer[] = [];
  for await (const chunk of await store.openBlob(image.layerDesc)) chunks.push(chunk as Buffer);
  assert.deepEqual(Buffer.concat(chunks), image.layer);
  assert.equal(await store.hasBlob(image.layerDesc), true);
  assert.equal(await store.hasBlob(describe('x', Buffer.from('absent'))), false);
  await assert.rejects(store.fetchBlob(describe('x', Buffer.from('absent'))), OciLayoutError);
});

test('corrupt blobs are caught by fetchBlob and openBlob', async (t) => {
  const dir = await tempDir(t);
  const store = new OciLayoutStore(`oci:${dir}`);
  const image = await pushImage(store, 'amd64', 2);
  const path = join(dir, 'blobs/sha256', image.layerDesc.digest.slice(7));
  const corrupt = Buffer.from(image.layer);
  corrupt[100] ^= 1;
  await writeFile(path, corrupt);
  await assert.rejects(store.fetchBlob(image.layerDesc), (err: unknown) => err instanceof ContentVerificationError && err.kind === 'digest');
  const stream = await store.openBlob(image.layerDesc);
  await assert.rejects(
    (async () => {
      for await (const chunk of stream) void chunk;
    })(),
    ContentVerificationError,
  );
  await writeFile(path, corrupt.subarray(1));
  await assert.rejects(store.fetchRange(image.layerDesc, 0, 10), (err: unknown) => err instanceof ContentVerificationError && err.kind === 'size');
  assert.equal(await store.hasBlob(image.layerDesc), false, 'a blob of the wrong size does not count');
});

test('pushBlob refuses content that does not match the descriptor and leaves nothing behind', async (t) => {
  const dir = await tempDir(t);
  const store = new OciLayoutStore(`oci:${dir}`);
  const good = Buffer.from('good content');
  const bad = Buffer.from('evil content');
  const desc = describe('application/octet-stream', good);
  await assert.rejects(store.pushBlob(desc, { bytes: bad }), ContentVerificationError);
  await assert.rejects(store.pushBlob(desc, { stream: async () => Readable.from([bad]) }), ContentVerificationError);
  const file = join(dir, 'src.bin');
  await writeFile(file, Buffer.concat([good, Buffer.from('!')]));
  await assert.rejects(store.pushBlob(desc, { path: file }), (err: unknown) => err instanceof ContentVerificationError && err.kind === 'size');
  assert.equal(await store.hasBlob(desc), false);
  assert.deepEqual(await readdir(join(dir, 'blobs/sha256')), []);
  await writeFile(file, good);
  await store.pushBlob(desc, { path: file });
  assert.deepEqual(await store.fetchBlob(desc), good);
});

test('pushManifest moves a tag and keeps other tags; digest references push untagged', async (t) => {
  const dir = await tempDir(t);
  const v1 = new OciLayoutStore(`oci:${dir}:v1`);
  const first = await pushImage(v1, 'amd64', 3);
  const d1 = await v1.pushManifest(MEDIA_TYPE.ociManifest, first.manifest);
  const second = await pushImage(v1, 'amd64', 4);
  const d2 = await new OciLayoutStore(`oci:${dir}:v2`).pushManifest(MEDIA_TYPE.ociManifest, second.manifest);
  const d1b = await v1.pushManifest(MEDIA_TYPE.ociManifest, second.manifest);
  assert.equal(d1b.digest, d2.digest);
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as ImageIndex;
  assert.deepEqual(
    index.manifests.map((m) => [m.annotations?.[REF_NAME_ANNOTATION], m.digest]),
    [
      ['v2', d2.digest],
      ['v1', d2.digest],
    ],
  );
  await new OciLayoutStore(`oci:${dir}@${d1.digest}`).pushManifest(MEDIA_TYPE.ociManifest, first.manifest);
  const after = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as ImageIndex;
  assert.equal(after.manifests.length, 3);
  assert.deepEqual(after.manifests[2], d1);
  // Several manifests and no "latest": a tag is required.
  await assert.rejects(new OciLayoutStore(`oci:${dir}`).resolve(), /no image tagged "latest"/);
  await assert.rejects(new OciLayoutStore(`oci:${join(dir, 'missing')}`).resolve(), /not an OCI image layout/);
});

test('resolve goes through nested indexes and same-tag entries by platform', async (t) => {
  const dir = await tempDir(t);
  const byDigest = new OciLayoutStore(`oci:${dir}@sha256:${'0'.repeat(64)}`);
  const amd = await pushImage(byDigest, 'amd64', 5);
  const arm = await pushImage(byDigest, 'arm64', 6);
  const amdDesc = { ...(await byDigest.pushManifest(MEDIA_TYPE.ociManifest, amd.manifest)), platform: { os: 'linux', architecture: 'amd64' } };
  const armDesc = { ...(await byDigest.pushManifest(MEDIA_TYPE.ociManifest, arm.manifest)), platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } };
  const inner = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociIndex, manifests: [amdDesc, armDesc] }));
  const innerDesc = await byDigest.pushManifest(MEDIA_TYPE.ociIndex, inner);
  // An index pointing at an index, tagged "multi".
  const outer = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociIndex, manifests: [innerDesc] }));
  await new OciLayoutStore(`oci:${dir}:multi`).pushManifest(MEDIA_TYPE.ociIndex, outer);

  const multi = new OciLayoutStore(`oci:${dir}:multi`, { platform: parsePlatform('linux/amd64') });
  const pickedAmd = await multi.resolve();
  assert.equal(pickedAmd.descriptor.digest, amdDesc.digest);
  assert.deepEqual(pickedAmd.descriptor.platform, amdDesc.platform);
  assert.equal(pickedAmd.index?.descriptor.digest, innerDesc.digest);
  assert.equal((await multi.resolve({ platform: parsePlatform('linux/arm64') })).descriptor.digest, armDesc.digest);
  await assert.rejects(multi.resolve({ platform: parsePlatform('linux/s390x') }), (err: unknown) => err instanceof PlatformError && /linux\/amd64, linux\/arm64\/v8/.test(err.message));

  // Two index.json entries sharing a tag, told apart by platform.
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as ImageIndex;
  index.manifests.push({ ...amdDesc, annotations: { [REF_NAME_ANNOTATION]: 'both' } }, { ...armDesc, annotations: { [REF_NAME_ANNOTATION]: 'both' } });
  await writeFile(join(dir, 'index.json'), JSON.stringify(index));
  const both = new OciLayoutStore(`oci:${dir}:both`);
  assert.equal((await both.resolve({ platform: parsePlatform('linux/arm64/v8') })).descriptor.digest, armDesc.digest);
  assert.equal((await both.resolve({ platform: parsePlatform('linux/amd64') })).descriptor.digest, amdDesc.digest);
});
