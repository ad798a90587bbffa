// Unit tests of src/cache/wholefile.ts.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { appendFile, readdir, readFile, unlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { CacheError } from '../../src/cache/errors.js';
import { openWholeLayerCache } from '../../src/cache/wholefile.js';
import type { WholeLayerCache } from '../../src/cache/wholefile.js';
import { sha256Digest } from '../../src/util/digest.js';
import { tempDir } from '../helpers/tmp.js';

const HEX = 'dd'.repeat(32);
const LAYER = `sha256:${HEX}`;
const OTHER = `sha256:${'ee'.repeat(32)}`;

async function commitRandom(cache: WholeLayerCache, layerDigest: string, size = 300_000): Promise<Buffer> {
  const content = randomBytes(size);
  const temp = cache.tempPath(layerDigest);
  await writeFile(temp, content);
  await cache.commit(layerDigest, temp, sha256Digest(content));
  assert.equal(existsSync(temp), false, 'the temp file was moved');
  return content;
}

test('whole-layer cache: commit then lookup returns the verified file', async (t) => {
  const root = await tempDir(t);
  const cache = await openWholeLayerCache({ root });
  const path = cache.path(LAYER);
  assert.equal(path, join(root, 'layers', `sha256-${HEX}.erofs`));
  assert.equal(await cache.lookup(LAYER), undefined, 'nothing committed yet');
  assert.notEqual(cache.tempPath(LAYER), cache.tempPath(LAYER), 'temp paths are unique');
  const content = await commitRandom(cache, LAYER);
  assert.equal(await cache.lookup(LAYER), path);
  assert.deepEqual(await readFile(path), content);
  const sidecar = JSON.parse(await readFile(`${path}.meta`, 'utf8')) as unknown;
  assert.deepEqual(sidecar, { layerDigest: LAYER, size: content.length, sha256: sha256Digest(content) });
  // Concurrent lookups share one check; a second instance sees the entry.
  const both = await Promise.all([cache.lookup(LAYER), cache.lookup(LAYER)]);
  assert.deepEqual(both, [path, path]);
  const again = await openWholeLayerCache({ root });
  assert.equal(await again.lookup(LAYER), path);
  // An empty file is a valid entry too.
  await commitRandom(cache, OTHER, 0);
  assert.equal(await cache.lookup(OTHER), cache.path(OTHER));
  assert.deepEqual(
    (await cache.list()).map((e) => [e.layerDigest, e.bytes]),
    [
      [LAYER, content.length],
      [OTHER, 0],
    ],
  );
  assert.deepEqual((await readdir(join(root, 'layers'))).filter((n) => n.startsWith('.')), []);
  assert.equal(cache.damagedEntries, 0);
});

test('whole-layer cache: a damaged file is a miss and is removed', async (t) => {
  const root = await tempDir(t);
  const damaged: string[] = [];
  const cache = await openWholeLayerCache({ root, onDamagedEntry: (info) => damaged.push(info.reason) });
  const path = cache.path(LAYER);

  // One flipped byte.
  await commitRandom(cache, LAYER);
  const bytes = await readFile(path);
  bytes[12_345]! ^= 0x10;
  await writeFile(path, bytes);
  assert.equal(await cache.lookup(LAYER), undefined);
  assert.equal(existsSync(path), false);
  assert.equal(existsSync(`${path}.meta`), false);
  assert.equal(cache.damagedEntries, 1);
  assert.match(damaged[0]!, /hashes to/);

  // Appended bytes (size no longer matches).
  await commitRandom(cache, LAYER);
  await appendFile(path, 'x');
  assert.equal(await cache.lookup(LAYER), undefined);
  assert.equal(existsSync(path), false);
  assert.equal(cache.damagedEntries, 2);

  // A sidecar that is not JSON.
  await commitRandom(cache, LAYER);
  await writeFile(`${path}.meta`, '{not json');
  assert.equal(await cache.lookup(LAYER), undefined);
  assert.equal(existsSync(path), false);
  assert.equal(cache.damagedEntries, 3);

  // A sidecar of another layer.
  const content = await commitRandom(cache, LAYER);
  await writeFile(`${path}.meta`, JSON.stringify({ layerDigest: OTHER, size: content.length, sha256: sha256Digest(content) }));
  assert.equal(await cache.lookup(LAYER), undefined);
  assert.equal(cache.damagedEntries, 4);
});

test('whole-layer cache: a missing sidecar is a miss', async (t) => {
  const root = await tempDir(t);
  const cache = await openWholeLayerCache({ root });
  const path = cache.path(LAYER);
  await commitRandom(cache, LAYER);
  await unlink(`${path}.meta`);
  assert.equal(await cache.lookup(LAYER), undefined);
  assert.equal(existsSync(path), false, 'a file without a sidecar cannot be trusted and is removed');
  // A sidecar alone (a commit in progress) is a miss and is left in place.
  await writeFile(`${path}.meta`, '{}');
  assert.equal(await cache.lookup(LAYER), undefined);
  assert.equal(existsSync(`${path}.meta`), true);
});

test('whole-layer cache: remove, bad commits and stale temp files', async (t) => {
  const root = await tempDir(t);
  const cache = await openWholeLayerCache({ root });
  await commitRandom(cache, LAYER);
  await cache.remove(LAYER);
  assert.equal(await cache.lookup(LAYER), undefined);
  assert.deepEqual(await readdir(join(root, 'layers')), []);
  await cache.remove(LAYER); // absent: fine

  const temp = cache.tempPath(LAYER);
  await writeFile(temp, 'abc');
  await assert.rejects(cache.commit(LAYER, temp, `sha512:${'00'.repeat(64)}`), (err: unknown) => err instanceof CacheError && err.layerDigest === LAYER);
  await assert.rejects(cache.commit(LAYER, join(root, 'missing'), sha256Digest(Buffer.from('abc'))), CacheError);
  assert.throws(() => cache.path('sha256:nothex'), CacheError);
  // A commit with the wrong digest is caught by the first lookup.
  await cache.commit(LAYER, temp, sha256Digest(Buffer.from('abd')));
  assert.equal(await cache.lookup(LAYER), undefined);

  // Opening removes temp files a crashed writer left behind, not fresh ones.
  const stale = cache.tempPath(LAYER);
  const fresh = cache.tempPath(OTHER);
  await writeFile(stale, 'old');
  await writeFile(fresh, 'new');
  const old = new Date(Date.now() - 2 * 3600 * 1000);
  await utimes(stale, old, old);
  await openWholeLayerCache({ root });
  assert.equal(existsSync(stale), false);
  assert.equal(existsSync(fresh), true);
});
