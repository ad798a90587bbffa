// The layered view (overlay semantics over EROFS layers) against the two references: layers applied the OCI
// way (test/helpers/images.ts applyLayersOci) and the kernel's overlayfs over loop-mounted layers. Whiteouts
// are tried in both forms: AUFS ".wh." names as other tools write them, and overlayfs 0:0 character devices
// with the trusted.overlay.opaque xattr as `convert` writes them.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import { ErofsImage, ErofsPathError, fileSource, LayeredView } from '../../src/erofs/index.js';
import { aufsToOverlay, mkfsErofs, overlayMountErofs, snapshotView } from '../fixtures/erofs/helpers.js';
import { applyLayersOci, writeTestLayers } from '../helpers/images.js';
import { tempDir } from '../helpers/tmp.js';
import { diffTrees, snapshotTree } from '../helpers/tree.js';

const MTIME = '2023-05-06T07:08:09Z';

/** Three layers exercising every whiteout rule (bottom first). */
async function writeTrickyLayers(root: string): Promise<string[]> {
  const l = [join(root, 't0'), join(root, 't1'), join(root, 't2')];
  for (const d of ['a/keep', 'b/sub', 'c', 'd', 'e', 'f/deep/er']) await mkdir(join(l[0]!, d), { recursive: true });
  await writeFile(join(l[0]!, 'a/keep/x'), 'x0\n');
  await writeFile(join(l[0]!, 'b/sub/y'), 'y0\n');
  await writeFile(join(l[0]!, 'b/z'), 'z0\n');
  await writeFile(join(l[0]!, 'c/file'), 'c0\n');
  await writeFile(join(l[0]!, 'dfile'), 'becomes a dir\n');
  await writeFile(join(l[0]!, 'e/old'), 'e0\n');
  await writeFile(join(l[0]!, 'f/deep/er/leaf'), 'leaf0\n');
  await writeFile(join(l[0]!, 'gone-then-back'), 'first\n');
  // Layer 1: delete a dir, a file and a name that comes back above; make e opaque; replace dfile by a dir.
  for (const d of ['a', 'b', 'e', 'dfile', 'f/deep']) await mkdir(join(l[1]!, d), { recursive: true });
  await writeFile(join(l[1]!, 'a/.wh.keep'), '');
  await writeFile(join(l[1]!, 'b/.wh.z'), '');
  await writeFile(join(l[1]!, '.wh.gone-then-back'), '');
  await writeFile(join(l[1]!, 'e/.wh..wh..opq'), '');
  await writeFile(join(l[1]!, 'e/new'), 'e1\n');
  await writeFile(join(l[1]!, 'dfile/inside'), 'now a dir\n');
  await writeFile(join(l[1]!, 'f/deep/added'), 'added1\n');
  await writeFile(join(l[1]!, '.wh.c'), '');
  // Layer 2: the deleted name comes back, c comes back as a file, b/sub gains a file, a symlink.
  for (const d of ['b/sub', 'f']) await mkdir(join(l[2]!, d), { recursive: true });
  await writeFile(join(l[2]!, 'gone-then-back'), 'second\n');
  await writeFile(join(l[2]!, 'c'), 'c is a file now\n');
  await writeFile(join(l[2]!, 'b/sub/w'), 'w2\n');
  await writeFile(join(l[2]!, 'f/.wh.deep'), '');
  await symlink('b/sub', join(l[2]!, 'link-to-sub'));
  for (const dir of l) {
    execFileSync('sh', ['-c', `find "$1" -mindepth 1 -exec touch -h -d "$2" {} +; touch -d "$2" "$1"`, 'sh', dir, MTIME]);
  }
  return l;
}

async function buildLayers(t: TestContext, dirs: string[], overlayForm: boolean): Promise<{ images: string[]; view: LayeredView }> {
  const base = await tempDir(t);
  const images: string[] = [];
  for (const [i, d] of dirs.entries()) {
    let src = d;
    if (overlayForm) {
      src = join(base, `src-${i}`);
      execFileSync('cp', ['-a', d, src]);
      aufsToOverlay(src);
      execFileSync('sh', ['-c', `find "$1" -exec touch -h -d "$2" {} +`, 'sh', src, MTIME]);
    }
    const image = join(base, `layer-${i}.erofs`);
    mkfsErofs(src, image, i % 2 === 0 ? [] : ['-zlz4hc']);
    images.push(image);
  }
  const layers: ErofsImage[] = [];
  for (const image of images) {
    const src = await fileSource(image);
    t.after(() => src.close());
    layers.push(await ErofsImage.open(src));
  }
  return { images, view: new LayeredView(layers) };
}

async function ociReference(t: TestContext, dirs: string[]): Promise<Map<string, unknown>> {
  const dest = join(await tempDir(t), 'applied');
  await mkdir(dest);
  applyLayersOci(dirs, dest);
  return snapshotTree(dest, { skipRoot: true });
}

for (const overlayForm of [false, true]) {
  const form = overlayForm ? 'overlayfs whiteouts' : 'AUFS .wh. whiteouts';

  test(`layered view with ${form} equals the layers applied the OCI way (convert's test layers)`, async (t) => {
    const dirs = await writeTestLayers(join(await tempDir(t), 'src'));
    const { view } = await buildLayers(t, dirs, overlayForm);
    const mine = await snapshotView(view);
    mine.delete('.');
    assert.deepEqual(diffTrees((await ociReference(t, dirs)) as never, mine), []);
  });

  test(`layered view with ${form} equals the OCI way and the kernel's overlay (three tricky layers)`, async (t) => {
    const dirs = await writeTrickyLayers(join(await tempDir(t), 'src'));
    const { images, view } = await buildLayers(t, dirs, overlayForm);
    const mine = await snapshotView(view);
    mine.delete('.');
    assert.deepEqual(diffTrees((await ociReference(t, dirs)) as never, mine), []);
    assert.deepEqual(
      [...mine.keys()].sort(),
      [
        'a', 'b', 'b/sub', 'b/sub/w', 'b/sub/y', 'c', 'd', 'dfile', 'dfile/inside', 'e', 'e/new', 'f', 'gone-then-back', 'link-to-sub',
      ].sort(),
    );
    if (overlayForm) {
      const merged = await overlayMountErofs(images, await tempDir(t));
      assert.deepEqual(diffTrees(await snapshotTree(merged, { skipRoot: true }), mine), []);
    }
    // Paths resolve through the merged view, symlinks followed; whited-out names do not resolve.
    const y = await view.resolve('/link-to-sub/y', { followFinal: true });
    assert.equal((await view.read(y, 0, 100)).toString(), 'y0\n');
    await assert.rejects(view.resolve('/a/keep/x'), (e: unknown) => e instanceof ErofsPathError && e.code === 'ENOENT');
    await assert.rejects(view.resolve('/e/old'), (e: unknown) => e instanceof ErofsPathError && e.code === 'ENOENT');
    await assert.rejects(view.resolve('/b/.wh.z'), (e: unknown) => e instanceof ErofsPathError && e.code === 'ENOENT');
    const back = await view.resolve('/gone-then-back');
    assert.equal((await view.read(back, 0, 100)).toString(), 'second\n');
    assert.equal(back.layer, 2);
  });
}

test('one layer shown raw keeps its whiteouts and overlay xattrs', async (t) => {
  const dirs = await writeTrickyLayers(join(await tempDir(t), 'src'));
  const { view } = await buildLayers(t, dirs, true);
  const raw = new LayeredView([view.layers[1]!], { raw: true });
  const c = await raw.resolve('/c');
  assert.equal(c.inode.type, 'char');
  assert.deepEqual(c.inode.rdev, { major: 0, minor: 0 });
  const e = await raw.resolve('/e');
  assert.ok((await raw.xattrs(e)).some((x) => x.name === 'trusted.overlay.opaque' && x.value.toString() === 'y'));
  const merged = await view.resolve('/e');
  assert.ok(!(await view.xattrs(merged)).some((x) => x.name.startsWith('trusted.overlay.')));
});
