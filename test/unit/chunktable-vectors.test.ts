// Spec §12 test vectors V1–V4, byte for byte.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import zstd from 'zstd-napi/binding.js';
import {
  decodeFrame,
  decodeSeekableBlob,
  loadChunkTable,
  parseChunkTable,
  parseSeekableAnnotations,
  serializeChunkTable,
  serializeChunkTableFrame,
  SKIPPABLE_HEADER_SIZE,
} from '../../src/chunktable/index.js';
import { tempDir } from '../helpers/tmp.js';
import { CollectingSink, encodeInMemory, memoryReader, v4Input } from '../fixtures/chunktable/helpers.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const repeat = (byte: number, n = 64) => Buffer.alloc(n, byte);
const sha512 = (b: Uint8Array) => `sha512:${createHash('sha512').update(b).digest('hex')}`;

test('V1: HashAlgo 0 chunk table serializes to the exact frame and digest, and parses back', () => {
  const frame = serializeChunkTableFrame({
    uncompressedSize: 10000,
    chunkSize: 4096,
    hashAlgo: 0,
    entries: [{ offset: 0 }, { offset: 100 }, { offset: 250 }],
  });
  const expected = hex(`502a4d18 2f000000
        67ece4cd 01000000 1027000000000000 00100000 00 0000
        0000000000000000 6400000000000000 fa00000000000000`);
  assert.equal(frame.toString('hex'), expected.toString('hex'));
  const payload = frame.subarray(SKIPPABLE_HEADER_SIZE);
  assert.equal(payload.length, 47);
  assert.equal(
    sha512(payload),
    'sha512:193fdce4fb5d68d6174cd15dde3671cd97d90d4515fd412363012107bf4d3efc95490b02d459d6e3ed350d63a9c745930e749d2b99d5babbbafca3a9deea2a98',
  );
  // Place the table after a plausible last frame.
  const T = 1000;
  const table = parseChunkTable(payload, { tableOffset: T, blobSize: T + frame.length });
  assert.equal(table.uncompressedSize, 10000);
  assert.equal(table.chunkSize, 4096);
  assert.equal(table.chunkCount, 3);
  assert.equal(table.hashAlgo, 0);
  assert.equal(table.verifiable, false);
  assert.equal(table.payloadLength, 47);
  assert.deepEqual(table.frameRange(0), { start: 0, end: 100 });
  assert.deepEqual(table.frameRange(1), { start: 100, end: 250 });
  assert.deepEqual(table.frameRange(2), { start: 250, end: T });
  assert.deepEqual([0, 1, 2].map((i) => table.chunkLength(i)), [4096, 4096, 1808]);
  assert.equal(table.checksum(1), undefined);
  assert.deepEqual(table.payload(), payload);
});

test('V2: HashAlgo 1 payload with partial last chunk is exact and parses back', () => {
  const entries = [0, 1, 2].map((i) => ({ offset: i * 819, checksum: repeat(i + 1) }));
  const payload = serializeChunkTable({ uncompressedSize: 3071, chunkSize: 1024, hashAlgo: 1, entries });
  const expected = Buffer.concat([
    hex('67ece4cd 01000000 ff0b000000000000 00040000 01 0000'),
    hex('0000000000000000'),
    repeat(1),
    hex('3303000000000000'),
    repeat(2),
    hex('6606000000000000'),
    repeat(3),
  ]);
  assert.equal(payload.toString('hex'), expected.toString('hex'));
  assert.equal(payload.length, 239);
  assert.equal(
    sha512(payload),
    'sha512:81ac3d83f64a8726fce6557a7a7bc98cbe5260847bad9f87f52e6f17f88aad325ee59e4e95bde047054b259e658c436c81b456bf68b8d21522a2515805fd9842',
  );
  const T = 2000;
  const table = parseChunkTable(payload, { tableOffset: T, blobSize: T + 8 + 239 });
  assert.equal(table.chunkCount, 3);
  assert.deepEqual([0, 1, 2].map((i) => table.chunkLength(i)), [1024, 1024, 1023]);
  assert.deepEqual([0, 1, 2].map((i) => table.checksum(i)), [repeat(1), repeat(2), repeat(3)]);
  assert.deepEqual(table.frameRange(2), { start: 1638, end: T });
});

test('V3: empty image table is exact; a blob made of it alone loads through loadChunkTable', async () => {
  const frame = serializeChunkTableFrame({ uncompressedSize: 0, chunkSize: 4 * 1024 * 1024, hashAlgo: 1, entries: [] });
  assert.equal(frame.toString('hex'), hex('502a4d18 17000000 67ece4cd 01000000 0000000000000000 00004000 01 0000').toString('hex'));
  const digest = sha512(frame.subarray(8));
  assert.equal(
    digest,
    'sha512:90bf8674d0283489d2cbb8269b7e5f6ef59f4a1d13035065deee62671d8b0c22a7f67fea42c43998f0b0ad2238b192f61991a21bddc20881542236b7eda5b422',
  );
  const desc = {
    mediaType: 'application/vnd.erofs.layer.v1+zstd',
    digest: `sha256:${createHash('sha256').update(frame).digest('hex')}`,
    size: frame.length,
    annotations: { 'dev.containerd.erofs.zstd.chunk_table_offset': '0', 'dev.containerd.erofs.zstd.chunk_digest': digest },
  };
  const table = await loadChunkTable(desc, memoryReader(frame));
  assert.equal(table.chunkCount, 0);
  assert.equal(table.uncompressedSize, 0);
  assert.equal(table.tableOffset, 0);
  // The encoder produces exactly this blob for an empty image.
  const { blob, result } = await encodeInMemory(Buffer.alloc(0));
  assert.deepEqual(blob, frame);
  assert.equal(result.chunkDigest, digest);
  assert.equal(result.chunkTableOffset, 0);
  assert.equal(result.diffId, `sha256:${createHash('sha256').digest('hex')}`);
});

const V4_DIFF_ID = 'sha256:c9490cafe601e006e85d9af4f73d93aac7c0602d3db323a1d58caa4db30ee99a';
const V4_ROOT =
  'sha512:b31dd5be5ebb8e4e7cc7c9df6cf033e7cd988446706ab0c32ba866846ffaecbf43f0d75c1146eac90d3e0944ed9cc92449f2b105db1b06248e75bfcb0b16ba7f';
const V4_CHUNK_DIGEST =
  'sha512:0194a1a03c185551157751497d3d30dff8b3a34c72973dea46e0fbe70f85c7f15e91cc1678bd6f63c874be828393859647aaf87d8eb5e5886bea58ac25185de3';
const V4_UUID = Buffer.from('12345678123456781234567812345678', 'hex');

test('V4: end-to-end blob with dm-verity reproduces the spec layout, digests and root', async (t) => {
  const input = v4Input();
  assert.equal(input.length, 22288);
  assert.equal(`sha256:${createHash('sha256').update(input).digest('hex')}`, V4_DIFF_ID);

  // The spec's frames are what `zstd -3` writes when reading stdin: no Frame_Content_Size, 2 MiB window.
  // contentSize: false reproduces them byte for byte, and with them every offset and the chunk digest.
  const exact = await encodeInMemory(input, { chunkSize: 8192, contentSize: false, verity: { blockSize: 4096, uuid: V4_UUID } }, 5000);
  const r = exact.result;
  assert.equal(r.diffId, V4_DIFF_ID);
  assert.equal(r.chunkCount, 3);
  assert.equal(r.chunkTableOffset, 20875);
  assert.equal(r.verity?.offset, 21122);
  assert.equal(r.blobSize, 29322);
  assert.equal(r.verity?.rootDigest, V4_ROOT);
  assert.equal(r.verity?.hashOffset, 24576);
  assert.equal(r.verity?.dataBlocks, 6);
  assert.equal(r.chunkDigest, V4_CHUNK_DIGEST);
  assert.deepEqual(r.annotations, {
    'dev.containerd.erofs.dmverity.offset': '21122',
    'dev.containerd.erofs.dmverity.root_digest': V4_ROOT,
    'dev.containerd.erofs.zstd.chunk_digest': V4_CHUNK_DIGEST,
    'dev.containerd.erofs.zstd.chunk_table_offset': '20875',
  });
  const blob = exact.blob;
  assert.equal(blob.subarray(20875, 20883).toString('hex'), '502a4d18ef000000');
  assert.equal(blob.subarray(20883, 20906).toString('hex'), '67ece4cd010000001057000000000000002000000100 00'.replace(/ /g, ''));
  assert.equal(blob.readUInt32LE(21122), 0x184d2a50);
  assert.equal(blob.readUInt32LE(21126), 8192); // Nv: 6 data blocks -> 1 tree block -> bs + 1 × bs

  const layout = parseSeekableAnnotations(exact.desc);
  assert.equal(layout.kind, 'seekable');
  const table = await loadChunkTable(exact.desc, memoryReader(blob));
  assert.deepEqual([0, 1, 2].map((i) => table.frameRange(i).start), [0, 7673, 15339]);
  for (let i = 0; i < 3; i++) {
    const { start, end } = table.frameRange(i);
    assert.deepEqual(decodeFrame(blob.subarray(start, end), i, table), input.subarray(i * 8192, i * 8192 + table.chunkLength(i)));
  }

  // The default encoder (with Frame_Content_Size) gives the same layout rules and root, and the same frames
  // as `zstd -3` on each chunk as a file (the CLI knows the size then). Compare with the CLI if it is there.
  const dir = await tempDir(t);
  const withFcs = await encodeInMemory(input, { chunkSize: 8192, verity: { blockSize: 4096, uuid: V4_UUID } });
  const w = withFcs.result;
  assert.equal(w.verity?.rootDigest, V4_ROOT);
  assert.equal(w.verity?.offset, w.chunkTableOffset + 8 + 239);
  assert.equal(w.blobSize, w.verity!.offset + 8 + 8192);
  const frames: Buffer[] = [];
  for (let i = 0; i < 3; i++) {
    const chunkPath = join(dir, `chunk${i}`);
    await writeFile(chunkPath, input.subarray(i * 8192, (i + 1) * 8192));
    frames.push(execFileSync('zstd', ['-3', '-q', '-c', chunkPath]));
  }
  const cliFrames = Buffer.concat(frames);
  assert.equal(w.chunkTableOffset, cliFrames.length);
  assert.deepEqual(withFcs.blob.subarray(0, w.chunkTableOffset), cliFrames);
  // Whole blob decodes with the zstd CLI and with our decoder.
  const blobPath = join(dir, 'v4.blob');
  await writeFile(blobPath, withFcs.blob);
  assert.deepEqual(execFileSync('zstd', ['-d', '-q', '-c', blobPath], { maxBuffer: 1 << 20 }), input);
  const sink = new CollectingSink();
  const decoded = await decodeSeekableBlob(blobPath, sink, withFcs.desc, { diffId: V4_DIFF_ID });
  assert.deepEqual(sink.bytes(), input);
  assert.equal(decoded.blobDigest, w.blobDigest);
  // zstd_napi sanity: our frames carry Frame_Content_Size 8192 / 5904.
  assert.equal(zstd.getFrameContentSize(withFcs.blob), 8192);
});
