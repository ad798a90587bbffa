// The start-up landmark annotation (src/prefetch/startup.ts): the chunks covering a layer's start-up region,
// clamped to the image; absent or malformed values name no chunk.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { STARTUP_BYTES_ANNOTATION, startupChunks } from '../../src/prefetch/startup.js';
import type { Descriptor } from '../../src/oci/types.js';

const MiB = 1024 * 1024;

function layer(value?: string): Descriptor {
  return {
    mediaType: 'application/vnd.erofs.layer.v1+zstd',
    digest: `sha256:${'a'.repeat(64)}`,
    size: 1,
    ...(value === undefined ? {} : { annotations: { [STARTUP_BYTES_ANNOTATION]: value } }),
  };
}

test('the start-up region names the chunks that cover it, clamped to the image', () => {
  assert.deepEqual(startupChunks(layer(String(9 * MiB)), 100 * MiB, 4 * MiB), [0, 1, 2]);
  assert.deepEqual(startupChunks(layer(String(4 * MiB)), 100 * MiB, 4 * MiB), [0]);
  assert.deepEqual(startupChunks(layer(String(4 * MiB + 1)), 100 * MiB, 4 * MiB), [0, 1]);
  assert.deepEqual(startupChunks(layer(String(1000 * MiB)), 10 * MiB, 4 * MiB), [0, 1, 2], 'never past the image');
  assert.deepEqual(startupChunks(layer('0'), 10 * MiB, 4 * MiB), []);
});

test('no annotation, or a malformed one, names no chunk', () => {
  for (const value of [undefined, '', '-4096', '4096.5', '0x1000', ' 4096', '1e9', '9'.repeat(16)]) {
    assert.deepEqual(startupChunks(layer(value), 100 * MiB, 4 * MiB), [], JSON.stringify(value));
  }
});
