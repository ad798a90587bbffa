// The tree snapshot/diff helpers that the conversion tests rely on must see the differences they claim to.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, link, lutimes, mkdir, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../helpers/tmp.js';
import { diffTrees, snapshotTree } from '../helpers/tree.js';

test('snapshotTree records kinds, links and xattrs without following symlinks', async (t) => {
  const dir = await tempDir(t);
  await mkdir(join(dir, 'd'));
  await writeFile(join(dir, 'd/f'), 'content');
  await link(join(dir, 'd/f'), join(dir, 'g'));
  await symlink('/', join(dir, 'to-root')); // must not be walked
  execFileSync('mknod', [join(dir, 'c'), 'c', '4', '64']);
  execFileSync('setfattr', ['-n', 'trusted.x', '-v', '0x00ff', join(dir, 'd')]);
  execFileSync('setfattr', ['-h', '-n', 'trusted.l', '-v', 'v', join(dir, 'to-root')]);
  await lutimes(join(dir, 'to-root'), 5, 1_500_000_000);
  const snap = await snapshotTree(dir);
  assert.deepEqual([...snap.keys()].sort(), ['.', 'c', 'd', 'd/f', 'g', 'to-root']);
  assert.deepEqual(snap.get('g')!.links, ['d/f', 'g']);
  assert.deepEqual(snap.get('d/f')!.links, ['d/f', 'g']);
  assert.equal(snap.get('c')!.rdev, '4:64');
  assert.equal(snap.get('to-root')!.target, '/');
  assert.equal(snap.get('to-root')!.mtime, 1_500_000_000);
  assert.deepEqual(snap.get('to-root')!.xattrs, { 'trusted.l': '0x76' });
  assert.deepEqual(snap.get('d')!.xattrs, { 'trusted.x': '0x00ff' });
  assert.equal(snap.get('d/f')!.sha256, createHash('sha256').update('content').digest('hex'));
  assert.equal(snap.get('d/f')!.size, 7);
});

test('diffTrees reports every kind of difference and nothing for equal trees', async (t) => {
  const dir = await tempDir(t);
  const a = join(dir, 'a');
  await mkdir(a);
  await writeFile(join(a, 'f'), 'one');
  await writeFile(join(a, 'h'), 'linked');
  await link(join(a, 'h'), join(a, 'h2'));
  const before = await snapshotTree(a);
  assert.deepEqual(diffTrees(before, await snapshotTree(a)), []);

  await chmod(join(a, 'f'), 0o4711);
  await writeFile(join(a, 'new'), 'n');
  await unlink(join(a, 'h2'));
  await writeFile(join(a, 'h2'), 'linked'); // same content, no longer the same inode
  execFileSync('setfattr', ['-n', 'user.k', '-v', 'v', join(a, 'h')]);
  const diffs = diffTrees(before, await snapshotTree(a, { skipRoot: true }));
  const text = diffs.join('\n');
  assert.match(text, /^\.: only in first/m);
  assert.match(text, /^f: mode 0644 != 04711$/m);
  assert.match(text, /^new: only in second/m);
  assert.match(text, /^h: hard links \[h, h2\] != \[\]$/m);
  assert.match(text, /^h: xattr user\.k \(none\) != 0x76$/m);
});
