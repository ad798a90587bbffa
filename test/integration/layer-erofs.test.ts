// Tar layer -> EROFS image, checked through the kernel: sample trees packed with GNU tar (plain, gzip,
// zstd) are converted, fsck'd and loop-mounted, and must show exactly the source tree; whiteouts and
// opaque directories must stack under overlayfs like the OCI rules say; conversion is reproducible; a
// rejected layer leaves nothing behind.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { LayerEntryError, layerToErofs } from '../../src/convert/layer.js';
import { fsckErofsImage } from '../../src/convert/mkfs.js';
import { MEDIA_TYPE } from '../../src/oci/types.js';
import { mountErofs, mountOverlay } from '../helpers/mounts.js';
import { tempDir } from '../helpers/tmp.js';
import { diffTrees, snapshotTree, writeSampleTree } from '../helpers/tree.js';

const TAR_ARGS = ['--xattrs', '--xattrs-include=*', '--numeric-owner', '--format=pax'];

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function fileDigest(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** Packs `src` as a layer blob; returns its path, media type and digest. */
async function packLayer(src: string, out: string, compression: 'none' | 'gzip' | 'zstd'): Promise<{ path: string; mediaType: string; digest: string }> {
  const tarPath = `${out}.tar`;
  sh('tar', [...TAR_ARGS, '-C', src, '-cf', tarPath, '.']);
  let path = tarPath;
  let mediaType: string = MEDIA_TYPE.ociLayerTar;
  if (compression === 'gzip') {
    path = `${out}.tar.gz`;
    sh('tar', [...TAR_ARGS, '-C', src, '-czf', path, '.']);
    mediaType = MEDIA_TYPE.ociLayerTarGzip;
  } else if (compression === 'zstd') {
    path = `${out}.tar.zst`;
    sh('zstd', ['-q', '-19', tarPath, '-o', path]);
    mediaType = MEDIA_TYPE.ociLayerTarZstd;
  }
  return { path, mediaType, digest: fileDigest(await readFile(path)) };
}

async function convert(layer: { path: string; mediaType: string; digest: string }, out: string, workDir: string) {
  const res = await layerToErofs(createReadStream(layer.path), layer.mediaType, out, { layerDigest: layer.digest, workDir });
  await fsckErofsImage(out);
  return res;
}

for (const compression of ['none', 'gzip', 'zstd'] as const) {
  test(`a ${compression === 'none' ? 'plain' : compression} tar layer becomes an EROFS image showing exactly the source tree`, async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await writeSampleTree(src);
    const layer = await packLayer(src, join(dir, 'layer'), compression);
    const work = join(dir, 'work');
    const img = join(dir, 'layer.erofs');
    const res = await convert(layer, img, work);
    assert.equal(res.rawPath, img);
    assert.equal(res.compression.detected, compression);
    assert.equal(res.stats.regularFiles, 10);
    assert.equal(res.stats.hardLinks, 1);
    assert.deepEqual(existsSync(work) ? await readdir(work) : [], [], 'staging directory removed');

    const mnt = join(dir, 'mnt');
    await mountErofs(img, mnt, t);
    assert.deepEqual(diffTrees(await snapshotTree(src), await snapshotTree(mnt)), []);
  });
}

function xattrNames(path: string): string[] {
  return sh('getfattr', ['-h', '-m', '-', '--absolute-names', path])
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('#'));
}

/**
 * Applies a layer directory onto `dest` the way OCI says (whiteouts first, then the rest of the tar). A
 * directory the layer lists replaces the attributes of the one below, xattrs included (tar extraction
 * would merge xattrs; overlayfs, like containerd's and Docker's overlay snapshotters, shows the upper
 * directory's own).
 */
function applyOci(layerDir: string, dest: string): void {
  for (const wh of sh('find', [layerDir, '-name', '.wh.*']).split('\n').filter(Boolean)) {
    const rel = wh.slice(layerDir.length + 1);
    const parent = join(dest, rel, '..');
    const name = rel.split('/').pop()!;
    if (name === '.wh..wh..opq') sh('find', [parent, '-mindepth', '1', '-delete']);
    else sh('rm', ['-rf', join(parent, name.slice('.wh.'.length))]);
  }
  execFileSync('sh', ['-c', `tar -C "$1" ${TAR_ARGS.join(' ')} --exclude='.wh.*' -cf - . | tar -C "$2" ${TAR_ARGS.join(' ')} -xpf -`, 'sh', layerDir, dest]);
  for (const d of sh('find', [layerDir, '-type', 'd']).split('\n').filter(Boolean)) {
    const target = join(dest, d.slice(layerDir.length));
    const own = new Set(xattrNames(d));
    for (const name of xattrNames(target)) if (!own.has(name)) sh('setfattr', ['-h', '-x', name, target]);
  }
}

test('whiteouts and opaque directories stack under overlayfs as OCI applies them', async (t) => {
  const dir = await tempDir(t);
  const lower = join(dir, 'lower');
  await writeSampleTree(lower);
  await mkdir(join(lower, 'opq/sub'), { recursive: true });
  await writeFile(join(lower, 'opq/old'), 'hidden by the opaque marker\n');
  await writeFile(join(lower, 'opq/sub/old2'), 'hidden too\n');
  await writeFile(join(lower, 'data/gone'), 'whited out\n');
  await mkdir(join(lower, 'data/gone-dir/inner'), { recursive: true });
  await writeFile(join(lower, 'data/gone-dir/inner/f'), 'whole directory whited out\n');

  const upper = join(dir, 'upper');
  for (const d of ['data', 'opq', 'etc']) await mkdir(join(upper, d), { recursive: true });
  await writeFile(join(upper, 'data/.wh.gone'), '');
  await writeFile(join(upper, 'data/.wh.gone-dir'), '');
  await writeFile(join(upper, 'opq/.wh..wh..opq'), '');
  await writeFile(join(upper, 'opq/new'), 'the only file left in opq\n');
  await writeFile(join(upper, 'etc/config'), 'replaced by the upper layer\n');
  await writeFile(join(upper, 'data/added'), 'added\n');
  // Same mtimes everywhere in the upper layer; directories too (they shadow the lower ones' attributes).
  sh('find', [upper, '-exec', 'touch', '-h', '-d', '2022-02-22T22:22:22Z', '{}', '+']);

  const lowerLayer = await packLayer(lower, join(dir, 'lower-layer'), 'gzip');
  const upperLayer = await packLayer(upper, join(dir, 'upper-layer'), 'gzip');
  const lowerImg = join(dir, 'lower.erofs');
  const upperImg = join(dir, 'upper.erofs');
  await convert(lowerLayer, lowerImg, join(dir, 'work'));
  const up = await convert(upperLayer, upperImg, join(dir, 'work'));
  assert.equal(up.stats.whiteouts, 2);
  assert.equal(up.stats.opaqueDirs, 1);

  // The upper image alone: whiteout devices 0:0 and the opaque xattr.
  const mUpper = join(dir, 'm-upper');
  const mLower = join(dir, 'm-lower');
  await mountErofs(upperImg, mUpper, t);
  await mountErofs(lowerImg, mLower, t);
  for (const name of ['data/gone', 'data/gone-dir']) {
    const st = await lstat(join(mUpper, name));
    assert.ok(st.isCharacterDevice(), name);
    assert.equal(st.rdev, 0, name);
  }
  assert.equal(sh('getfattr', ['--only-values', '-n', 'trusted.overlay.opaque', join(mUpper, 'opq')]), 'y');

  const merged = join(dir, 'merged');
  await mountOverlay([mUpper, mLower], merged, t);
  const expected = join(dir, 'expected');
  await mkdir(expected);
  applyOci(lower, expected);
  applyOci(upper, expected);
  assert.deepEqual(diffTrees(await snapshotTree(expected), await snapshotTree(merged)), []);
  assert.deepEqual(await readdir(join(merged, 'opq')), ['new']);
  assert.equal(existsSync(join(merged, 'data/gone')), false);
});

test('two separate conversions of the same layer give byte-identical images', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await writeSampleTree(src);
  const layer = await packLayer(src, join(dir, 'layer'), 'gzip');
  const a = join(dir, 'a.erofs');
  const b = join(dir, 'b.erofs');
  await convert(layer, a, join(dir, 'work-a'));
  // Let the clock move on: nothing of "now" may reach the image.
  await new Promise((r) => setTimeout(r, 1100));
  await convert(layer, b, join(dir, 'work-b'));
  assert.equal(fileDigest(await readFile(a)), fileDigest(await readFile(b)));
});

test('a rejected layer leaves neither a staging directory nor an image, and nothing outside', async (t) => {
  const dir = await tempDir(t);
  const outside = join(dir, 'outside');
  await mkdir(outside);
  const evilSrc = join(dir, 'evil');
  await mkdir(evilSrc);
  await writeFile(join(evilSrc, 'x'), 'x');
  const tarPath = join(dir, 'evil.tar.gz');
  // GNU tar --transform writes a member named ../outside/escaped.
  sh('tar', ['-C', evilSrc, '--transform=s,^x,../outside/escaped,', '-P', '-czf', tarPath, 'x']);
  const digest = fileDigest(await readFile(tarPath));
  const work = join(dir, 'work');
  const img = join(dir, 'evil.erofs');
  await assert.rejects(
    layerToErofs(createReadStream(tarPath), MEDIA_TYPE.ociLayerTarGzip, img, { layerDigest: digest, workDir: work }),
    (err: unknown) => {
      assert.ok(err instanceof LayerEntryError, String(err));
      assert.equal(err.entryPath, '../outside/escaped');
      assert.match(err.message, new RegExp(`layer ${digest}`));
      assert.doesNotMatch(err.message, /\n/);
      return true;
    },
  );
  assert.equal(existsSync(img), false);
  assert.deepEqual(existsSync(work) ? await readdir(work) : [], []);
  assert.deepEqual(await readdir(outside), []);
});
