// Prefetch profiles: round trip, strict parsing of hostile documents, per-layer chunk order, merging of
// layers' access logs in global first-access order, and LazyLayer's access log and ordered prefetch.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createMemoryChunkCache } from '../../src/cache/memory.js';
import {
  chunksOfLayer,
  MAX_PROFILE_BYTES,
  parseProfile,
  profileFromLayers,
  PROFILE_MEDIA_TYPE,
  ProfileFormatError,
  serializeProfile,
  type PrefetchProfile,
} from '../../src/prefetch/profile.js';
import { referrersTag } from '../../src/prefetch/artifact.js';
import { RecordingSource } from '../../src/prefetch/recorder.js';
import { BackgroundFetcher } from '../../src/prefetch/background.js';
import { DEFAULT_PREFETCH_CONCURRENCY, InlineDecoder, openLazyLayer } from '../../src/reader/index.js';
import { encodeInMemory, makeImage } from '../fixtures/chunktable/helpers.js';

const A = `sha256:${'a'.repeat(64)}`;
const B = `sha256:${'b'.repeat(64)}`;
const IMAGE = `sha256:${'c'.repeat(64)}`;

test('a profile survives serialize → parse', () => {
  const profile: PrefetchProfile = { image: IMAGE, layers: [A, B], chunks: [[1, 0], [0, 5], [0, 6], [1, 9]], ranges: [] };
  assert.deepEqual(parseProfile(serializeProfile(profile), 'test'), profile);
  assert.equal(JSON.parse(serializeProfile(profile).toString()).ranges, undefined, 'no ranges key when none were recorded');
  const withRanges: PrefetchProfile = { ...profile, ranges: [[1, 0, 4096], [0, 8192, 12288]] };
  assert.deepEqual(parseProfile(serializeProfile(withRanges), 'test'), withRanges);
});

test('hostile or malformed profiles are ProfileFormatErrors naming their origin', () => {
  const good = { mediaType: PROFILE_MEDIA_TYPE, version: 1, image: IMAGE, layers: [A], chunks: [[0, 1]] };
  const cases: Array<[string, unknown]> = [
    ['not an object', [1, 2]],
    ['wrong media type', { ...good, mediaType: 'application/json' }],
    ['future version', { ...good, version: 2 }],
    ['image not a digest', { ...good, image: 'latest' }],
    ['layer not a digest', { ...good, layers: ['sha256:xyz'] }],
    ['chunk entry not a pair', { ...good, chunks: [[0]] }],
    ['negative chunk', { ...good, chunks: [[0, -1]] }],
    ['fractional chunk', { ...good, chunks: [[0, 1.5]] }],
    ['layer index out of range', { ...good, chunks: [[1, 0]] }],
    ['ranges not a list', { ...good, ranges: {} }],
    ['range not a triple', { ...good, ranges: [[0, 4096]] }],
    ['empty range', { ...good, ranges: [[0, 4096, 0]] }],
    ['negative range offset', { ...good, ranges: [[0, -4096, 4096]] }],
    ['range layer out of range', { ...good, ranges: [[1, 0, 4096]] }],
  ];
  for (const [what, doc] of cases) {
    assert.throws(() => parseProfile(Buffer.from(JSON.stringify(doc)), 'file.json'), (err: unknown) => err instanceof ProfileFormatError && err.message.startsWith('file.json: '), what);
  }
  assert.throws(() => parseProfile(Buffer.from('{nope'), 'x'), ProfileFormatError);
  assert.throws(() => parseProfile(Buffer.alloc(MAX_PROFILE_BYTES + 1, 0x20), 'x'), /exceeds/);
});

test('chunksOfLayer keeps first-access order, once per chunk, matching the layer by digest', () => {
  const profile: PrefetchProfile = { image: IMAGE, layers: [A, B, A], chunks: [[0, 3], [1, 1], [2, 0], [0, 3], [2, 7]], ranges: [] };
  assert.deepEqual(chunksOfLayer(profile, A), [3, 0, 7]);
  assert.deepEqual(chunksOfLayer(profile, B), [1]);
  assert.deepEqual(chunksOfLayer(profile, `sha256:${'d'.repeat(64)}`), []);
});

test('profileFromLayers merges access logs by time', () => {
  const profile = profileFromLayers(IMAGE, [
    { layerDigest: A, accessLog: () => [[4, 10], [5, 30]] },
    { layerDigest: B, accessLog: () => [[0, 20], [1, 40]], rangeLog: () => [[0, 4096, 15], [65536, 8192, 35]] },
  ]);
  assert.deepEqual(profile, { image: IMAGE, layers: [A, B], chunks: [[0, 4], [1, 0], [0, 5], [1, 1]], ranges: [[1, 0, 4096], [1, 65536, 8192]] });
});

test('a RecordingSource logs each block once, in first-read order, merging contiguous first reads', async () => {
  const size = 10 * 4096 + 100;
  const reads: Array<[number, number]> = [];
  let now = 0;
  const source = new RecordingSource(
    { name: 'x', size, read: async (offset, length) => (reads.push([offset, length]), Buffer.alloc(length)) },
    () => now++,
  );
  await source.read(8192, 100); // block 2
  await source.read(0, 4096 * 2); // blocks 0-1: new, not contiguous with the last entry's end
  await source.read(4096, 4096 * 3); // block 1 seen; 2 seen; 3 new → starts a new entry (3 follows 2, not 1)
  await source.read(4096 * 4, 10); // block 4 right after 3: merged
  await source.read(4096 * 10, 1000); // last, short block: clamped at the size
  await source.read(size + 5, 10); // past the end: nothing
  assert.deepEqual(source.rangeLog(), [
    [8192, 4096, 0],
    [0, 8192, 1],
    [12288, 8192, 2],
    [40960, 100, 4],
  ]);
  assert.equal(reads.length, 6, 'every read still reaches the source');
});

test('referrersTag follows the OCI referrers tag schema', () => {
  assert.equal(referrersTag(A), `sha256-${'a'.repeat(64)}`);
});

test('a LazyLayer logs first reads in order; prefetch ranks runs by profile order, fills small gaps, keeps no chunk past its cache', async () => {
  // Incompressible 256 KiB chunks: a gap of one frame (256 KiB) is filled, a gap of three (768 KiB) is not.
  const chunk = 256 * 1024;
  const image = makeImage(12 * chunk, 5);
  const { blob, desc } = await encodeInMemory(image, { chunkSize: chunk });
  const requests: Array<[number, number]> = [];
  const layer = await openLazyLayer({
    descriptor: desc,
    fetchRange: async (start, end) => {
      requests.push([start, end]);
      return Buffer.from(blob.subarray(start, end));
    },
    memory: createMemoryChunkCache(64 * chunk),
    options: { readaheadChunks: 0, decoder: new InlineDecoder() },
    log: () => undefined,
  });
  try {
    await layer.read(5 * chunk + 10, 100);
    await layer.read(1 * chunk, 2 * chunk);
    await layer.read(5 * chunk, 10);
    assert.deepEqual(
      layer.accessLog().map(([c]) => c),
      [5, 1, 2],
    );
    const table = layer.table;
    requests.length = 0;
    await layer.prefetch([9, 11, 3]);
    // 9 and 11 are one frame apart: one request for 9..11, first since 9 comes first; 3 is alone.
    assert.deepEqual(requests, [
      [table.frameRange(9).start, table.frameRange(11).end],
      [table.frameRange(3).start, table.frameRange(3).end],
    ]);
    assert.deepEqual(await layer.read(10 * chunk, chunk), image.subarray(10 * chunk, 11 * chunk), 'the filled gap chunk is served');
    assert.equal(requests.length, 2, 'prefetched chunks are served from memory');
  } finally {
    await layer.close();
  }
});

test('prefetch does not hold on to the chunks it fetched: they are collectable once the memory cache drops them', async () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const chunk = 64 * 1024;
  const count = 48;
  const cacheChunks = 2;
  const image = makeImage(count * chunk, 6);
  const { blob, desc } = await encodeInMemory(image, { chunkSize: chunk });
  const inline = new InlineDecoder();
  const decoded: WeakRef<Buffer>[] = [];
  let lastFrameStart = -1;
  let aliveBeforeLast = -1;
  const layer = await openLazyLayer({
    descriptor: desc,
    fetchRange: async (start, end) => {
      if (start === lastFrameStart) {
        // Every earlier chunk has been fetched, decoded and cached (or evicted) by now. A macrotask boundary
        // first: WeakRef targets stay alive until the current job ends.
        await new Promise((resolve) => setImmediate(resolve));
        gc();
        aliveBeforeLast = decoded.filter((ref) => ref.deref() !== undefined).length;
      }
      return Buffer.from(blob.subarray(start, end));
    },
    memory: createMemoryChunkCache(cacheChunks * chunk),
    options: {
      readaheadChunks: 0,
      maxRequestBytes: 1, // one chunk per request
      decoder: {
        kind: 'inline',
        decode: async (table, index, frame, context) => {
          const data = await inline.decode(table, index, frame, context);
          decoded.push(new WeakRef(data));
          return data;
        },
        close: () => inline.close(),
      },
    },
    log: () => undefined,
  });
  try {
    lastFrameStart = layer.table.frameRange(count - 1).start;
    await layer.prefetch(Array.from({ length: count }, (_, i) => i));
    assert.equal(decoded.length, count);
    assert.ok(aliveBeforeLast >= 0, 'the last chunk was requested last');
    assert.ok(
      aliveBeforeLast <= cacheChunks + DEFAULT_PREFETCH_CONCURRENCY + 1,
      `${aliveBeforeLast} of ${count - 1} decoded chunks alive during prefetch; the cache holds ${cacheChunks}`,
    );
  } finally {
    await layer.close();
  }
});

test('background fetch fills every missing chunk after reads go quiet, pauses for reads, and keeps to its rate', async () => {
  const chunk = 16 * 1024;
  const image = makeImage(20 * chunk, 9);
  const { blob, desc } = await encodeInMemory(image, { chunkSize: chunk });
  let requests = 0;
  const layer = await openLazyLayer({
    descriptor: desc,
    fetchRange: async (start, end) => {
      requests++;
      return Buffer.from(blob.subarray(start, end));
    },
    memory: createMemoryChunkCache(64 * chunk),
    options: { readaheadChunks: 0, decoder: new InlineDecoder() },
    log: () => undefined,
  });
  try {
    await layer.read(0, 10);
    const requestsBefore = requests; // the chunk table and chunk 0
    const blobBytes = layer.table.frameRange(19).end - layer.table.frameRange(0).start;
    const rate = blobBytes * 4; // the whole layer in about 250 ms
    const started = performance.now();
    const filler = new BackgroundFetcher([layer], { bytesPerSecond: rate, quietMs: 100 });
    // Keep reading for a while: the filler must wait.
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setTimeout(r, 50));
      await layer.read(0, 10);
    }
    const requestsWhileBusy = requests;
    while (filler.status.state === 'running') await new Promise((r) => setTimeout(r, 20));
    const elapsed = performance.now() - started;
    assert.equal(filler.status.state, 'done');
    assert.ok(filler.status.pauses >= 1, 'paused while reads came in');
    assert.equal(requestsWhileBusy, requestsBefore, 'no background request while reads were coming in');
    for (let i = 0; i < 20; i++) assert.ok(layer.isPresent(i), `chunk ${i} present`);
    assert.equal(filler.status.chunks, 19);
    // 200 ms of reads + 100 ms quiet + the other 19 chunks at the rate: a lower bound that cannot flake.
    assert.ok(elapsed >= 300 + ((filler.status.bytes / rate) * 1000) * 0.9, `took ${elapsed.toFixed(0)} ms`);
    assert.deepEqual(await layer.read(15 * chunk, chunk), image.subarray(15 * chunk, 16 * chunk));
    await filler.stop();
  } finally {
    await layer.close();
  }
});
