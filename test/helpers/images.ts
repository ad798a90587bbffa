// Test helper: the layer trees used by the convert and mount tests (every file kind, a whiteout, an
// opaque directory, a hard link, xattrs, odd owners), and the reference unpacking of OCI layers.
import { execFileSync } from 'node:child_process';
import { chmod, chown, link, mkdir, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pseudoRandomBytes } from '../../src/sample/build.js';

const MTIME = new Date('2023-05-06T07:08:09Z');

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Two layer dirs, bottom first, with OCI whiteouts in the upper one. */
export async function writeTestLayers(root: string): Promise<string[]> {
  const l0 = join(root, 'l0');
  const l1 = join(root, 'l1');
  for (const d of ['bin', 'etc', 'data/nested/deeper', 'opaque/sub', 'dev', 'empty']) await mkdir(join(l0, d), { recursive: true });
  await writeFile(join(l0, 'etc/config'), 'key=value\n');
  await writeFile(join(l0, 'etc/deleted'), 'this file is deleted by the upper layer\n');
  await writeFile(join(l0, 'data/big.bin'), pseudoRandomBytes(3 * 1024 * 1024 + 123, 'convert-test'));
  await writeFile(join(l0, 'data/empty-file'), '');
  await writeFile(join(l0, 'data/nested/deeper/leaf.txt'), 'leaf\n');
  await link(join(l0, 'data/nested/deeper/leaf.txt'), join(l0, 'data/hardlink-to-leaf'));
  await symlink('nested/deeper/leaf.txt', join(l0, 'data/rel-link'));
  await symlink('/etc/config', join(l0, 'data/abs-link'));
  await writeFile(join(l0, 'opaque/old'), 'hidden by the opaque dir\n');
  await writeFile(join(l0, 'opaque/sub/old2'), 'hidden too\n');
  await writeFile(join(l0, 'bin/tool'), '#!/bin/sh\necho tool\n');
  await chmod(join(l0, 'bin/tool'), 0o4755);
  await chown(join(l0, 'etc/config'), 1234, 5678);
  sh('setfattr', ['-n', 'user.comment', '-v', 'hello xattr', join(l0, 'etc/config')]);
  sh('setfattr', ['-n', 'trusted.test', '-v', '0x00ff10', join(l0, 'data/big.bin')]);
  sh('mknod', [join(l0, 'dev/null-like'), 'c', '1', '3']);
  sh('mknod', [join(l0, 'dev/fifo'), 'p']);

  for (const d of ['etc', 'opaque', 'data']) await mkdir(join(l1, d), { recursive: true });
  await writeFile(join(l1, 'etc/.wh.deleted'), '');
  await writeFile(join(l1, 'etc/added'), 'added by the upper layer\n');
  await writeFile(join(l1, 'opaque/.wh..wh..opq'), '');
  await writeFile(join(l1, 'opaque/new'), 'the only file in the opaque dir\n');
  await writeFile(join(l1, 'data/empty-file'), 'replaced in the upper layer\n');
  for (const dir of [l0, l1]) {
    for (const line of sh('find', [dir, '-mindepth', '1', '-depth']).split('\n').filter(Boolean)) {
      sh('touch', ['-h', '-d', MTIME.toISOString(), line]);
    }
    await utimes(dir, MTIME, MTIME);
  }
  return [l0, l1];
}

/** Applies the layers the way an OCI runtime unpacks them, into `dest`. */
export function applyLayersOci(layers: string[], dest: string): void {
  const tarOpts = ['--xattrs', '--xattrs-include=*', '--numeric-owner'];
  for (const layer of layers) {
    for (const wh of sh('find', [layer, '-name', '.wh.*']).split('\n').filter(Boolean)) {
      const rel = wh.slice(layer.length + 1);
      const dir = join(dest, rel, '..');
      const name = rel.split('/').pop()!;
      if (name === '.wh..wh..opq') sh('find', [dir, '-mindepth', '1', '-delete']);
      else sh('rm', ['-rf', join(dir, name.slice('.wh.'.length))]);
    }
    execFileSync('sh', ['-c', `tar -C "$1" ${tarOpts.join(' ')} --exclude='.wh.*' -cf - . | tar -C "$2" ${tarOpts.join(' ')} -xpf -`, 'sh', layer, dest]);
  }
}

