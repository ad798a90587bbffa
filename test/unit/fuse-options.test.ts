// LayerFilesystem without mounting: the libfuse option list it builds, option validation, and the
// checks on layer sources (names and sizes) done before anything reaches the kernel.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatFuseOptions, LayerFilesystem } from '../../src/fuse/index.js';
import type { LayerFileSource } from '../../src/reader/types.js';

function source(name: string, size: number): LayerFileSource {
  return { name, size, read: async () => Buffer.alloc(0) };
}

test('default mount options: read-only, kernel page cache kept, long cache timeouts, more background requests', () => {
  const fs = new LayerFilesystem([source('a.erofs', 10)]);
  const opts = fs.mountOptions;
  for (const o of ['ro', 'kernel_cache', 'allow_other', 'fsname=erofs-lazy', 'subtype=erofs-lazy', 'entry_timeout=86400', 'attr_timeout=86400', 'negative_timeout=86400', 'max_background=64', 'congestion_threshold=48']) {
    assert.ok(opts.includes(o), `${o} in ${opts.join(',')}`);
  }
  assert.ok(!opts.includes('debug'));
  assert.ok(!opts.includes('auto_cache'), 'kernel_cache, not auto_cache: nothing ever changes');
  assert.equal(formatFuseOptions(opts), `-o${opts.join(',')}`);
});

test('options can be turned off or replaced', () => {
  const fs = new LayerFilesystem([], { allowOther: false, kernelCache: false, cacheTimeoutSec: 5, maxBackground: 0, fsName: 'x', debug: true });
  assert.deepEqual([...fs.mountOptions], ['ro', 'fsname=x', 'subtype=x', 'entry_timeout=5', 'attr_timeout=5', 'negative_timeout=5', 'debug']);
  const raw = new LayerFilesystem([], { rawOptions: [] });
  assert.deepEqual([...raw.mountOptions], []);
  assert.equal(formatFuseOptions(raw.mountOptions), '');
});

test('formatFuseOptions rejects what libfuse would split or misparse, and strings fuse-native would truncate', () => {
  assert.equal(formatFuseOptions(['ro', 'max_read=131072']), '-oro,max_read=131072');
  for (const bad of ['a,b', '', 'fsname=a b', 'x=\\', '-o', 'a=b,c']) {
    assert.throws(() => formatFuseOptions([bad]), /invalid FUSE mount option/, bad);
  }
  assert.throws(() => formatFuseOptions([`fsname=${'a'.repeat(1100)}`]), /fuse-native accepts 1023/);
});

test('invalid option values are refused with the option name', () => {
  assert.throws(() => new LayerFilesystem([], { readTimeoutMs: -1 }), /readTimeoutMs/);
  assert.throws(() => new LayerFilesystem([], { cacheTimeoutSec: 1.5 }), /cacheTimeoutSec/);
  assert.throws(() => new LayerFilesystem([], { readAheadKiB: Number.NaN }), /readAheadKiB/);
});

test('layer sources need distinct, valid file names and integer sizes', () => {
  assert.throws(() => new LayerFilesystem([source('a', 1), source('a', 2)]), /a is used twice/);
  for (const name of ['', '.', '..', 'a/b', 'nul\0']) {
    assert.throws(() => new LayerFilesystem([source(name, 1)]), /not a valid file name/, JSON.stringify(name));
  }
  assert.throws(() => new LayerFilesystem([source('x'.repeat(256), 1)]), /longer than 255 bytes/);
  assert.throws(() => new LayerFilesystem([source('a', -1)]), /invalid size -1/);
  assert.throws(() => new LayerFilesystem([source('a', 0.5)]), /invalid size 0.5/);
  assert.doesNotThrow(() => new LayerFilesystem([source('x'.repeat(255), 0)]));
});

test('an unmounted filesystem has no paths and unmount() is a no-op', async () => {
  const fs = new LayerFilesystem([source('a', 1)]);
  assert.equal(fs.mountpoint, undefined);
  assert.throws(() => fs.pathOf('a'), /not mounted/);
  await fs.unmount();
  assert.deepEqual(fs.stats(), { reads: 0, bytesRead: 0, readErrors: 0, maxReadLength: 0, readsInFlight: 0, maxReadsInFlight: 0 });
});
