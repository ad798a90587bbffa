// Unit tests of src/cache/memory.ts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createMemoryChunkCache, DEFAULT_MEMORY_CACHE_BYTES } from '../../src/cache/memory.js';
import type { ChunkKey } from '../../src/cache/types.js';

const LAYER = `sha256:${'11'.repeat(32)}`;
const OTHER = `sha256:${'22'.repeat(32)}`;
const key = (index: number, layerDigest = LAYER): ChunkKey => ({ layerDigest, index });
const chunk = (length: number, fill: number): Buffer => Buffer.alloc(length, fill);

test('memory cache stays within its byte bound with chunks of various sizes', () => {
  const cache = createMemoryChunkCache(1000);
  assert.equal(cache.maxSize, 1000);
  cache.set(key(0), chunk(300, 0));
  cache.set(key(1), chunk(200, 1));
  cache.set(key(2), chunk(400, 2));
  assert.equal(cache.size, 900);
  cache.set(key(3), chunk(250, 3)); // 1150 > 1000: the oldest (300 bytes) goes
  assert.equal(cache.size, 850);
  assert.equal(cache.get(key(0)), undefined);
  assert.deepEqual(cache.get(key(3)), chunk(250, 3));
  for (let i = 4; i < 40; i++) {
    cache.set(key(i), chunk(37 * (i % 9) + 1, i));
    assert.ok(cache.size <= 1000, `size ${cache.size} after chunk ${i}`);
  }
  // Same index in another layer is a different key.
  cache.set(key(39, OTHER), chunk(5, 0xee));
  assert.deepEqual(cache.get(key(39, OTHER)), chunk(5, 0xee));
  assert.deepEqual(cache.get(key(39)), chunk(37 * (39 % 9) + 1, 39));
});

test('memory cache evicts least recently used; a get refreshes', () => {
  const cache = createMemoryChunkCache(300);
  cache.set(key(0), chunk(100, 0));
  cache.set(key(1), chunk(100, 1));
  cache.set(key(2), chunk(100, 2));
  assert.ok(cache.get(key(0))); // 1 is now the least recently used
  cache.set(key(3), chunk(100, 3));
  assert.equal(cache.get(key(1)), undefined);
  assert.deepEqual(cache.get(key(0)), chunk(100, 0));
  assert.deepEqual(cache.get(key(2)), chunk(100, 2));
  assert.deepEqual(cache.get(key(3)), chunk(100, 3));
  assert.equal(cache.size, 300);
  assert.equal(cache.entries, 3);
});

test('memory cache does not keep a chunk bigger than its bound', () => {
  const cache = createMemoryChunkCache(100);
  cache.set(key(0), chunk(60, 0));
  cache.set(key(1), chunk(101, 1));
  assert.equal(cache.get(key(1)), undefined);
  assert.deepEqual(cache.get(key(0)), chunk(60, 0), 'an oversize chunk does not evict others');
  cache.set(key(0), chunk(500, 9)); // replacing with an oversize value drops the old one
  assert.equal(cache.get(key(0)), undefined);
  assert.equal(cache.size, 0);
  const exact = createMemoryChunkCache(100);
  exact.set(key(0), chunk(100, 0));
  assert.equal(exact.size, 100);
});

test('memory cache of size 0 keeps nothing; a bad size is rejected', () => {
  const cache = createMemoryChunkCache(0);
  cache.set(key(0), chunk(1, 0));
  assert.equal(cache.get(key(0)), undefined);
  assert.equal(cache.size, 0);
  assert.throws(() => createMemoryChunkCache(-1), /non-negative integer/);
  assert.throws(() => createMemoryChunkCache(1.5), /non-negative integer/);
  assert.equal(createMemoryChunkCache().maxSize, DEFAULT_MEMORY_CACHE_BYTES);
  assert.equal(DEFAULT_MEMORY_CACHE_BYTES, 128 * 1024 * 1024);
});
