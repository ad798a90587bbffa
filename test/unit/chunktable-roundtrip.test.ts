// Round trips through the seekable encoder and every reader: per-frame decoding, range mapping against direct
// slicing, run grouping, whole-blob decoding from files and streams, the sequential path and the zstd CLI.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  buildSeekableDescriptor,
  decodeFrame,
  decodeLayerBlob,
  decodeSeekableBlob,
  decodeSequential,
  encodeSeekableBlob,
  frameFromRun,
  groupFrameRuns,
  loadChunkTable,
  mapImageRange,
  parseSeekableAnnotations,
  seekableLayerDescriptor,
  DEFAULT_CHUNK_SIZE,
} from '../../src/chunktable/index.js';
import type { ChunkTable } from '../../src/chunktable/index.js';
import { tempDir } from '../helpers/tmp.js';
import { CollectingSink, encodeInMemory, makeImage, memoryReader, prng, randInt, streamOf } from '../fixtures/chunktable/helpers.js';

const sha256 = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const MiB = 1024 * 1024;

/** Reads image bytes [off, off+len) through the chunk table, the way a lazy reader does. */
async function readThroughTable(table: ChunkTable, blob: Buffer, off: number, len: number, policy: 'reject' | 'clamp' = 'reject'): Promise<Buffer> {
  const slices = mapImageRange(table, off, len, policy);
  const total = slices.reduce((a, s) => a + (s.hi - s.lo), 0);
  const out = Buffer.alloc(total);
  const runs = groupFrameRuns(table, slices.map((s) => s.index), { maxGapBytes: 1000, maxRequestBytes: 64 * 1024 });
  const decoded = new Map<number, Buffer>();
  for (const run of runs) {
    const bytes = blob.subarray(run.start, run.end);
    for (const index of run.indices) decoded.set(index, decodeFrame(frameFromRun(table, run, bytes, index), index, table));
  }
  for (const s of slices) decoded.get(s.index)!.copy(out, s.outputOffset, s.lo, s.hi);
  return out;
}

const CASES: Array<{ name: string; size: number; chunkSize: number }> = [
  { name: 'empty image', size: 0, chunkSize: 4096 },
  { name: '1-byte image', size: 1, chunkSize: 4096 },
  { name: 'exact multiple of C', size: 4 * 4096, chunkSize: 4096 },
  { name: 'partial last chunk', size: 3 * 1024 + 17, chunkSize: 1024 },
  { name: 'C = 1 on a small image', size: 300, chunkSize: 1 },
  { name: 'odd chunk size', size: 100_000, chunkSize: 7777 },
  { name: 'multi-MiB image at 1 MiB chunks', size: 5 * MiB + 12345, chunkSize: MiB },
  { name: 'multi-MiB image at the default chunk size', size: 9 * MiB + 1, chunkSize: DEFAULT_CHUNK_SIZE },
];

for (const c of CASES) {
  test(`round trip: ${c.name} (U=${c.size}, C=${c.chunkSize})`, async (t) => {
    const image = makeImage(c.size, c.size + c.chunkSize);
    const { blob, result, desc } = await encodeInMemory(image, { chunkSize: c.chunkSize }, 3001);
    assert.equal(result.uncompressedSize, c.size);
    assert.equal(result.chunkCount, c.size === 0 ? 0 : Math.ceil(c.size / c.chunkSize));
    assert.equal(result.diffId, sha256(image));
    assert.equal(result.blobDigest, sha256(blob));
    assert.equal(result.blobSize, blob.length);
    assert.equal(result.blobSize, result.chunkTableOffset + 8 + 23 + result.chunkCount * 72);

    const table = await loadChunkTable(desc, memoryReader(blob));
    assert.equal(table.uncompressedSize, c.size);
    assert.equal(table.chunkCount, result.chunkCount);
    assert.equal(table.verifiable, true);
    // Every frame on its own.
    for (let i = 0; i < table.chunkCount; i++) {
      const { start, end } = table.frameRange(i);
      const data = decodeFrame(blob.subarray(start, end), i, table);
      assert.equal(data.length, table.chunkLength(i));
      assert.ok(data.equals(image.subarray(i * c.chunkSize, i * c.chunkSize + data.length)), `chunk ${i}`);
    }
    // Random ranges against direct slicing.
    const rand = prng(c.size ^ 0x5eed);
    const tries = c.size === 0 ? 3 : 60;
    for (let k = 0; k < tries; k++) {
      const off = randInt(rand, c.size + 1);
      const len = randInt(rand, Math.min(c.size - off, 3 * c.chunkSize + 10) + 1);
      assert.deepEqual(await readThroughTable(table, blob, off, len), image.subarray(off, off + len), `range ${off}+${len}`);
      // Clamping: a request running past U returns the bytes up to U.
      const over = await readThroughTable(table, blob, off, len + 50, 'clamp');
      assert.deepEqual(over, image.subarray(off, Math.min(c.size, off + len + 50)));
    }
    assert.throws(() => mapImageRange(table, 0, c.size + 1), RangeError);
    assert.deepEqual(mapImageRange(table, c.size, 10, 'clamp'), []);

    // Whole blob: file and stream inputs, file and stream outputs.
    const dir = await tempDir(t);
    const blobPath = join(dir, 'blob');
    await writeFile(blobPath, blob);
    const outPath = join(dir, 'out.erofs');
    const fromFile = await decodeSeekableBlob(blobPath, outPath, desc, { diffId: result.diffId });
    assert.deepEqual(await readFile(outPath), image);
    assert.equal(fromFile.uncompressedSize, c.size);
    assert.equal(fromFile.blobDigest, result.blobDigest);
    const sink = new CollectingSink();
    const fromStream = await decodeSeekableBlob(streamOf(blob, 777), sink, desc, { diffId: result.diffId });
    assert.deepEqual(sink.bytes(), image);
    assert.equal(fromStream.chunkCount, result.chunkCount);
    // Sequential path (ignores the table) and the zstd CLI agree.
    const seqSink = new CollectingSink();
    await decodeSequential(streamOf(blob, 4096), seqSink, { diffId: result.diffId, blobDigest: result.blobDigest, blobSize: blob.length });
    assert.deepEqual(seqSink.bytes(), image);
    assert.deepEqual(execFileSync('zstd', ['-d', '-q', '-c', blobPath], { maxBuffer: 64 * MiB }), image);
  });
}

test('dm-verity blobs: zstd CLI and our decoders still give the raw image; empty image refused', async (t) => {
  const dir = await tempDir(t);
  for (const [size, bs] of [[1, 4096], [4096, 4096], [70_000, 512], [300_000, 65536]] as const) {
    const image = makeImage(size, size);
    const { blob, result, desc } = await encodeInMemory(image, { chunkSize: 16384, verity: { blockSize: bs } });
    const dataBlocks = Math.ceil(size / bs);
    assert.equal(result.verity?.blockSize, bs);
    assert.equal(result.verity?.dataBlocks, dataBlocks);
    assert.equal(result.verity?.offset, result.chunkTableOffset + 8 + 23 + result.chunkCount * 72);
    const Nv = blob.readUInt32LE(result.verity!.offset + 4);
    if (dataBlocks === 1) assert.equal(Nv, 512);
    assert.equal(result.blobSize, result.verity!.offset + 8 + Nv);
    const layout = parseSeekableAnnotations(desc);
    assert.ok(layout.kind === 'seekable' && layout.verity?.rootDigest === result.verity?.rootDigest);
    const blobPath = join(dir, `blob-${size}`);
    await writeFile(blobPath, blob);
    assert.deepEqual(execFileSync('zstd', ['-d', '-q', '-c', blobPath], { maxBuffer: 16 * MiB }), image);
    const sink = new CollectingSink();
    await decodeSeekableBlob(blobPath, sink, desc, { diffId: result.diffId });
    assert.deepEqual(sink.bytes(), image);
    const sink2 = new CollectingSink();
    await decodeSeekableBlob(streamOf(blob, 1000), sink2, desc, { diffId: result.diffId });
    assert.deepEqual(sink2.bytes(), image);
  }
  const out = join(dir, 'empty.blob');
  await writeFile(join(dir, 'empty.erofs'), '');
  await assert.rejects(encodeSeekableBlob(join(dir, 'empty.erofs'), out, { verity: {} }), /empty image/);
  await assert.rejects(encodeSeekableBlob(streamOf(Buffer.alloc(0)), new CollectingSink(), { verity: {} }), /empty image/);
  await assert.rejects(stat(out), { code: 'ENOENT' });
});

test('encoder options are range-checked (spec §11)', async () => {
  for (const chunkSize of [0, -1, 1.5, 0x1_0000_0000, Number.NaN]) {
    await assert.rejects(encodeSeekableBlob(streamOf(Buffer.alloc(1)), new CollectingSink(), { chunkSize }), RangeError, `C=${chunkSize}`);
  }
  for (const blockSize of [256, 1000, 4097, 1048576]) {
    await assert.rejects(encodeSeekableBlob(streamOf(Buffer.alloc(1)), new CollectingSink(), { verity: { blockSize } }), RangeError);
  }
  await assert.rejects(encodeSeekableBlob(streamOf(Buffer.alloc(1)), new CollectingSink(), { verity: { uuid: Buffer.alloc(16) } }), RangeError);
  await assert.rejects(encodeSeekableBlob(streamOf(Buffer.alloc(1)), new CollectingSink(), { level: 1000 }), RangeError);
  await assert.rejects(encodeSeekableBlob(streamOf(Buffer.alloc(1)), new CollectingSink(), { leadingChunks: { count: 1, level: 1000 } }), RangeError);
  await assert.rejects(encodeSeekableBlob(streamOf(Buffer.alloc(1)), new CollectingSink(), { leadingChunks: { count: -1, level: 3 } }), RangeError);
  // C = 0xFFFFFFFF is allowed (only the image's bytes are buffered, not C).
  const { result } = await encodeInMemory(Buffer.from('hello'), { chunkSize: 0xffffffff });
  assert.equal(result.chunkCount, 1);
  assert.equal(result.chunkSize, 0xffffffff);
});

test('leadingChunks: the first chunks at their own level, the blob still decodes to the image', async () => {
  // Compressible but not trivially so: text-like lines with varying numbers.
  const lines: string[] = [];
  for (let i = 0; lines.join('').length < 4 * 64 * 1024; i++) lines.push(`entry ${i} value ${(i * 7919) % 10007} name item-${i % 97}\n`);
  const image = Buffer.from(lines.join('')).subarray(0, 4 * 64 * 1024);
  const chunkSize = 64 * 1024;
  const plain = await encodeInMemory(image, { chunkSize, level: 1 });
  const mixed = await encodeInMemory(image, { chunkSize, level: 1, leadingChunks: { count: 2, level: 19 } });
  const frameSizes = async (blob: Buffer, desc: Parameters<typeof parseSeekableAnnotations>[0]) => {
    const table = await loadChunkTable(desc, memoryReader(blob));
    return Array.from({ length: table.chunkCount }, (_, i) => table.frameRange(i).end - table.frameRange(i).start);
  };
  const a = await frameSizes(plain.blob, plain.desc);
  const b = await frameSizes(mixed.blob, mixed.desc);
  assert.ok(b[0]! < a[0]! && b[1]! < a[1]!, `leading frames smaller at level 19: ${b} vs ${a}`);
  assert.deepEqual(b.slice(2), a.slice(2), 'the other frames as before');
  const sink = new CollectingSink();
  const decoded = await decodeSeekableBlob(streamOf(mixed.blob), sink, mixed.desc, { diffId: plain.result.diffId });
  assert.ok(sink.bytes().equals(image));
  assert.equal(decoded.diffId, plain.result.diffId);
});

test('encoder writes files, streams from files, and its descriptor helper keeps foreign annotations', async (t) => {
  const dir = await tempDir(t);
  const image = makeImage(200_000, 9);
  await writeFile(join(dir, 'img'), image);
  const result = await encodeSeekableBlob(join(dir, 'img'), join(dir, 'blob'), { chunkSize: 65536, level: 1 });
  const blob = await readFile(join(dir, 'blob'));
  assert.equal(sha256(blob), result.blobDigest);
  assert.equal(result.chunkCount, 4);
  const original = {
    mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
    digest: 'sha256:' + '0'.repeat(64),
    size: 5,
    annotations: { 'org.example.keep': 'yes', 'dev.containerd.erofs.dmverity.offset': '999', 'dev.containerd.erofs.dmverity.root_digest': 'sha512:x' },
  };
  const desc = seekableLayerDescriptor(result, original);
  assert.deepEqual(desc, {
    mediaType: 'application/vnd.erofs.layer.v1+zstd',
    digest: result.blobDigest,
    size: result.blobSize,
    annotations: {
      'dev.containerd.erofs.zstd.chunk_digest': result.chunkDigest,
      'dev.containerd.erofs.zstd.chunk_table_offset': String(result.chunkTableOffset),
      'org.example.keep': 'yes',
    },
  });
  assert.deepEqual(buildSeekableDescriptor(result), { ...desc, annotations: result.annotations });
  const sink = new CollectingSink();
  const decoded = await decodeLayerBlob(join(dir, 'blob'), sink, desc, { diffId: result.diffId });
  assert.deepEqual(sink.bytes(), image);
  assert.equal(decoded.diffId, result.diffId);
});

test('sequential path: plain zstd streams with several frames and skippable frames; raw layers; checks', async (t) => {
  const dir = await tempDir(t);
  const image = makeImage(300_000, 3);
  const plainPath = join(dir, 'plain.zst');
  await writeFile(join(dir, 'img'), image);
  execFileSync('zstd', ['-q', '-f', '-3', join(dir, 'img'), '-o', plainPath]);
  const plain = await readFile(plainPath);
  // A second frame and a skippable frame in between.
  const skippable = Buffer.concat([Buffer.from('5a2a4d1805000000', 'hex'), Buffer.from('junk!')]);
  const tail = execFileSync('zstd', ['-q', '-c', '-19'], { input: image.subarray(0, 1000) });
  const multi = Buffer.concat([plain, skippable, tail]);
  const expected = Buffer.concat([image, image.subarray(0, 1000)]);
  const sink = new CollectingSink();
  const r = await decodeSequential(streamOf(multi, 999), sink, { diffId: sha256(expected), blobDigest: sha256(multi), blobSize: multi.length, expectedSize: expected.length });
  assert.deepEqual(sink.bytes(), expected);
  assert.equal(r.blobDigest, sha256(multi));
  // Annotation-less +zstd layer goes the sequential way in decodeLayerBlob.
  const desc = { mediaType: 'application/vnd.erofs.layer.v1+zstd', digest: sha256(plain), size: plain.length };
  assert.equal(parseSeekableAnnotations(desc).kind, 'sequential');
  const out = join(dir, 'out');
  await decodeLayerBlob(plainPath, out, desc, { diffId: sha256(image) });
  assert.deepEqual(await readFile(out), image);
  // Raw EROFS layer: copied with the same checks.
  const rawSink = new CollectingSink();
  await decodeLayerBlob(streamOf(image), rawSink, { mediaType: 'application/vnd.erofs.layer.v1', digest: sha256(image), size: image.length }, { diffId: sha256(image) });
  assert.deepEqual(rawSink.bytes(), image);
  // Wrong DiffID, wrong size, truncated stream: rule 18 / 15, and the output file is removed.
  await assert.rejects(decodeSequential(plainPath, out, { diffId: sha256(Buffer.from('x')) }), { name: 'SeekableFormatError', rule: 18 });
  await assert.rejects(stat(out), { code: 'ENOENT' });
  await assert.rejects(decodeSequential(plainPath, new CollectingSink(), { expectedSize: image.length - 1 }), { rule: 18 });
  await assert.rejects(decodeSequential(streamOf(plain.subarray(0, plain.length - 3)), new CollectingSink()), { rule: 15 });
  await assert.rejects(decodeSequential(streamOf(plain), new CollectingSink(), { blobSize: plain.length + 1 }), { rule: 18 });
});

test('groupFrameRuns merges adjacent frames, honours gaps and request limits', async () => {
  const image = makeImage(50_000, 11);
  const { blob, desc } = await encodeInMemory(image, { chunkSize: 1000 });
  const table = await loadChunkTable(desc, memoryReader(blob));
  const len = (i: number) => table.frameLength(i);
  const runs = groupFrameRuns(table, [5, 3, 4, 9, 4, 20]);
  assert.deepEqual(runs.map((r) => [r.firstIndex, r.lastIndex, r.indices]), [[3, 5, [3, 4, 5]], [9, 9, [9]], [20, 20, [20]]]);
  assert.deepEqual([runs[0]!.start, runs[0]!.end], [table.frameRange(3).start, table.frameRange(5).end]);
  // A gap of two frames merges when allowed.
  const gap = len(10) + len(11);
  const merged = groupFrameRuns(table, [9, 12], { maxGapBytes: gap });
  assert.equal(merged.length, 1);
  assert.deepEqual(merged[0]!.indices, [9, 12]);
  assert.equal(groupFrameRuns(table, [9, 12], { maxGapBytes: gap - 1 }).length, 2);
  // Request size limit splits runs, but never a single frame.
  const limit = len(0) + len(1);
  const limited = groupFrameRuns(table, [0, 1, 2, 3, 4, 5], { maxRequestBytes: limit });
  assert.deepEqual(limited[0]!.indices, [0, 1]);
  assert.deepEqual(limited.flatMap((r) => r.indices), [0, 1, 2, 3, 4, 5]);
  assert.ok(limited.length >= 3);
  for (const r of limited) assert.ok(r.end - r.start <= limit || r.indices.length === 1);
  assert.deepEqual(groupFrameRuns(table, [7], { maxRequestBytes: 1 }).map((r) => r.indices), [[7]]);
  assert.deepEqual(groupFrameRuns(table, []), []);
  // Every run's bytes cover exactly the frames inside it.
  for (const run of groupFrameRuns(table, [1, 2, 8, 30, 31, 49], { maxGapBytes: 3000 })) {
    const bytes = blob.subarray(run.start, run.end);
    for (const i of run.indices) {
      assert.deepEqual(decodeFrame(frameFromRun(table, run, bytes, i), i, table), image.subarray(i * 1000, (i + 1) * 1000));
    }
  }
});

test('mapImageRange follows the spec pseudo code on boundaries', async () => {
  const image = makeImage(10_000, 5);
  const { blob, desc } = await encodeInMemory(image, { chunkSize: 4096 });
  const table = await loadChunkTable(desc, memoryReader(blob));
  assert.deepEqual(mapImageRange(table, 0, 0), []);
  const s = mapImageRange(table, 4095, 4098);
  assert.deepEqual(s.map((x) => [x.index, x.lo, x.hi, x.outputOffset, x.chunkLength]), [[0, 4095, 4096, 0, 4096], [1, 0, 4096, 1, 4096], [2, 0, 1, 4097, 1808]]);
  assert.deepEqual(s[2]!.frame, table.frameRange(2));
  assert.deepEqual(mapImageRange(table, 9999, 1).map((x) => [x.index, x.lo, x.hi]), [[2, 1807, 1808]]);
  assert.throws(() => mapImageRange(table, 9999, 2), RangeError);
  assert.throws(() => mapImageRange(table, -1, 2), RangeError);
  assert.throws(() => mapImageRange(table, 1.5, 2), RangeError);
  assert.deepEqual(mapImageRange(table, 9999, 2, 'clamp').map((x) => [x.index, x.lo, x.hi]), [[2, 1807, 1808]]);
  assert.deepEqual(mapImageRange(table, 20_000, 2, 'clamp'), []);
});
