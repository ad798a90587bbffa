// End to end: an image built in the test (two tar+gzip layers with every file kind, a whiteout and an
// opaque directory) is pushed to the real registry, converted with `erofs-lazy convert`, and each new
// blob is checked with the zstd CLI and fsck.erofs; the raw images stacked with loop + overlayfs must
// show exactly the tree that applying the original layers gives.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openImageStore } from '../../src/fetch/index.js';
import type { ImageStore } from '../../src/oci/store.js';
import { MEDIA_TYPE } from '../../src/oci/types.js';
import { buildImageFromDirs } from '../../src/sample/build.js';
import { runCli } from '../helpers/cli.js';
import { mountErofs, mountOverlay } from '../helpers/mounts.js';
import { startRegistry } from '../helpers/registry.js';
import type { TestRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/tmp.js';
import { diffTrees, snapshotTree } from '../helpers/tree.js';
import { applyLayersOci, writeTestLayers } from '../helpers/images.js';

const CHUNK_SIZE = 64 * 1024;

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

async function blobToFile(store: ImageStore, digest: string, size: number, path: string): Promise<void> {
  const bytes = await store.fetchBlob({ mediaType: MEDIA_TYPE.erofsZstd, digest, size });
  await writeFile(path, bytes);
}

describe('erofs-lazy convert against a real registry', () => {
  let registry: TestRegistry;
  let work: string;
  let layers: string[];
  const cleanups: Array<() => Promise<unknown>> = [];

  before(async () => {
    registry = await startRegistry();
    work = await tempDir({ after: (fn: () => unknown) => cleanups.push(async () => fn()) });
    layers = await writeTestLayers(join(work, 'src'));
    const store = openImageStore(`${registry.host}/convert/src:v1`, {});
    await buildImageFromDirs(store, layers, { workDir: work });
    await store.close();
  });
  after(async () => {
    await registry?.stop();
    for (const c of cleanups.reverse()) await c();
  });

  test('converts every layer to seekable EROFS that zstd, fsck.erofs and overlayfs accept', async (t) => {
    const res = await runCli(['convert', `${registry.host}/convert/src:v1`, `${registry.host}/convert/dst:v1`, '--chunk-size', String(CHUNK_SIZE), '--json']);
    assert.equal(res.code, 0, res.stderr);
    const out = JSON.parse(res.stdout) as { manifestDigest: string; layers: Array<{ digest: string; size: number; diffId: string; action: string; chunkCount: number }> };
    assert.equal(out.layers.length, 2);
    assert.ok(out.layers.every((l) => l.action === 'converted-tar'));
    assert.ok(out.layers[0]!.chunkCount > 3 * 1024 * 1024 / CHUNK_SIZE, 'big file spans many chunks');

    const store = openImageStore(`${registry.host}/convert/dst:v1`, {});
    t.after(() => store.close());
    const resolved = await store.resolve();
    assert.equal(resolved.descriptor.digest, out.manifestDigest);
    const config = JSON.parse((await store.fetchBlob(resolved.manifest.config)).toString()) as { rootfs: { diff_ids: string[] } };

    const dir = await tempDir(t);
    const mounted: string[] = [];
    for (const [i, layer] of resolved.manifest.layers.entries()) {
      assert.equal(layer.mediaType, MEDIA_TYPE.erofsZstd);
      const ann = layer.annotations ?? {};
      assert.match(ann['dev.containerd.erofs.zstd.chunk_table_offset'] ?? '', /^(0|[1-9][0-9]*)$/);
      assert.match(ann['dev.containerd.erofs.zstd.chunk_digest'] ?? '', /^sha512:[0-9a-f]{128}$/);
      const blob = join(dir, `layer${i}.blob`);
      const raw = join(dir, `layer${i}.erofs`);
      await blobToFile(store, layer.digest, layer.size, blob);
      sh('zstd', ['-q', '-d', '-f', blob, '-o', raw]);
      const rawDigest = `sha256:${createHash('sha256').update(await readFile(raw)).digest('hex')}`;
      assert.equal(rawDigest, config.rootfs.diff_ids[i], `layer ${i}: diff_id is sha256 of the raw EROFS image`);
      sh('fsck.erofs', [raw]);
      const mnt = join(dir, `m${i}`);
      await mountErofs(raw, mnt, t);
      mounted.push(mnt);
    }
    const merged = join(dir, 'merged');
    await mountOverlay([...mounted].reverse(), merged, t);

    const expected = join(dir, 'expected');
    await mkdir(expected);
    applyLayersOci(layers, expected);
    const differences = diffTrees(await snapshotTree(expected), await snapshotTree(merged));
    assert.deepEqual(differences, []);
  });

  test('conversion is reproducible, and converting a converted image keeps its layers', async () => {
    const a = await runCli(['convert', `${registry.host}/convert/src:v1`, `${registry.host}/convert/again:v1`, '--chunk-size', String(CHUNK_SIZE), '--json']);
    const b = await runCli(['convert', `${registry.host}/convert/src:v1`, `${registry.host}/convert/again:v2`, '--chunk-size', String(CHUNK_SIZE), '--json']);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    const da = JSON.parse(a.stdout) as { manifestDigest: string; layers: Array<{ digest: string; action: string }> };
    const db = JSON.parse(b.stdout) as { manifestDigest: string };
    assert.equal(da.manifestDigest, db.manifestDigest);

    const kept = await runCli(['convert', `${registry.host}/convert/again:v1`, `${registry.host}/convert/kept:v1`, '--json']);
    assert.equal(kept.code, 0, kept.stderr);
    const dk = JSON.parse(kept.stdout) as { manifestDigest: string; layers: Array<{ digest: string; action: string }> };
    assert.deepEqual(dk.layers.map((l) => l.action), ['kept', 'kept']);
    assert.deepEqual(dk.layers.map((l) => l.digest), da.layers.map((l) => l.digest));
  });

  test('converts from and to an oci: layout, with dm-verity', async (t) => {
    const dir = await tempDir(t);
    const toLayout = await runCli(['convert', `${registry.host}/convert/src:v1`, `oci:${join(dir, 'layout')}:seekable`, '--dm-verity', '--json']);
    assert.equal(toLayout.code, 0, toLayout.stderr);
    const report = await runCli(['inspect', `oci:${join(dir, 'layout')}:seekable`, '--json']);
    assert.equal(report.code, 0, report.stderr);
    const r = JSON.parse(report.stdout) as { layers: Array<{ seekable: boolean; annotations: Record<string, string>; chunkTable: { dmVerity: boolean; tableDigestVerified: boolean } }> };
    for (const l of r.layers) {
      assert.equal(l.seekable, true);
      assert.equal(l.chunkTable.dmVerity, true);
      assert.equal(l.chunkTable.tableDigestVerified, true);
      assert.match(l.annotations['dev.containerd.erofs.dmverity.root_digest'] ?? '', /^sha512:[0-9a-f]{128}$/);
    }
  });

  test('inspect fetches only chunk tables, reports plain layers as not seekable, and fails on a forged table digest', async (t) => {
    const conv = await runCli(['convert', `${registry.host}/convert/src:v1`, `${registry.host}/convert/insp:v1`, '--chunk-size', String(CHUNK_SIZE)]);
    assert.equal(conv.code, 0, conv.stderr);
    const res = await runCli(['inspect', `${registry.host}/convert/insp:v1`, '--json']);
    assert.equal(res.code, 0, res.stderr);
    const report = JSON.parse(res.stdout) as { bytesFetched: number; layers: Array<{ size: number; seekable: boolean; chunkTable: { chunkSize: number; chunkCount: number; uncompressedSize: number } }> };
    const total = report.layers.reduce((s, l) => s + l.size, 0);
    assert.ok(report.layers.every((l) => l.seekable && l.chunkTable.chunkSize === CHUNK_SIZE));
    assert.ok(report.bytesFetched > 0 && report.bytesFetched < total / 10, `fetched ${report.bytesFetched} of ${total}`);

    const plain = await runCli(['inspect', `${registry.host}/convert/src:v1`, '--json']);
    assert.equal(plain.code, 0, plain.stderr);
    const p = JSON.parse(plain.stdout) as { layers: Array<{ seekable: boolean; notSeekableReason: string }>; bytesFetched: number };
    assert.ok(p.layers.every((l) => !l.seekable && l.notSeekableReason.includes('tar+gzip')));
    assert.equal(p.bytesFetched, 0);

    // The same blobs under a manifest whose chunk_digest annotation lies.
    const store = openImageStore(`${registry.host}/convert/insp:forged`, {});
    t.after(() => store.close());
    const good = await openImageStore(`${registry.host}/convert/insp:v1`, {}).resolve();
    const forged = structuredClone(good.manifest);
    forged.layers[1]!.annotations!['dev.containerd.erofs.zstd.chunk_digest'] = `sha512:${'ab'.repeat(64)}`;
    await store.pushManifest(MEDIA_TYPE.ociManifest, Buffer.from(JSON.stringify(forged)));
    const bad = await runCli(['inspect', `${registry.host}/convert/insp:forged`]);
    assert.notEqual(bad.code, 0);
    const lines = bad.stderr.trim().split('\n');
    assert.equal(lines.length, 1, bad.stderr);
    assert.match(lines[0]!, /chunk table.*(SHA-512|digest)/i);
  });

  test('convert rejects a layer with an entry that escapes the root', async (t) => {
    const dir = await tempDir(t);
    const evil = join(dir, 'evil');
    await mkdir(join(evil, 'a'), { recursive: true });
    await writeFile(join(evil, 'a', 'x'), 'x');
    // GNU tar --transform writes an entry named ../escaped.
    const store = openImageStore(`${registry.host}/convert/evil:v1`, {});
    t.after(() => store.close());
    const tarPath = join(dir, 'evil.tar.gz');
    execFileSync('sh', ['-c', `tar -C "$1" --transform='s,^a/x,../escaped,' -P -czf "$2" a/x`, 'sh', evil, tarPath]);
    const bytes = await readFile(tarPath);
    const layerDesc = { mediaType: MEDIA_TYPE.ociLayerTarGzip, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}`, size: bytes.length };
    await store.pushBlob(layerDesc, { bytes });
    const rawTar = execFileSync('gzip', ['-dc', tarPath]);
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [`sha256:${createHash('sha256').update(rawTar).digest('hex')}`] } }));
    const configDesc = { mediaType: MEDIA_TYPE.ociConfig, digest: `sha256:${createHash('sha256').update(config).digest('hex')}`, size: config.length };
    await store.pushBlob(configDesc, { bytes: config });
    await store.pushManifest(MEDIA_TYPE.ociManifest, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config: configDesc, layers: [layerDesc] })));
    const res = await runCli(['convert', `${registry.host}/convert/evil:v1`, `${registry.host}/convert/evil-out:v1`]);
    assert.notEqual(res.code, 0);
    assert.match(res.stderr, /escap|\.\./);
    assert.equal(res.stderr.trim().split('\n').length, 1, res.stderr);
  });
});
