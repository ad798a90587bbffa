// Tests of src/reader/lazylayer: byte-exact reads against the raw image, request coalescing, single flight,
// bounded requests in flight, integrity failures (never served, never cached), deadlines and retries with a
// hanging or failing registry, cached reads while the registry is down, disk cache reuse, prefetch and close.
// Blobs are built with the real encoder; the registry is an in-test fetcher over the blob bytes.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { openDiskChunkCache } from '../../src/cache/disk.js';
import { createMemoryChunkCache } from '../../src/cache/memory.js';
import type { ChunkKey, DiskChunkCache, MemoryChunkCache } from '../../src/cache/types.js';
import { IntegrityError, loadChunkTable, SeekableFormatError } from '../../src/chunktable/index.js';
import type { ChunkTable } from '../../src/chunktable/index.js';
import { RegistryError } from '../../src/fetch/errors.js';
import type { Descriptor } from '../../src/oci/types.js';
import {
  ChunkFetchError,
  DecodePool,
  InlineDecoder,
  LayerClosedError,
  LazyLayer,
  openLazyLayer,
  ReadDeadlineError,
  RequestTimeoutError,
} from '../../src/reader/index.js';
import type { LazyLayerOptions, RangeFetcher } from '../../src/reader/index.js';
import { tempDir } from '../helpers/tmp.js';
import { assembleBlob, compressFrame, encodeInMemory, makeImage, memoryReader, prng, randInt } from '../fixtures/chunktable/helpers.js';

const KiB = 1024;

/** Map-backed memory cache; `capacity` 0 keeps nothing (every read misses memory). */
class FakeMemory implements MemoryChunkCache {
  readonly map = new Map<string, Buffer>();
  constructor(readonly capacity = Number.POSITIVE_INFINITY) {}
  static key(k: ChunkKey): string {
    return `${k.layerDigest}#${k.index}`;
  }
  get(key: ChunkKey): Buffer | undefined {
    return this.map.get(FakeMemory.key(key));
  }
  set(key: ChunkKey, data: Buffer): void {
    if (this.map.size < this.capacity) this.map.set(FakeMemory.key(key), data);
  }
  get size(): number {
    let total = 0;
    for (const b of this.map.values()) total += b.length;
    return total;
  }
  get maxSize(): number {
    return this.capacity;
  }
}

/** Map-backed disk cache that copies on put/get like a real one. */
class FakeDisk implements DiskChunkCache {
  readonly map = new Map<string, Buffer>();
  gets = 0;
  readonly root = '/nonexistent';
  readonly maxBytes = Number.POSITIVE_INFINITY;
  readonly corruptEntries = 0;
  async get(key: ChunkKey, expectedLength: number): Promise<Buffer | undefined> {
    this.gets++;
    const data = this.map.get(FakeMemory.key(key));
    return data && data.length === expectedLength ? Buffer.from(data) : undefined;
  }
  async put(key: ChunkKey, data: Buffer): Promise<void> {
    this.map.set(FakeMemory.key(key), Buffer.from(data));
  }
  async has(key: ChunkKey): Promise<boolean> {
    return this.map.has(FakeMemory.key(key));
  }
  async removeLayer(layerDigest: string): Promise<void> {
    for (const k of [...this.map.keys()]) if (k.startsWith(`${layerDigest}#`)) this.map.delete(k);
  }
}

function econnrefused(): Error {
  return Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5000'), { code: 'ECONNREFUSED' });
}

function httpError(status: number): RegistryError {
  return new RegistryError({ operation: 'fetch range', url: 'http://127.0.0.1:5000/v2/x/blobs/sha256:0', status });
}

/** The in-test registry: serves blob ranges, records requests, and can fail, hang, delay or flip bytes. */
class FakeRegistry {
  readonly requests: Array<{ start: number; end: number }> = [];
  active = 0;
  maxActive = 0;
  abortedSignals = 0;
  /** Errors thrown by the next requests, in order. */
  failNext: Array<() => Error> = [];
  /** When set, every request fails with it. */
  down: (() => Error) | undefined;
  /** Never settle (and ignore the signal). */
  hang = false;
  delayMs = 0;
  /** Blob offsets whose byte is flipped in answers; `flipTimes` limits how many answers are altered. */
  flipAt: number | undefined;
  flipTimes = Number.POSITIVE_INFINITY;

  constructor(readonly blob: Buffer) {}

  readonly fetch: RangeFetcher = async (start, end, signal) => {
    this.requests.push({ start, end });
    signal.addEventListener('abort', () => this.abortedSignals++, { once: true });
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      if (this.hang) await new Promise<never>(() => undefined);
      if (this.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.delayMs));
      const failure = this.failNext.shift();
      if (failure) throw failure();
      if (this.down) throw this.down();
      const out = Buffer.from(this.blob.subarray(start, end));
      if (this.flipAt !== undefined && this.flipAt >= start && this.flipAt < end && this.flipTimes > 0) {
        this.flipTimes--;
        out[this.flipAt - start]! ^= 0xff;
      }
      return out;
    } finally {
      this.active--;
    }
  };
}

interface Fixture {
  image: Buffer;
  blob: Buffer;
  desc: Descriptor;
  table: ChunkTable;
}

const fixtures = new Map<string, Promise<Fixture>>();

/** An encoded image (cached per parameters so each test file encodes each layout once). */
function fixture(size: number, chunkSize: number, seed = 7): Promise<Fixture> {
  const key = `${size}/${chunkSize}/${seed}`;
  let f = fixtures.get(key);
  if (!f) {
    f = (async () => {
      const image = makeImage(size, seed);
      const { blob, desc } = await encodeInMemory(image, { chunkSize });
      const table = await loadChunkTable(desc, async (s, e) => Buffer.from(blob.subarray(s, e)));
      return { image, blob, desc, table };
    })();
    fixtures.set(key, f);
  }
  return f;
}

const inline = new InlineDecoder();

interface Setup {
  layer: LazyLayer;
  registry: FakeRegistry;
  memory: MemoryChunkCache;
  disk: DiskChunkCache | undefined;
  logs: string[];
}

function setup(f: Fixture, opts: { options?: LazyLayerOptions; memory?: MemoryChunkCache; disk?: DiskChunkCache; registry?: FakeRegistry } = {}): Setup {
  const registry = opts.registry ?? new FakeRegistry(f.blob);
  const memory = opts.memory ?? new FakeMemory();
  const logs: string[] = [];
  const layer = new LazyLayer({
    descriptor: f.desc,
    table: f.table,
    fetchRange: registry.fetch,
    memory,
    ...(opts.disk ? { disk: opts.disk } : {}),
    options: { decoder: inline, retryInitialDelayMs: 1, retryMaxDelayMs: 5, readaheadChunks: 0, sequentialReadaheadChunks: 0, ...opts.options },
    log: (line) => logs.push(line),
  });
  return { layer, registry, memory, disk: opts.disk, logs };
}

describe('reads', () => {
  test('random reads equal slices of the raw image (boundaries, at U, past U, zero length)', async () => {
    const f = await fixture(100_003, 4 * KiB);
    const U = f.image.length;
    const C = 4 * KiB;
    const { layer } = setup(f, { options: { readaheadChunks: 1 } });
    assert.equal(layer.size, U);
    assert.equal(layer.name, `${f.desc.digest.replace(':', '-')}.erofs`);
    const cases: Array<[number, number]> = [
      [0, 0],
      [0, 1],
      [0, C],
      [C - 1, 2],
      [C - 10, 3 * C + 20],
      [U - 1, 1],
      [U - 5, 100],
      [U, 0],
      [U, 10],
      [U + 1000, 10],
      [0, U],
      [0, U + 10_000],
      [5 * C, C],
    ];
    const rand = prng(11);
    for (let k = 0; k < 200; k++) {
      const off = randInt(rand, U + 50);
      cases.push([off, randInt(rand, 5 * C)]);
    }
    let served = 0;
    for (const [off, len] of cases) {
      const got = await layer.read(off, len);
      const want = f.image.subarray(Math.min(off, U), Math.min(off + len, U));
      assert.equal(got.length, want.length, `length of read(${off}, ${len})`);
      assert.ok(got.equals(want), `bytes of read(${off}, ${len})`);
      served += got.length;
    }
    const stats = layer.stats();
    assert.equal(stats.reads, cases.length);
    assert.equal(stats.readErrors, 0);
    assert.equal(stats.bytesServed, served);
    assert.equal(stats.chunksFetched, f.table.chunkCount);
    assert.equal(stats.fractionFetched, 1);
    assert.equal(stats.verificationFailures, 0);
    assert.equal(stats.lazy, true);
    assert.equal(stats.imageSize, U);
    assert.equal(stats.blobSize, f.blob.length);
  });

  test('reads through the worker decode pool equal the raw image too', async (t) => {
    const f = await fixture(300_000, 64 * KiB, 3);
    const pool = new DecodePool({ workers: 2, inlineMaxChunkBytes: 0 });
    t.after(() => pool.close());
    const { layer } = setup(f, { options: { decoder: pool } });
    const rand = prng(5);
    const reads = Array.from({ length: 40 }, () => [randInt(rand, f.image.length), randInt(rand, 200 * KiB)] as const);
    const results = await Promise.all(reads.map(([off, len]) => layer.read(off, len)));
    reads.forEach(([off, len], k) => assert.ok(results[k]!.equals(f.image.subarray(off, Math.min(off + len, f.image.length)))));
    assert.ok(pool.workerJobs > 0, 'frames went through the worker threads');
  });

  test('an empty image reads as nothing, with no requests', async () => {
    const f = await fixture(0, 4 * KiB);
    const { layer, registry } = setup(f);
    assert.equal(layer.size, 0);
    assert.equal((await layer.read(0, 100)).length, 0);
    assert.equal((await layer.read(10, 0)).length, 0);
    assert.equal(registry.requests.length, 0);
    assert.equal(layer.stats().fractionFetched, 1);
  });

  test('a memory cache that throws on set costs nothing but a log line', async () => {
    const f = await fixture(20_000, 4 * KiB);
    const memory = new FakeMemory();
    memory.set = () => {
      throw new Error('no room');
    };
    const { layer, logs } = setup(f, { memory });
    assert.ok((await layer.read(0, 20_000)).equals(f.image));
    assert.ok(logs.some((l) => /memory cache write failed/.test(l)));
  });

  test('invalid offsets or lengths reject with RangeError and count as read errors', async () => {
    const f = await fixture(20_000, 4 * KiB);
    const { layer, registry } = setup(f);
    await assert.rejects(layer.read(-1, 10), RangeError);
    await assert.rejects(layer.read(1.5, 10), RangeError);
    await assert.rejects(layer.read(0, -3), RangeError);
    assert.equal(layer.stats().readErrors, 3);
    assert.equal(registry.requests.length, 0);
  });
});

describe('coalescing and caches', () => {
  test('a read over k uncached adjacent chunks is one request; cached reads make none', async () => {
    const f = await fixture(100_000, 4 * KiB);
    const C = 4 * KiB;
    const { layer, registry } = setup(f, { options: { maxGapBytes: 0 } });
    // Chunks 2..6 (k = 5).
    const got = await layer.read(2 * C + 100, 4 * C);
    assert.ok(got.equals(f.image.subarray(2 * C + 100, 6 * C + 100)));
    assert.equal(registry.requests.length, 1);
    assert.deepEqual(registry.requests[0], { start: f.table.frameRange(2).start, end: f.table.frameRange(6).end });
    let s = layer.stats();
    assert.equal(s.chunksFetched, 5);
    assert.equal(s.requests, 1);
    assert.equal(s.bytesFetched, f.table.frameRange(6).end - f.table.frameRange(2).start);
    assert.equal(s.memoryHits, 0);

    await layer.read(3 * C, 2 * C);
    assert.equal(registry.requests.length, 1, 'cached chunks need no request');
    s = layer.stats();
    assert.equal(s.memoryHits, 2);

    // Chunks 1..7 with 2..6 cached: two separate one-frame requests (no gap allowed).
    await layer.read(C, 7 * C);
    assert.equal(registry.requests.length, 3);
    assert.deepEqual(registry.requests.slice(1), [
      { start: f.table.frameRange(1).start, end: f.table.frameRange(1).end },
      { start: f.table.frameRange(7).start, end: f.table.frameRange(7).end },
    ]);
  });

  test('a small gap of cached frames is fetched again to save a request', async () => {
    const f = await fixture(100_000, 4 * KiB);
    const C = 4 * KiB;
    const { layer, registry } = setup(f, { options: { maxGapBytes: 1024 * KiB } });
    await layer.read(3 * C, 1);
    await layer.read(2 * C, 3 * C);
    assert.equal(registry.requests.length, 2);
    assert.deepEqual(registry.requests[1], { start: f.table.frameRange(2).start, end: f.table.frameRange(4).end });
  });

  test('requests are split at maxRequestBytes', async () => {
    const f = await fixture(100_000, 4 * KiB);
    const { layer, registry } = setup(f, { options: { maxRequestBytes: 1 } });
    const got = await layer.read(0, 3 * 4 * KiB);
    assert.ok(got.equals(f.image.subarray(0, 12 * KiB)));
    assert.equal(registry.requests.length, 3);
  });

  test('a sequential reader gets the next chunks loaded from the disk cache ahead of it, never fetched ahead', async () => {
    const f = await fixture(100_000, 4 * KiB);
    const C = 4 * KiB;
    const disk = new FakeDisk();
    // Chunks 0..9 on disk already (a first layer over the same disk read them).
    const first = setup(f, { disk });
    await first.layer.read(0, 10 * C);
    await first.layer.flush();
    const { layer, registry } = setup(f, { disk, options: { sequentialReadaheadChunks: 3 } });
    await layer.read(0, 10);
    await layer.read(10, C); // sequential: chunks 2..4 are loaded ahead
    await new Promise((resolve) => setTimeout(resolve, 20));
    const hitsBefore = layer.stats().memoryHits;
    assert.ok((await layer.read(2 * C, 3 * C)).equals(f.image.subarray(2 * C, 5 * C)));
    assert.equal(layer.stats().memoryHits - hitsBefore, 3, 'chunks 2..4 were in memory when read');
    assert.equal(registry.requests.length, 0, 'all from the disk cache');
    // Past what is on disk, nothing goes to the registry ahead of the reader.
    await layer.read(5 * C, 5 * C); // sequential up to chunk 9: 10..12 are not on disk
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(registry.requests.length, 0, 'no registry request ahead of reads');
    assert.ok((await layer.read(10 * C, C)).equals(f.image.subarray(10 * C, 11 * C)));
    assert.equal(registry.requests.length, 1, 'the miss itself');
  });

  test('a long sequential scan (past sequentialScanBytes) gets a window fetched from the registry ahead of it', async () => {
    const f = await fixture(100_000, 4 * KiB);
    const C = 4 * KiB;
    const { layer, registry } = setup(f, { options: { sequentialReadaheadChunks: 1, sequentialScanBytes: 3 * C, sequentialScanWindowBytes: 3 * C } });
    // A first read and one continuing it (a run of 1 chunk, under 3): nothing fetched ahead.
    await layer.read(0, C);
    await layer.read(C, C);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(registry.requests.length, 2);
    // The run reaches 3 chunks: from then on the next 3 chunks are fetched ahead of the reader.
    await layer.read(2 * C, C);
    await layer.read(3 * C, C);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const ahead = registry.requests.length;
    assert.ok(ahead > 4, `requests ${ahead}`);
    assert.ok((await layer.read(4 * C, 3 * C)).equals(f.image.subarray(4 * C, 7 * C)));
    // That read needed no request of its own; the window moved on (7..9).
    const later = registry.requests.slice(ahead);
    assert.ok(later.every((r) => r.start >= f.table.frameRange(7).start), `chunks 4..6 were fetched ahead: ${JSON.stringify(later)}`);
  });

  test('readahead rides along in the same request for a sequential reader, and is then served from memory', async () => {
    const f = await fixture(100_000, 4 * KiB);
    const C = 4 * KiB;
    const { layer, registry } = setup(f, { options: { readaheadChunks: 2 } });
    // A first touch, and a jump elsewhere, fetch only what they need.
    await layer.read(0, 10);
    assert.deepEqual(registry.requests, [f.table.frameRange(0)]);
    await layer.read(10 * C, 10);
    assert.deepEqual(registry.requests.at(-1), f.table.frameRange(10));
    // Reading on where the last read ended (chunk 10 into 11): chunks 12 and 13 ride along.
    await layer.read(10 * C + 10, C);
    assert.equal(registry.requests.length, 3);
    assert.deepEqual(registry.requests[2], { start: f.table.frameRange(11).start, end: f.table.frameRange(13).end });
    assert.equal(layer.stats().chunksFetched, 5);
    const got = await layer.read(12 * C, 2 * C);
    assert.ok(got.equals(f.image.subarray(12 * C, 14 * C)));
    assert.equal(registry.requests.length, 3);
    // The last chunk has nothing after it: no readahead past the end.
    const last = f.table.chunkCount - 1;
    await layer.read(last * C - 10, 10);
    await layer.read(last * C, 1);
    assert.deepEqual(registry.requests.at(-1), f.table.frameRange(last));
  });

  test('memory misses fall back to the disk cache; hits of each tier are counted', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const disk = new FakeDisk();
    const memory = new FakeMemory(0);
    const { layer, registry } = setup(f, { memory, disk });
    await layer.read(0, 8 * KiB);
    await layer.flush();
    assert.equal(registry.requests.length, 1);
    assert.equal(disk.map.size, 2, 'fetched chunks were written to disk');
    const again = await layer.read(0, 8 * KiB);
    assert.ok(again.equals(f.image.subarray(0, 8 * KiB)));
    assert.equal(registry.requests.length, 1);
    const s = layer.stats();
    assert.equal(s.diskHits, 2);
    assert.equal(s.memoryHits, 0);
    assert.equal(s.fractionFetched, 2 / f.table.chunkCount);
  });

  test('a second LazyLayer over the same disk cache reads earlier chunks with zero requests', async () => {
    const f = await fixture(60_000, 4 * KiB);
    const disk = new FakeDisk();
    const first = setup(f, { disk });
    await first.layer.read(0, 30_000);
    await first.layer.flush();
    const second = setup(f, { disk });
    const got = await second.layer.read(100, 29_000);
    assert.ok(got.equals(f.image.subarray(100, 29_100)));
    assert.equal(second.registry.requests.length, 0);
    const s = second.layer.stats();
    assert.equal(s.requests, 0);
    assert.equal(s.diskHits, Math.ceil(30_000 / (4 * KiB)));
    assert.ok(s.fractionFetched > 0);
  });

  test('works with the real memory and disk caches (and reuses the disk cache across layers)', async (t) => {
    const f = await fixture(200_000, 16 * KiB, 9);
    const dir = await tempDir(t);
    const disk = await openDiskChunkCache({ root: join(dir, 'chunks'), maxBytes: 64 * 1024 * 1024 });
    const first = setup(f, { memory: createMemoryChunkCache(1024 * KiB), disk });
    assert.ok((await first.layer.read(0, f.image.length)).equals(f.image));
    await first.layer.flush();
    const second = setup(f, { memory: createMemoryChunkCache(1024 * KiB), disk });
    assert.ok((await second.layer.read(0, f.image.length)).equals(f.image));
    assert.equal(second.registry.requests.length, 0);
    assert.equal(second.layer.stats().diskHits, f.table.chunkCount);
    assert.equal(second.layer.stats().fractionFetched, 1);
  });

  test('with the worker pool: runs decode in workers with their SHA-256 for the disk cache, disk hits are checked there, a damaged entry is refetched', async (t) => {
    const f = await fixture(600_000, 64 * KiB, 12);
    const dir = await tempDir(t);
    const root = join(dir, 'chunks');
    const disk = await openDiskChunkCache({ root, maxBytes: 64 * 1024 * 1024 });
    const pool = new DecodePool({ workers: 2, inlineMaxChunkBytes: 0 });
    t.after(() => pool.close());
    // Requests of several frames (maxGapBytes, readahead), decoded as whole runs.
    const first = setup(f, { memory: createMemoryChunkCache(4 * 1024 * KiB), disk, options: { decoder: pool, readaheadChunks: 2 } });
    assert.ok((await first.layer.read(0, f.image.length)).equals(f.image));
    await first.layer.flush();
    assert.ok(first.registry.requests.some((r) => r.end - r.start > f.table.frameRange(0).end), 'some request carried several frames');
    const jobs = pool.workerJobs;
    // Entries written with the workers' SHA-256 are valid for a plain get.
    for (let i = 0; i < f.table.chunkCount; i++) {
      const data = await disk.get({ layerDigest: f.desc.digest, index: i }, f.table.chunkLength(i));
      assert.ok(data?.equals(f.image.subarray(i * 64 * KiB, i * 64 * KiB + f.table.chunkLength(i))), `disk entry ${i}`);
    }
    // Damage one entry: a new layer (empty memory) reads the rest from disk, hashed in the workers, and refetches it.
    const path = join(root, 'v1', 'sha256', f.desc.digest.slice('sha256:'.length), '3');
    const bytes = await readFile(path);
    bytes[bytes.length - 10]! ^= 0x40;
    await writeFile(path, bytes);
    const second = setup(f, { memory: createMemoryChunkCache(4 * 1024 * KiB), disk, options: { decoder: pool } });
    assert.ok((await second.layer.read(0, f.image.length)).equals(f.image));
    const s = second.layer.stats();
    assert.equal(s.diskHits, f.table.chunkCount - 1);
    assert.equal(s.chunksFetched, 1);
    assert.deepEqual(second.registry.requests, [f.table.frameRange(3)].map(({ start, end }) => ({ start, end })));
    assert.equal(disk.corruptEntries, 1);
    assert.ok(pool.workerJobs >= jobs + f.table.chunkCount, 'disk entries were hashed by the workers');
  });
});

describe('concurrency', () => {
  test('16 concurrent reads of one chunk make one request and all get the right bytes', async () => {
    const f = await fixture(100_000, 16 * KiB);
    const { layer, registry } = setup(f, { disk: new FakeDisk() });
    registry.delayMs = 20;
    const reads = Array.from({ length: 16 }, (_, k) => layer.read(16 * KiB + k * 100, 1000 + k));
    const results = await Promise.all(reads);
    results.forEach((got, k) => assert.ok(got.equals(f.image.subarray(16 * KiB + k * 100, 16 * KiB + k * 100 + 1000 + k))));
    assert.equal(registry.requests.length, 1);
    assert.equal(layer.stats().chunksFetched, 1);
  });

  test('requests in flight never exceed the bound', async () => {
    const f = await fixture(400_000, 4 * KiB);
    const { layer, registry } = setup(f, { options: { maxInflightRequests: 3 } });
    registry.delayMs = 15;
    // Every other chunk, so no two reads share or neighbour a frame.
    const indices = Array.from({ length: 30 }, (_, k) => 2 * k);
    const results = await Promise.all(indices.map((i) => layer.read(i * 4 * KiB, 10)));
    indices.forEach((i, k) => assert.ok(results[k]!.equals(f.image.subarray(i * 4 * KiB, i * 4 * KiB + 10))));
    assert.equal(registry.requests.length, indices.length);
    assert.ok(registry.maxActive <= 3, `max concurrent requests ${registry.maxActive}`);
    assert.equal(registry.maxActive, 3, 'the bound was reached');
    assert.ok(layer.peakInflightRequests <= 3);
  });
});

describe('integrity', () => {
  test('a corrupt frame is never served nor cached; it is refetched once, counted and logged', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const disk = new FakeDisk();
    const memory = new FakeMemory();
    const { layer, registry, logs } = setup(f, { memory, disk });
    const frame = f.table.frameRange(2);
    registry.flipAt = frame.start + 7;
    await assert.rejects(layer.read(2 * 4 * KiB, 100), (err: unknown) => {
      assert.ok(err instanceof IntegrityError, `got ${String(err)}`);
      assert.equal(err.chunkIndex, 2);
      assert.match(err.message, new RegExp(f.desc.digest));
      assert.match(err.message, new RegExp(`\\[${frame.start}, ${frame.end}\\)`));
      return true;
    });
    await layer.flush();
    assert.equal(registry.requests.length, 2, 'one refetch after the integrity failure, no more');
    const s = layer.stats();
    assert.equal(s.verificationFailures, 2);
    assert.equal(s.readErrors, 1);
    assert.equal(s.chunksFetched, 0);
    assert.equal(s.fractionFetched, 0);
    assert.equal(logs.length, 2);
    for (const line of logs) {
      assert.match(line, new RegExp(f.desc.digest));
      assert.match(line, /chunk 2 /);
      assert.match(line, new RegExp(`blob range \\[${frame.start}, ${frame.end}\\)`));
    }
    assert.equal(memory.map.size, 0);
    assert.equal(disk.map.size, 0);

    // The registry serves good bytes again: the next read fetches and succeeds.
    registry.flipAt = undefined;
    const got = await layer.read(2 * 4 * KiB, 100);
    assert.ok(got.equals(f.image.subarray(8 * KiB, 8 * KiB + 100)));
    assert.equal(registry.requests.length, 3);
  });

  test('a frame corrupted once in transit is fetched again and served', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const { layer, registry } = setup(f);
    registry.flipAt = f.table.frameRange(1).start + 20;
    registry.flipTimes = 1;
    const got = await layer.read(0, 3 * 4 * KiB);
    assert.ok(got.equals(f.image.subarray(0, 12 * KiB)));
    const s = layer.stats();
    assert.equal(s.verificationFailures, 1);
    assert.equal(s.retries, 1);
    assert.equal(registry.requests.length, 2);
    assert.deepEqual(registry.requests[1], f.table.frameRange(1));
  });

  test('a frame that hashes right but does not decode is a format error, not retried', async () => {
    const C = 4 * KiB;
    const good = compressFrame(Buffer.alloc(C, 5));
    const wrongSize = compressFrame(Buffer.alloc(C - 1, 6));
    const { blob, desc } = assembleBlob([good, wrongSize, good], 3 * C, C);
    const table = await loadChunkTable(desc, memoryReader(blob));
    const f: Fixture = { image: Buffer.concat([Buffer.alloc(C, 5), Buffer.alloc(C, 0), Buffer.alloc(C, 5)]), blob, desc, table };
    const { layer, registry, logs } = setup(f);
    await assert.rejects(layer.read(C, 10), (err: unknown) => err instanceof SeekableFormatError && err.rule === 17);
    assert.equal(registry.requests.length, 1);
    assert.equal(layer.stats().verificationFailures, 1);
    assert.equal(logs.length, 1);
    assert.ok((await layer.read(2 * C, 10)).equals(Buffer.alloc(10, 5)));
  });

  test('with the worker pool a corrupt frame rejects with IntegrityError too', async (t) => {
    const f = await fixture(200_000, 32 * KiB);
    const pool = new DecodePool({ workers: 2, inlineMaxChunkBytes: 0 });
    t.after(() => pool.close());
    const { layer, registry } = setup(f, { options: { decoder: pool, integrityRetries: 0 } });
    registry.flipAt = f.table.frameRange(3).start + 100;
    await assert.rejects(layer.read(3 * 32 * KiB, 10), IntegrityError);
    assert.equal(layer.stats().verificationFailures, 1);
    assert.equal(registry.requests.length, 1);
  });
});

describe('faults', () => {
  test('a fetcher that never settles cannot hold a read past its deadline', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const { layer, registry } = setup(f, { options: { readDeadlineMs: 300 } });
    registry.hang = true;
    const started = performance.now();
    await assert.rejects(layer.read(0, 10), ReadDeadlineError);
    const elapsed = performance.now() - started;
    assert.ok(elapsed < 5_000, `rejected after ${elapsed} ms`);
    assert.ok(registry.abortedSignals >= 1, "the hanging request's signal was aborted");
    assert.equal(layer.stats().readErrors, 1);
  });

  test('hung requests time out and are retried until the deadline', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const { layer, registry } = setup(f, { options: { readDeadlineMs: 500, requestTimeoutMs: 50 } });
    registry.hang = true;
    await assert.rejects(layer.read(0, 10), (err: unknown) => {
      assert.ok(err instanceof ReadDeadlineError);
      assert.ok(err.cause instanceof RequestTimeoutError, `cause ${String(err.cause)}`);
      return true;
    });
    assert.ok(registry.requests.length >= 2, `${registry.requests.length} requests`);
    assert.ok(layer.stats().retries >= 1);
  });

  test('ECONNREFUSED N times then success: the read succeeds and the retries are counted', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const { layer, registry } = setup(f);
    registry.failNext = [econnrefused, econnrefused, econnrefused];
    const got = await layer.read(5000, 3000);
    assert.ok(got.equals(f.image.subarray(5000, 8000)));
    assert.equal(registry.requests.length, 4);
    const s = layer.stats();
    assert.equal(s.retries, 3);
    assert.equal(s.requests, 4);
  });

  test('5xx and 429 are retried', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const { layer, registry } = setup(f);
    registry.failNext = [() => httpError(503), () => httpError(429), () => httpError(500)];
    assert.ok((await layer.read(0, 100)).equals(f.image.subarray(0, 100)));
    assert.equal(layer.stats().retries, 3);
  });

  test('404 fails at once without retries', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const { layer, registry } = setup(f);
    registry.down = () => httpError(404);
    await assert.rejects(layer.read(0, 100), (err: unknown) => {
      assert.ok(err instanceof ChunkFetchError);
      assert.equal(err.transient, false);
      assert.equal(err.attempts, 1);
      assert.ok(err.cause instanceof RegistryError && err.cause.status === 404);
      assert.match(err.message, new RegExp(f.desc.digest));
      assert.match(err.message, /chunk 0/);
      return true;
    });
    assert.equal(registry.requests.length, 1);
    assert.equal(layer.stats().retries, 0);
  });

  test('registry down: cached chunks are served, uncached fail; back up: they succeed without a reset', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const C = 4 * KiB;
    const disk = new FakeDisk();
    const memory = new FakeMemory();
    const { layer, registry } = setup(f, { memory, disk, options: { readDeadlineMs: 250 } });
    await layer.read(0, C); // chunk 0 in memory and on disk
    await layer.read(C, C); // chunk 1 ...
    await layer.flush();
    memory.map.delete(FakeMemory.key({ layerDigest: f.desc.digest, index: 1 })); // ... now only on disk
    registry.down = econnrefused;
    const before = registry.requests.length;
    assert.ok((await layer.read(100, 200)).equals(f.image.subarray(100, 300)));
    assert.ok((await layer.read(C + 100, 200)).equals(f.image.subarray(C + 100, C + 300)));
    assert.equal(registry.requests.length, before, 'cached reads make no request');
    await assert.rejects(layer.read(5 * C, 10), (err: unknown) => {
      assert.ok(err instanceof ReadDeadlineError);
      assert.match(err.message, /ECONNREFUSED/);
      return true;
    });
    registry.down = undefined;
    assert.ok((await layer.read(5 * C, 10)).equals(f.image.subarray(5 * C, 5 * C + 10)));
  });

  test('a short answer from the fetcher is retried, never decoded', async () => {
    const f = await fixture(40_000, 4 * KiB);
    let calls = 0;
    const registry = new FakeRegistry(f.blob);
    const short: RangeFetcher = async (start, end, signal) => {
      calls++;
      const bytes = await registry.fetch(start, end, signal);
      return calls === 1 ? bytes.subarray(0, bytes.length - 1) : bytes;
    };
    const layer = new LazyLayer({
      descriptor: f.desc,
      table: f.table,
      fetchRange: short,
      memory: new FakeMemory(),
      options: { decoder: inline, retryInitialDelayMs: 1, readaheadChunks: 0 },
      log: () => undefined,
    });
    assert.ok((await layer.read(0, 100)).equals(f.image.subarray(0, 100)));
    assert.equal(layer.stats().retries, 1);
    assert.equal(layer.stats().verificationFailures, 0);
  });
});

describe('prefetch, open, close', () => {
  test('prefetch caches chunks (skipping cached ones) so later reads need no request', async () => {
    const f = await fixture(100_000, 4 * KiB);
    const disk = new FakeDisk();
    const { layer, registry } = setup(f, { disk });
    await layer.read(0, 10);
    await layer.prefetch([0, 1, 2, 3, 5, 6, 3]);
    // 1..3 and 5..6, with the small gap (chunk 4) filled: one request; chunk 0 was cached.
    assert.equal(registry.requests.length, 2);
    assert.deepEqual(registry.requests.slice(1), [{ start: f.table.frameRange(1).start, end: f.table.frameRange(6).end }]);
    const got = await layer.read(4 * KiB, 4 * 4 * KiB);
    assert.ok(got.equals(f.image.subarray(4 * KiB, 20 * KiB)));
    assert.equal(registry.requests.length, 2);
    await assert.rejects(layer.prefetch([f.table.chunkCount]), RangeError);
    await layer.flush();
    // A second layer over the same disk: prefetch finds them on disk and fetches nothing.
    const second = setup(f, { disk });
    await second.layer.prefetch([1, 2, 3]);
    assert.equal(second.registry.requests.length, 0);
  });

  test('prefetch reports chunks it could not fetch', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const { layer, registry } = setup(f);
    registry.down = () => httpError(404);
    await assert.rejects(layer.prefetch([1, 2]), AggregateError);
  });

  test('openLazyLayer loads the chunk table through the fetcher (with retries)', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const registry = new FakeRegistry(f.blob);
    registry.failNext = [econnrefused];
    const layer = await openLazyLayer({
      descriptor: f.desc,
      fetchRange: registry.fetch,
      memory: new FakeMemory(),
      options: { decoder: inline, retryInitialDelayMs: 1 },
      log: () => undefined,
    });
    assert.equal(layer.table.chunkCount, f.table.chunkCount);
    assert.deepEqual(registry.requests.at(-1), { start: f.table.tableOffset, end: f.blob.length });
    assert.ok((await layer.read(0, 40_000)).equals(f.image));
  });

  test('close fails reads in progress and later ones with LayerClosedError', async () => {
    const f = await fixture(40_000, 4 * KiB);
    const { layer, registry } = setup(f);
    await layer.read(0, 10);
    registry.hang = true;
    const pending = layer.read(3 * 4 * KiB, 10);
    await new Promise((resolve) => setImmediate(resolve));
    await layer.close();
    await assert.rejects(pending, LayerClosedError);
    await assert.rejects(layer.read(0, 10), LayerClosedError);
  });
});

after(async () => {
  await inline.close();
});
