// The user-space EROFS reader against the kernel: images of a tree holding every inode kind (files of edge
// sizes, a directory of thousands of entries, hard links, symlinks, devices, a fifo, a socket, user/trusted/
// security xattrs, shared and long xattrs) built by mkfs.erofs in every layout it writes (flat/inline,
// compact/extended inodes, chunk-based, lz4 and lz4hc, big pclusters, legacy indexes, ztailpacking) must show
// exactly what a loop mount of the same image shows, and the same content as fsck.erofs --extract.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ErofsImage, fileSource, LayeredView } from '../../src/erofs/index.js';
import type { FileSource } from '../../src/erofs/index.js';
import { loopMountErofs, mkfsErofs, snapshotView, withoutLinksAndXattrs, writeEveryKindTree } from '../fixtures/erofs/helpers.js';
import { tempDir } from '../helpers/tmp.js';
import { diffTrees, snapshotTree } from '../helpers/tree.js';

/** mkfs.erofs 1.5 option sets covering every data layout and index format it writes. */
const VARIANTS: Array<{ name: string; args: string[]; layouts: string[]; inodes?: 'compact' | 'extended' }> = [
  { name: 'default (flat, inline tails)', args: [], layouts: ['flat-inline'] },
  { name: 'no inline data', args: ['-Enoinline_data'], layouts: ['flat-plain'] },
  // Compact inodes have 16-bit owners and no mtime of their own: all owners root, all mtimes the build time.
  { name: 'compact inodes', args: ['-Eforce-inode-compact', '--all-root', '-T1000000000'], layouts: ['flat-inline'], inodes: 'compact' },
  { name: 'extended inodes', args: ['-Eforce-inode-extended', '--all-root', '-T1000000000'], layouts: ['flat-inline'], inodes: 'extended' },
  { name: 'chunk-based 4 KiB', args: ['--chunksize=4096'], layouts: ['chunk-based'] },
  { name: 'chunk-based 64 KiB', args: ['--chunksize=65536'], layouts: ['chunk-based'] },
  { name: 'lz4hc', args: ['-zlz4hc'], layouts: ['compressed-compact'] },
  { name: 'lz4', args: ['-zlz4'], layouts: ['compressed-compact'] },
  { name: 'lz4hc big pclusters', args: ['-zlz4hc,9', '-C65536'], layouts: ['compressed-compact'] },
  { name: 'lz4 legacy indexes', args: ['-zlz4', '-Elegacy-compress'], layouts: ['compressed-full'] },
  { name: 'lz4hc ztailpacking', args: ['-zlz4hc', '-Eztailpacking'], layouts: ['compressed-compact'] },
];

describe('EROFS reader vs the kernel', () => {
  let work: string;
  let tree: string;
  const cleanups: Array<() => unknown> = [];

  before(async () => {
    work = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) });
    tree = join(work, 'tree');
    await writeEveryKindTree(tree);
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  for (const [i, variant] of VARIANTS.entries()) {
    test(`${variant.name}: the reader shows what a loop mount shows`, async (t) => {
      const dir = await tempDir(t);
      const image = join(dir, `v${i}.erofs`);
      mkfsErofs(tree, image, variant.args);
      const mnt = join(dir, 'mnt');
      await loopMountErofs(image, mnt);
      const kernel = await snapshotTree(mnt);
      const src: FileSource = await fileSource(image);
      t.after(() => src.close());
      const view = new LayeredView([await ErofsImage.open(src, { label: variant.name })], { raw: true });
      const mine = await snapshotView(view);
      assert.ok(kernel.size > 3000, `the tree has ${kernel.size} entries`);
      assert.deepEqual(diffTrees(kernel, mine), []);
      // The layouts the variant is about are really in the image.
      const seen = new Set<string>();
      const forms = new Set<string>();
      for await (const { node } of view.walk(await view.root(), '.')) {
        if (node.inode.type === 'file' && node.inode.size > 0) seen.add(node.inode.layoutName);
        forms.add(node.inode.extended ? 'extended' : 'compact');
      }
      for (const layout of variant.layouts) assert.ok(seen.has(layout), `${layout} not used (saw ${[...seen].join(', ')})`);
      if (variant.inodes) assert.deepEqual([...forms], [variant.inodes]);
    });
  }

  for (const args of [[], ['-zlz4hc']]) {
    test(`fsck.erofs --extract of a ${args.length ? 'compressed' : 'plain'} image matches the reader`, async (t) => {
      const dir = await tempDir(t);
      const image = join(dir, 'x.erofs');
      mkfsErofs(tree, image, args);
      const out = join(dir, 'extracted');
      execFileSync('fsck.erofs', [`--extract=${out}`, image], { stdio: ['ignore', 'ignore', 'pipe'] });
      // fsck.erofs 1.5 extracts without hard links and xattrs, and its chown after chmod drops setuid/setgid.
      const extracted = withoutLinksAndXattrs(await snapshotTree(out, { skipRoot: true }));
      const src = await fileSource(image);
      t.after(() => src.close());
      const view = new LayeredView([await ErofsImage.open(src)], { raw: true });
      const mine = withoutLinksAndXattrs(await snapshotView(view));
      mine.delete('.');
      assert.deepEqual(diffTrees(extracted, mine), []);
    });
  }
});
