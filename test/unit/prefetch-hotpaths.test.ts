// From recorded block ranges to paths (src/prefetch/hotpaths.ts), on a real mkfs.erofs image: each file's
// data blocks map to that file; a metadata block maps to the inline-only entries in it but not to the files
// with data blocks whose inodes merely share it; first-access order is kept; ranges of unmapped layers and
// past the image are ignored.
import assert from 'node:assert/strict';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { buildErofsImage } from '../../src/convert/mkfs.js';
import { ErofsImage, fileSource } from '../../src/erofs/index.js';
import type { ErofsInode } from '../../src/erofs/index.js';
import { hotPathsOfProfile, LayerByteOwners } from '../../src/prefetch/hotpaths.js';
import type { PrefetchProfile } from '../../src/prefetch/profile.js';
import { tempDir } from '../helpers/tmp.js';

const UUID = '0123abcd-4567-4890-a123-456789abcdef';
const DIGEST = `sha256:${'a'.repeat(64)}`;

async function lookupPath(image: ErofsImage, path: string): Promise<ErofsInode> {
  let inode = await image.root();
  for (const name of path.split('/').filter(Boolean)) {
    const entry = await image.lookup(inode, Buffer.from(name));
    assert.ok(entry, path);
    inode = await image.inode(entry.nid);
  }
  return inode;
}

async function firstDataBlock(image: ErofsImage, inode: ErofsInode): Promise<number> {
  for await (const e of image.extents(inode)) if (e.kind === 'plain' && e.physical !== undefined) return e.physical;
  assert.fail(`nid ${inode.nid} has no block data`);
}

test('block ranges map back to the paths that own them, in first-access order', async (t) => {
  const dir = await tempDir(t);
  const tree = join(dir, 'tree');
  await mkdir(join(tree, 'lib'), { recursive: true });
  await mkdir(join(tree, 'etc'), { recursive: true });
  await writeFile(join(tree, 'lib/big-a'), Buffer.alloc(64 * 1024, 1));
  await writeFile(join(tree, 'lib/big-b'), Buffer.alloc(64 * 1024, 2));
  await writeFile(join(tree, 'etc/small.conf'), 'x = 1\n');
  await symlink('../lib/big-a', join(tree, 'etc/link'));
  const imagePath = join(dir, 'image.erofs');
  await buildErofsImage(tree, imagePath, { uuid: UUID, epoch: 1_700_000_000 });
  const source = await fileSource(imagePath);
  t.after(() => source.close());
  const image = await ErofsImage.open(source);
  const owners = await LayerByteOwners.build(image);
  assert.deepEqual(
    [...owners.paths].sort(),
    ['/', '/etc', '/etc/link', '/etc/small.conf', '/lib', '/lib/big-a', '/lib/big-b'],
  );

  const bigA = await lookupPath(image, '/lib/big-a');
  const bigB = await lookupPath(image, '/lib/big-b');
  const small = await lookupPath(image, '/etc/small.conf');
  const blockOf = (offset: number) => Math.floor(offset / 4096) * 4096;

  // A data block of big-b is big-b's alone.
  assert.deepEqual(owners.pathsIn(await firstDataBlock(image, bigB), 4096).map((p) => [p.path, p.blockData]), [['/lib/big-b', true]]);
  // The metadata block holding small.conf's inode (and its inline data) names small.conf.
  const smallBlock = owners.pathsIn(blockOf(small.offset), 4096);
  assert.ok(smallBlock.some((p) => p.path === '/etc/small.conf' && !p.hasBlockData));

  const profile: PrefetchProfile = {
    image: DIGEST,
    layers: [DIGEST, `sha256:${'b'.repeat(64)}`],
    chunks: [],
    ranges: [
      [0, await firstDataBlock(image, bigB), 8192],
      [1, 0, 1 << 20], // a layer without a map: skipped
      [0, blockOf(small.offset), 4096],
      [0, blockOf(bigA.offset), 4096], // only big-a's inode block: big-a has block data that was not read
      [0, await firstDataBlock(image, bigB), 4096], // again: listed once
      [0, 1 << 30, 4096], // past the image: nothing
    ],
  };
  const hot = hotPathsOfProfile(profile, [owners, undefined]);
  assert.equal(hot[0], '/lib/big-b');
  assert.ok(hot.includes('/etc/small.conf'), JSON.stringify(hot));
  assert.equal(hot.filter((p) => p === '/lib/big-b').length, 1);
  const readA = hotPathsOfProfile({ ...profile, ranges: [[0, await firstDataBlock(image, bigA), 4096]] }, [owners]);
  assert.deepEqual(readA, ['/lib/big-a']);
  if (blockOf(bigA.offset) !== blockOf(small.offset)) assert.ok(!hot.includes('/lib/big-a'), JSON.stringify(hot));
});
