import assert from 'node:assert/strict';
import { test } from 'node:test';
import { summarize } from '../../src/mount/stats.js';
import { zeroReadCounters } from '../../src/reader/types.js';
import type { LayerStats } from '../../src/reader/types.js';

function layer(over: Partial<LayerStats>): LayerStats {
  return { layerDigest: 'sha256:x', imageSize: 0, blobSize: 0, chunkCount: 0, lazy: true, fractionFetched: 0, ...zeroReadCounters(), ...over };
}

test('summarize adds every counter and computes the fetched fraction over lazy layers only', () => {
  const total = summarize([
    layer({ imageSize: 100, blobSize: 80, bytesFetched: 20, requests: 2, diskHits: 3, retries: 1 }),
    layer({ imageSize: 50, blobSize: 40, bytesFetched: 20, requests: 1, memoryHits: 7, verificationFailures: 2 }),
    layer({ imageSize: 10, blobSize: 10, bytesFetched: 10, requests: 1, lazy: false }),
  ]);
  assert.equal(total.imageSize, 160);
  assert.equal(total.blobSize, 130);
  assert.equal(total.bytesFetched, 50);
  assert.equal(total.requests, 4);
  assert.equal(total.diskHits, 3);
  assert.equal(total.memoryHits, 7);
  assert.equal(total.retries, 1);
  assert.equal(total.verificationFailures, 2);
  assert.equal(total.fractionFetched, 40 / 120);
  assert.equal(summarize([]).fractionFetched, 0);
});
