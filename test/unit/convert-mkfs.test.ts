// mkfs.erofs / fsck.erofs wrappers: layer UUIDs, build time and mtime handling (incl. mkfs.erofs 1.5
// clamping), reproducible bytes, one-line tool errors.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { buildErofsImage, ErofsToolError, erofsUuidForLayer, fsckErofsImage, newestMtimeSeconds, outputTail } from '../../src/convert/mkfs.js';
import { tempDir } from '../helpers/tmp.js';

const UUID = '0123abcd-4567-4890-a123-456789abcdef';

function dump(args: string[]): string {
  return execFileSync('dump.erofs', args, { encoding: 'utf8', env: { ...process.env, TZ: 'UTC', LC_ALL: 'C' } });
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

test('erofsUuidForLayer is deterministic, RFC 4122 shaped, and differs per digest', () => {
  const a = erofsUuidForLayer(`sha256:${'1'.repeat(64)}`);
  const b = erofsUuidForLayer(`sha256:${'2'.repeat(64)}`);
  assert.equal(a, erofsUuidForLayer(`sha256:${'1'.repeat(64)}`));
  assert.notEqual(a, b);
  for (const u of [a, b]) {
    assert.match(u, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  }
  assert.throws(() => erofsUuidForLayer(''));
});

test('newestMtimeSeconds rounds the newest mtime up to a whole second', async (t) => {
  const dir = await tempDir(t);
  await mkdir(join(dir, 'd'));
  await writeFile(join(dir, 'd/f'), 'x');
  await utimes(join(dir, 'd/f'), 1000, 1_000_000.25);
  await utimes(join(dir, 'd'), 1000, 2000);
  await utimes(dir, 1000, 3000);
  assert.equal(await newestMtimeSeconds(dir), 1_000_001);
  await utimes(join(dir, 'd/f'), 1000, 1_000_000);
  assert.equal(await newestMtimeSeconds(dir), 1_000_000);
});

test('buildErofsImage sets the UUID and the newest mtime as build time, and keeps every mtime', async (t) => {
  const dir = await tempDir(t);
  const src = join(dir, 'src');
  await mkdir(src);
  await writeFile(join(src, 'old'), 'old');
  await writeFile(join(src, 'new'), 'new');
  await utimes(join(src, 'old'), 0, 1_000_000_000);
  await utimes(join(src, 'new'), 0, 1_600_000_000);
  await utimes(src, 0, 1_200_000_000);
  const img = join(dir, 'a.erofs');
  await buildErofsImage(src, img, { uuid: UUID });
  const sb = dump(['-s', img]);
  assert.match(sb, new RegExp(`UUID:\\s+${UUID}`));
  assert.match(sb, /created:\s+Sun Sep 13 12:26:40 2020/); // 1_600_000_000
  assert.match(dump(['--path=/old', img]), /Timestamp: 2001-09-09 01:46:40/);
  assert.match(dump(['--path=/new', img]), /Timestamp: 2020-09-13 12:26:40/);
  await fsckErofsImage(img);

  // The clamping that makes the default necessary: an older build time overwrites newer mtimes.
  const clamped = join(dir, 'clamped.erofs');
  await buildErofsImage(src, clamped, { uuid: UUID, epoch: 1_100_000_000 });
  assert.match(dump(['--path=/new', clamped]), /Timestamp: 2004-11-09 11:33:20/);
  assert.match(dump(['--path=/old', clamped]), /Timestamp: 2001-09-09 01:46:40/);

  // Same tree, same bytes; another UUID, other bytes.
  const again = join(dir, 'again.erofs');
  await buildErofsImage(src, again, { uuid: UUID });
  assert.equal(sha256(await readFile(again)), sha256(await readFile(img)));
  await buildErofsImage(src, again, { uuid: erofsUuidForLayer('sha256:x') });
  assert.notEqual(sha256(await readFile(again)), sha256(await readFile(img)));
});

test('buildErofsImage and fsckErofsImage fail with one line naming the exit code and the tool output', async (t) => {
  const dir = await tempDir(t);
  await assert.rejects(buildErofsImage(join(dir, 'src'), join(dir, 'x.erofs'), { uuid: 'not-a-uuid' }), /invalid UUID/);
  await assert.rejects(
    buildErofsImage(join(dir, 'src'), join(dir, 'x.erofs'), { uuid: '00000000-0000-0000-0000-000000000000' }),
    /invalid UUID/,
  );
  await assert.rejects(buildErofsImage(join(dir, 'missing'), join(dir, 'x.erofs'), { uuid: UUID, epoch: 0 }), (err: unknown) => {
    assert.ok(err instanceof ErofsToolError);
    assert.equal(err.tool, 'mkfs.erofs');
    assert.notEqual(err.exitCode, 0);
    assert.doesNotMatch(err.message, /\n/);
    assert.match(err.message, /mkfs\.erofs failed \(exit \d+\).*No such file or directory/);
    return true;
  });
  const junk = join(dir, 'junk.erofs');
  await writeFile(junk, Buffer.alloc(8192, 0x5a));
  await assert.rejects(fsckErofsImage(junk), (err: unknown) => {
    assert.ok(err instanceof ErofsToolError);
    assert.equal(err.tool, 'fsck.erofs');
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
});

test('outputTail drops progress escapes and keeps the last lines', () => {
  assert.equal(outputTail('mkfs.erofs 1.5\n\x1b[KProcessing a ...\x1b[KBuild completed.\n'), 'mkfs.erofs 1.5 | Processing a ... | Build completed.');
  assert.equal(outputTail('a\nb\nc\nd\n'), 'b | c | d');
});
