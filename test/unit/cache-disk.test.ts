// Unit tests of src/cache/disk.ts.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { test } from 'node:test';
import {
  CHUNK_HEADER_BYTES,
  DEFAULT_CACHE_DIR,
  DEFAULT_DISK_CACHE_MAX_BYTES,
  openDiskChunkCache,
} from '../../src/cache/disk.js';
import type { CorruptEntryInfo } from '../../src/cache/disk.js';
import { CacheError } from '../../src/cache/errors.js';
import type { ChunkKey } from '../../src/cache/types.js';
import { tempDir } from '../helpers/tmp.js';

const HEX_A = 'aa'.repeat(32);
const HEX_B = 'bb'.repeat(32);
const LAYER_A = `sha256:${HEX_A}`;
const LAYER_B = `sha256:${HEX_B}`;
const LAYER_C = `sha512:${'cc'.repeat(64)}`;
const CHUNK = 1000;
const FILE = CHUNK_HEADER_BYTES + CHUNK;

const key = (index: number, layerDigest = LAYER_A): ChunkKey => ({ layerDigest, index });
const chunkPath = (root: string, index: number, hex = HEX_A): string => join(root, 'v1', 'sha256', hex, String(index));

test('disk cache: put/get round trip, has, miss, layout and defaults', async (t) => {
  const root = await tempDir(t);
  const cache = await openDiskChunkCache({ root });
  await cache.whenScanned();
  assert.equal(cache.root, root);
  assert.equal(cache.maxBytes, DEFAULT_DISK_CACHE_MAX_BYTES);
  assert.equal(DEFAULT_CACHE_DIR, '/var/lib/erofs-lazy');
  const data = randomBytes(CHUNK);
  assert.equal(await cache.get(key(7), CHUNK), undefined);
  assert.equal(await cache.has(key(7)), false);
  await cache.put(key(7), data);
  assert.equal(await cache.has(key(7)), true);
  assert.deepEqual(await cache.get(key(7), CHUNK), data);
  assert.equal((await stat(chunkPath(root, 7))).size, FILE);
  // sha512 layers and empty chunks work too.
  await cache.put(key(0, LAYER_C), Buffer.alloc(0));
  assert.deepEqual(await cache.get(key(0, LAYER_C), 0), Buffer.alloc(0));
  assert.ok(existsSync(join(root, 'v1', 'sha512', 'cc'.repeat(64), '0')));
  assert.equal(cache.indexedEntries, 2);
  assert.equal(cache.indexedBytes, FILE + CHUNK_HEADER_BYTES);
  assert.equal(cache.corruptEntries, 0);
});

test('disk cache: invalid keys and lengths are rejected with context', async (t) => {
  const root = await tempDir(t);
  const cache = await openDiskChunkCache({ root });
  await assert.rejects(cache.put({ layerDigest: 'sha256:xyz', index: 0 }, Buffer.alloc(1)), CacheError);
  await assert.rejects(cache.get(key(-1), 1), (err: unknown) => err instanceof CacheError && err.message.includes(LAYER_A));
  await assert.rejects(cache.get(key(1.5), 1), CacheError);
  await assert.rejects(cache.get(key(1), -1), (err: unknown) => err instanceof CacheError && err.index === 1);
  await assert.rejects(openDiskChunkCache({ root, maxBytes: -5 }), CacheError);
});

test('disk cache: damaged or misplaced files are misses, counted and removed', async (t) => {
  const root = await tempDir(t);
  const reported: CorruptEntryInfo[] = [];
  const cache = await openDiskChunkCache({ root, onCorruptEntry: (info) => reported.push(info) });
  await cache.whenScanned();
  const data = randomBytes(CHUNK);
  let expectedCorrupt = 0;

  async function expectDamaged(index: number, what: string, layerDigest = LAYER_A, hex = HEX_A): Promise<void> {
    assert.equal(await cache.get(key(index, layerDigest), CHUNK), undefined, what);
    expectedCorrupt += 1;
    assert.equal(cache.corruptEntries, expectedCorrupt, what);
    assert.equal(existsSync(chunkPath(root, index, hex)), false, `${what}: file removed`);
    assert.equal(reported.at(-1)?.index, index, what);
  }

  // Truncated (torn write).
  await cache.put(key(1), data);
  await truncate(chunkPath(root, 1), FILE - 1);
  await expectDamaged(1, 'truncated');
  // Only a header.
  await cache.put(key(1), data);
  await truncate(chunkPath(root, 1), CHUNK_HEADER_BYTES);
  await expectDamaged(1, 'header only');

  // One flipped data byte, at the start, middle and end.
  for (const at of [0, CHUNK >> 1, CHUNK - 1]) {
    await cache.put(key(2), data);
    const bytes = await readFile(chunkPath(root, 2));
    bytes[CHUNK_HEADER_BYTES + at]! ^= 0x01;
    await writeFile(chunkPath(root, 2), bytes);
    await expectDamaged(2, `data byte ${at} flipped`);
  }

  // One flipped header byte, in each field: magic, version, header length, index, length, layer hash, data hash.
  for (const at of [0, 7, 8, 12, 16, 23, 24, 32, 63, 64, CHUNK_HEADER_BYTES - 1]) {
    await cache.put(key(3), data);
    const bytes = await readFile(chunkPath(root, 3));
    bytes[at]! ^= 0x80;
    await writeFile(chunkPath(root, 3), bytes);
    await expectDamaged(3, `header byte ${at} flipped`);
  }

  // A valid file renamed to another index, and one moved into another layer's directory.
  await cache.put(key(4), data);
  await rename(chunkPath(root, 4), chunkPath(root, 5));
  await expectDamaged(5, 'renamed to another index');
  await cache.put(key(6), data);
  await mkdir(join(root, 'v1', 'sha256', HEX_B), { recursive: true });
  await rename(chunkPath(root, 6), chunkPath(root, 6, HEX_B));
  await expectDamaged(6, 'moved to another layer', LAYER_B, HEX_B);

  // Wrong expected length: a miss (the entry cannot be the chunk the verified table describes).
  await cache.put(key(8), data);
  assert.equal(await cache.get(key(8), CHUNK + 1), undefined);
  assert.equal(await cache.get(key(8), CHUNK - 1), undefined);
  assert.equal(cache.corruptEntries, expectedCorrupt + 1);
  assert.equal(existsSync(chunkPath(root, 8)), false);

  // After all that, a fresh put of the same key works again.
  await cache.put(key(3), data);
  assert.deepEqual(await cache.get(key(3), CHUNK), data);
  assert.equal(reported.every((r) => r.reason.length > 0 && r.path.length > 0), true);
});

test('disk cache: eviction keeps the total within maxBytes and drops the least recently used', async (t) => {
  const root = await tempDir(t);
  const maxBytes = 5 * FILE;
  const cache = await openDiskChunkCache({ root, maxBytes });
  await cache.whenScanned();
  const chunks = Array.from({ length: 8 }, () => randomBytes(CHUNK));
  for (let i = 0; i < 5; i++) await cache.put(key(i), chunks[i]!);
  assert.equal(cache.indexedBytes, 5 * FILE);
  assert.equal(cache.evictions, 0);
  // Touch 0 and 1: 2 and 3 become the least recently used.
  assert.ok(await cache.get(key(0), CHUNK));
  assert.ok(await cache.get(key(1), CHUNK));
  await cache.put(key(5), chunks[5]!);
  await cache.put(key(6), chunks[6]!);
  const present = [];
  for (let i = 0; i < 7; i++) if (await cache.has(key(i))) present.push(i);
  assert.deepEqual(present, [0, 1, 4, 5, 6]);
  assert.equal(cache.evictions, 2);
  assert.ok(cache.indexedBytes <= maxBytes);
  const [usage] = await cache.usage();
  assert.ok(usage!.bytes <= maxBytes, `${usage!.bytes} bytes on disk`);
  // Overwriting an existing key does not double-count it.
  await cache.put(key(6), chunks[6]!);
  assert.equal(cache.indexedBytes, 5 * FILE);
  // A chunk that cannot fit on its own is not stored and evicts nothing.
  await cache.put(key(7), randomBytes(maxBytes));
  assert.equal(await cache.has(key(7)), false);
  assert.equal(cache.indexedEntries, 5);
});

test('disk cache: a second instance sees the first one\'s entries, and its scan evicts by mtime', async (t) => {
  const root = await tempDir(t);
  const first = await openDiskChunkCache({ root });
  const chunks = Array.from({ length: 4 }, () => randomBytes(CHUNK));
  for (let i = 0; i < 4; i++) await first.put(key(i), chunks[i]!);
  await first.put(key(0, LAYER_B), chunks[0]!);

  const second = await openDiskChunkCache({ root });
  await second.whenScanned();
  assert.equal(second.indexedEntries, 5);
  assert.equal(second.indexedBytes, 5 * FILE);
  assert.equal(second.scanError, undefined);
  for (let i = 0; i < 4; i++) assert.deepEqual(await second.get(key(i), CHUNK), chunks[i]);

  // A smaller bound on the same directory: the scan evicts by mtime, oldest first, down to 3 entries.
  const base = Date.now() / 1000 - 3600;
  const order = [chunkPath(root, 3), chunkPath(root, 0, HEX_B), chunkPath(root, 1), chunkPath(root, 0), chunkPath(root, 2)];
  for (const [n, path] of order.entries()) await utimes(path, base + n * 10, base + n * 10);
  const third = await openDiskChunkCache({ root, maxBytes: 3 * FILE });
  await third.whenScanned();
  assert.equal(third.indexedEntries, 3);
  assert.equal(third.evictions, 2);
  assert.equal(await third.has(key(3)), false, 'the oldest entry is evicted first');
  assert.equal(await third.has(key(0, LAYER_B)), false);
  for (const i of [0, 1, 2]) assert.equal(await third.has(key(i)), true);
  assert.equal((await third.usage()).reduce((n, u) => n + u.bytes, 0), 3 * FILE);
});

test('disk cache: a hit refreshes the file mtime for other processes', async (t) => {
  const root = await tempDir(t);
  const cache = await openDiskChunkCache({ root });
  await cache.put(key(0), randomBytes(CHUNK));
  const old = new Date(Date.now() - 24 * 3600 * 1000);
  await utimes(chunkPath(root, 0), old, old);
  assert.ok(await cache.get(key(0), CHUNK));
  const mtime = (await stat(chunkPath(root, 0))).mtimeMs;
  assert.ok(Date.now() - mtime < 60_000, `mtime ${new Date(mtime).toISOString()} refreshed`);
});

test('disk cache: concurrent puts of one key leave a valid entry and no temp files', async (t) => {
  const root = await tempDir(t);
  const a = await openDiskChunkCache({ root });
  const b = await openDiskChunkCache({ root });
  const data = randomBytes(64 * 1024);
  const puts: Promise<void>[] = [];
  for (let i = 0; i < 20; i++) puts.push(a.put(key(9), data), b.put(key(9), data));
  await Promise.all(puts);
  assert.deepEqual(await a.get(key(9), data.length), data);
  assert.deepEqual(await b.get(key(9), data.length), data);
  assert.deepEqual(await readdir(join(root, 'v1', 'sha256', HEX_A)), ['9']);
  assert.equal(a.indexedEntries, 1);
  assert.equal(a.indexedBytes, CHUNK_HEADER_BYTES + data.length);
  assert.equal(a.corruptEntries + b.corruptEntries, 0);
});

test('disk cache: puts of one key from several processes while reading never yield bad bytes', async (t) => {
  const root = await tempDir(t);
  const cacheModule = new URL('../../src/cache/disk.js', import.meta.url).href;
  // Every process derives the same 256 KiB chunk from a fixed seed, as real writers of one chunk would.
  const script = `
    import { createHash } from 'node:crypto';
    import { openDiskChunkCache } from ${JSON.stringify(cacheModule)};
    const parts = [];
    for (let i = 0; i < 8192; i++) parts.push(createHash('sha256').update('seed' + i).digest());
    const data = Buffer.concat(parts);
    const cache = await openDiskChunkCache({ root: process.argv[1] });
    for (let i = 0; i < 25; i++) await cache.put({ layerDigest: ${JSON.stringify(LAYER_A)}, index: 11 }, data);
  `;
  const parts = [];
  for (let i = 0; i < 8192; i++) parts.push(createHash('sha256').update(`seed${i}`).digest());
  const data = Buffer.concat(parts);
  const cache = await openDiskChunkCache({ root });
  const run = promisify(execFile);
  const children = Promise.all([1, 2, 3].map(() => run(process.execPath, ['--input-type=module', '-e', script, root])));
  let done = false;
  let hits = 0;
  const reader = (async () => {
    while (!done) {
      const got = await cache.get(key(11), data.length);
      if (got !== undefined) {
        assert.ok(got.equals(data), 'a hit returns exactly the chunk');
        hits += 1;
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  })();
  await children.finally(() => {
    done = true;
  });
  await reader;
  assert.equal(cache.corruptEntries, 0);
  assert.deepEqual(await cache.get(key(11), data.length), data);
  assert.deepEqual(await readdir(join(root, 'v1', 'sha256', HEX_A)), ['11']);
  t.diagnostic(`${hits} hits while writers ran`);
});

test('disk cache: puts racing with removeLayer succeed', async (t) => {
  const root = await tempDir(t);
  const cache = await openDiskChunkCache({ root });
  const data = randomBytes(CHUNK);
  const ops: Promise<void>[] = [];
  for (let i = 0; i < 40; i++) {
    ops.push(cache.put(key(i), data));
    if (i % 10 === 5) ops.push(cache.removeLayer(LAYER_A));
  }
  await Promise.all(ops);
  await cache.put(key(100), data);
  assert.deepEqual(await cache.get(key(100), CHUNK), data);
  const names = await readdir(join(root, 'v1', 'sha256', HEX_A));
  assert.deepEqual(names.filter((n) => n.startsWith('.')), [], 'no temp files left');
});

test('disk cache: removeLayer and usage', async (t) => {
  const root = await tempDir(t);
  const cache = await openDiskChunkCache({ root });
  await cache.whenScanned();
  for (let i = 0; i < 3; i++) await cache.put(key(i), randomBytes(CHUNK));
  for (let i = 0; i < 2; i++) await cache.put(key(i, LAYER_B), randomBytes(CHUNK));
  await cache.put(key(0, LAYER_C), randomBytes(10));
  assert.deepEqual(await cache.usage(), [
    { layerDigest: LAYER_A, bytes: 3 * FILE, chunks: 3 },
    { layerDigest: LAYER_B, bytes: 2 * FILE, chunks: 2 },
    { layerDigest: LAYER_C, bytes: CHUNK_HEADER_BYTES + 10, chunks: 1 },
  ]);
  await cache.removeLayer(LAYER_A);
  assert.equal(existsSync(join(root, 'v1', 'sha256', HEX_A)), false);
  for (let i = 0; i < 3; i++) assert.equal(await cache.has(key(i)), false);
  assert.equal(await cache.has(key(1, LAYER_B)), true);
  assert.equal(cache.indexedEntries, 3);
  assert.equal(cache.indexedBytes, 2 * FILE + CHUNK_HEADER_BYTES + 10);
  assert.deepEqual((await cache.usage()).map((u) => u.layerDigest), [LAYER_B, LAYER_C]);
  await cache.removeLayer(LAYER_A); // absent: fine
  // The layer can be cached again afterwards.
  const again = randomBytes(CHUNK);
  await cache.put(key(0), again);
  assert.deepEqual(await cache.get(key(0), CHUNK), again);
});

test('disk cache: the open scan removes stale temp files and keeps fresh ones', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'v1', 'sha256', HEX_A);
  await mkdir(dir, { recursive: true });
  const stale = join(dir, '.3.tmp-1-abcdef');
  const fresh = join(dir, '.4.tmp-2-abcdef');
  await writeFile(stale, 'x');
  await writeFile(fresh, 'y');
  const old = new Date(Date.now() - 2 * 3600 * 1000);
  await utimes(stale, old, old);
  const cache = await openDiskChunkCache({ root });
  await cache.whenScanned();
  assert.equal(existsSync(stale), false);
  assert.equal(existsSync(fresh), true);
  assert.equal(cache.indexedEntries, 0);
  assert.deepEqual(await cache.usage(), []);
});

/** A hasher like the decode pool's: takes the bytes' memory (detaching the caller's Buffer) and hands it back. */
function detachingHasher(calls: { n: number }): (bytes: Buffer, from: number) => Promise<{ bytes: Buffer; sha256: Uint8Array }> {
  return async (bytes, from) => {
    calls.n += 1;
    const length = bytes.length;
    const moved = structuredClone(bytes.buffer as ArrayBuffer, { transfer: [bytes.buffer as ArrayBuffer] });
    const back = Buffer.from(moved, 0, length);
    return { bytes: back, sha256: createHash('sha256').update(back.subarray(from)).digest() };
  };
}

test('disk cache: get with a hasher that takes the memory returns the bytes; damage is still found', async (t) => {
  const root = await tempDir(t);
  const corrupt: CorruptEntryInfo[] = [];
  const cache = await openDiskChunkCache({ root, onCorruptEntry: (info) => corrupt.push(info) });
  const calls = { n: 0 };
  const hasher = detachingHasher(calls);
  const big = randomBytes(300_000);
  await cache.put(key(1), big);
  const got = await cache.get(key(1), big.length, { hasher });
  assert.ok(got !== undefined && got.equals(big));
  assert.equal(calls.n, 1);
  // A flipped data byte: the hasher's digest disagrees with the header, so it is a miss, counted and removed.
  const path = chunkPath(root, 1);
  const file = await readFile(path);
  file[CHUNK_HEADER_BYTES + 1234]! ^= 1;
  await writeFile(path, file);
  assert.equal(await cache.get(key(1), big.length, { hasher }), undefined);
  assert.equal(cache.corruptEntries, 1);
  assert.equal(corrupt[0]?.reason, 'data does not match its SHA-256');
  assert.equal(existsSync(path), false);
  // A hasher that hands back the wrong bytes or digest never makes a bad entry pass.
  await cache.put(key(2), big);
  const lying = async (bytes: Buffer): Promise<{ bytes: Buffer; sha256: Uint8Array }> => ({ bytes, sha256: Buffer.alloc(32) });
  assert.equal(await cache.get(key(2), big.length, { hasher: lying }), undefined);
  const short = async (bytes: Buffer, from: number): Promise<{ bytes: Buffer; sha256: Uint8Array }> => ({ bytes: bytes.subarray(1), sha256: createHash('sha256').update(bytes.subarray(from)).digest() });
  await cache.put(key(3), big);
  assert.equal(await cache.get(key(3), big.length, { hasher: short }), undefined);
  assert.equal(cache.corruptEntries, 3);
  // A failing hasher is an error of the read (the caller treats it as a miss), not bytes.
  await cache.put(key(4), big);
  await assert.rejects(cache.get(key(4), big.length, { hasher: async () => Promise.reject(new Error('pool closed')) }), CacheError);
  // A header problem is found before the hasher runs.
  calls.n = 0;
  await cache.put(key(5), big);
  assert.equal(await cache.get(key(5, LAYER_A), big.length - 1, { hasher }), undefined);
  assert.equal(calls.n, 0);
});

test('disk cache: put with the caller\'s SHA-256 writes the same file; a wrong one only makes a miss later', async (t) => {
  const root = await tempDir(t);
  const cache = await openDiskChunkCache({ root });
  const data = randomBytes(5 * 1024 * 1024 + 17); // larger than one 512 KiB write
  await cache.put(key(1), data, { sha256: createHash('sha256').update(data).digest() });
  await cache.put(key(2), data);
  const a = await readFile(chunkPath(root, 1));
  const b = await readFile(chunkPath(root, 2));
  assert.equal(a.length, CHUNK_HEADER_BYTES + data.length);
  assert.ok(a.subarray(CHUNK_HEADER_BYTES).equals(data));
  assert.ok(a.subarray(32).equals(b.subarray(32)), 'same layer hash, data hash and data as a put that hashes itself');
  const got = await cache.get(key(1), data.length);
  assert.ok(got !== undefined && got.equals(data));
  await cache.put(key(3), data, { sha256: Buffer.alloc(32, 7) });
  assert.equal(await cache.get(key(3), data.length), undefined);
  assert.equal(cache.corruptEntries, 1);
  // A digest of the wrong length is ignored: the data is hashed instead.
  await cache.put(key(4), data, { sha256: Buffer.alloc(5) });
  assert.ok((await cache.get(key(4), data.length))?.equals(data));
});
