// Every spec §10 rejection rule that belongs to src/chunktable (1–19, and the cheap part of 20), each asserting
// the error class and its rule number.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  decodeFrame,
  decodeSeekableBlob,
  encodeSkippableFrame,
  IntegrityError,
  isSeekableReadError,
  loadChunkTable,
  parseChunkTable,
  parseSeekableAnnotations,
  SeekableFormatError,
  serializeChunkTable,
} from '../../src/chunktable/index.js';
import type { ChunkTable } from '../../src/chunktable/index.js';
import type { Descriptor } from '../../src/oci/types.js';
import { tempDir } from '../helpers/tmp.js';
import { assembleBlob, CollectingSink, compressFrame, encodeInMemory, makeImage, memoryReader, streamOf } from '../fixtures/chunktable/helpers.js';

const T_KEY = 'dev.containerd.erofs.zstd.chunk_table_offset';
const D_KEY = 'dev.containerd.erofs.zstd.chunk_digest';
const VO_KEY = 'dev.containerd.erofs.dmverity.offset';
const VR_KEY = 'dev.containerd.erofs.dmverity.root_digest';
const GOOD_DIGEST = `sha512:${'ab'.repeat(64)}`;
const sha512 = (b: Uint8Array) => `sha512:${createHash('sha512').update(b).digest('hex')}`;

function isRule(rule: number): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof SeekableFormatError, `expected SeekableFormatError, got ${String(err)}`);
    assert.equal(err.rule, rule, `expected rule ${rule}: ${err.message}`);
    assert.match(err.message, new RegExp(`rule ${rule}:`));
    return true;
  };
}

function desc(annotations: Record<string, unknown>, size = 1000): Descriptor {
  return { mediaType: 'application/vnd.erofs.layer.v1+zstd', digest: `sha256:${'0'.repeat(64)}`, size, annotations: annotations as Record<string, string> };
}

test('rule 1: offset annotations must be canonical decimal and at most 2^63-1; rule 12 above 2^53-1', () => {
  for (const bad of ['+5', '05', '-1', '1e3', ' 1', '1 ', '', 'abc', '0x10', '1.0', '٣', '9223372036854775808', '99999999999999999999999']) {
    assert.throws(() => parseSeekableAnnotations(desc({ [T_KEY]: bad, [D_KEY]: GOOD_DIGEST })), isRule(1), JSON.stringify(bad));
    assert.throws(() => parseSeekableAnnotations(desc({ [T_KEY]: '10', [D_KEY]: GOOD_DIGEST, [VO_KEY]: bad, [VR_KEY]: GOOD_DIGEST })), isRule(1));
  }
  assert.throws(() => parseSeekableAnnotations(desc({ [T_KEY]: 5, [D_KEY]: GOOD_DIGEST })), isRule(1));
  for (const big of ['9223372036854775807', '9007199254740992']) {
    assert.throws(() => parseSeekableAnnotations(desc({ [T_KEY]: big, [D_KEY]: GOOD_DIGEST })), isRule(12));
  }
  const ok = parseSeekableAnnotations(desc({ [T_KEY]: '9007199254740991', [D_KEY]: GOOD_DIGEST }));
  assert.ok(ok.kind === 'seekable' && ok.chunkTableOffset === 9007199254740991);
  const zero = parseSeekableAnnotations(desc({ [T_KEY]: '0', [D_KEY]: GOOD_DIGEST }));
  assert.ok(zero.kind === 'seekable' && zero.chunkTableOffset === 0 && zero.verity === undefined);
});

test('rule 2: chunk_digest must be sha512: + 128 lowercase hex', () => {
  for (const bad of [`sha256:${'a'.repeat(64)}`, `sha512:${'A'.repeat(128)}`, `sha512:${'a'.repeat(127)}`, `sha512:${'a'.repeat(129)}`, '', 'sha512:', `SHA512:${'a'.repeat(128)}`]) {
    assert.throws(() => parseSeekableAnnotations(desc({ [T_KEY]: '1', [D_KEY]: bad })), isRule(2), bad);
  }
});

test('rule 3: dm-verity offset needs a sha512 root digest (and a root digest needs an offset)', () => {
  const base = { [T_KEY]: '10', [D_KEY]: GOOD_DIGEST };
  assert.throws(() => parseSeekableAnnotations(desc({ ...base, [VO_KEY]: '100' })), isRule(3));
  assert.throws(() => parseSeekableAnnotations(desc({ ...base, [VO_KEY]: '100', [VR_KEY]: '' })), isRule(3));
  assert.throws(() => parseSeekableAnnotations(desc({ ...base, [VO_KEY]: '100', [VR_KEY]: `sha256:${'a'.repeat(64)}` })), isRule(3));
  assert.throws(() => parseSeekableAnnotations(desc({ ...base, [VO_KEY]: '100', [VR_KEY]: 'garbage' })), isRule(3));
  assert.throws(() => parseSeekableAnnotations(desc({ ...base, [VR_KEY]: GOOD_DIGEST })), isRule(3));
  assert.throws(() => parseSeekableAnnotations(desc({ ...base, [VO_KEY]: '10', [VR_KEY]: GOOD_DIGEST })), isRule(12));
  const v = parseSeekableAnnotations(desc({ ...base, [VO_KEY]: '100', [VR_KEY]: GOOD_DIGEST }));
  assert.ok(v.kind === 'seekable');
  assert.deepEqual(v.verity, { offset: 100, rootDigest: GOOD_DIGEST });
});

test('rule 19 / §8.4: missing annotations give a sequential verdict; other media types are unsupported', async () => {
  assert.equal(parseSeekableAnnotations(desc({})).kind, 'sequential');
  assert.equal(parseSeekableAnnotations({ ...desc({}), annotations: undefined }).kind, 'sequential');
  // chunk_table_offset present but chunk_digest absent: sequential, even when the offset is malformed.
  const v = parseSeekableAnnotations(desc({ [T_KEY]: '007' }));
  assert.equal(v.kind, 'sequential');
  assert.match(v.kind === 'sequential' ? v.reason : '', /chunk_digest/);
  for (const mediaType of ['application/vnd.erofs.layer.v1', 'application/vnd.erofs.layer.v1+zstd+encrypted', 'application/vnd.oci.image.layer.v1.tar+zstd']) {
    assert.equal(parseSeekableAnnotations({ ...desc({ [T_KEY]: '1', [D_KEY]: GOOD_DIGEST }), mediaType }).kind, 'unsupported');
  }
  await assert.rejects(loadChunkTable(desc({ [T_KEY]: '10' }), memoryReader(Buffer.alloc(1000))), isRule(19));
  await assert.rejects(decodeSeekableBlob(streamOf(Buffer.alloc(10)), new CollectingSink(), desc({})), isRule(19));
});

/** A valid small blob to break in the table-level tests. */
async function smallBlob() {
  const image = makeImage(5000, 2);
  return { image, ...(await encodeInMemory(image, { chunkSize: 2048 })) };
}

/** The same blob with new table payload bytes and a chunk_digest that matches them (to get past rule 6). */
function withPayload(blob: Buffer, T: number, payload: Buffer, annotations: Record<string, string> = {}, magic = 0x184d2a50) {
  const newBlob = Buffer.concat([blob.subarray(0, T), encodeSkippableFrame(payload, magic)]);
  return { blob: newBlob, desc: desc({ [T_KEY]: String(T), [D_KEY]: sha512(payload), ...annotations }, newBlob.length) };
}

test('rule 4: chunk table frame past the end of the blob', async () => {
  const { blob, result } = await smallBlob();
  const T = result.chunkTableOffset;
  const ann = { [T_KEY]: String(T), [D_KEY]: result.chunkDigest };
  // T + 8 > B
  await assert.rejects(loadChunkTable(desc({ ...ann, [T_KEY]: String(blob.length - 7) }, blob.length), memoryReader(blob)), isRule(4));
  await assert.rejects(loadChunkTable(desc({ ...ann, [T_KEY]: String(blob.length + 100) }, blob.length), memoryReader(blob)), isRule(4));
  // T + 8 + Nt > B: declared length larger than what is there.
  const cut = blob.subarray(0, blob.length - 1);
  await assert.rejects(loadChunkTable(desc(ann, cut.length), memoryReader(cut)), isRule(4));
  // A reader that returns fewer bytes than asked (blob shorter than its descriptor says).
  await assert.rejects(loadChunkTable(desc(ann, blob.length + 5), memoryReader(blob)), isRule(4));
  // parseChunkTable itself: the frame would run past B.
  const payload = blob.subarray(T + 8);
  assert.throws(() => parseChunkTable(payload, { tableOffset: T, blobSize: blob.length - 1 }), isRule(4));
});

test('rule 5: the chunk table frame must have a skippable magic (any of 0x184D2A50..5F is accepted)', async () => {
  const { blob, result } = await smallBlob();
  const T = result.chunkTableOffset;
  const payload = Buffer.from(blob.subarray(T + 8));
  for (const magic of [0x184d2a4f, 0x184d2a60, 0xfd2fb528, 0]) {
    const b = Buffer.from(blob);
    b.writeUInt32LE(magic, T);
    await assert.rejects(loadChunkTable(desc({ [T_KEY]: String(T), [D_KEY]: result.chunkDigest }, b.length), memoryReader(b)), isRule(5));
  }
  const alt = withPayload(blob, T, payload, {}, 0x184d2a5f);
  assert.equal((await loadChunkTable(alt.desc, memoryReader(alt.blob))).chunkCount, 3);
});

test('rule 6: payload digest is checked before parsing (IntegrityError, not wrapped)', async () => {
  const { blob, result } = await smallBlob();
  const T = result.chunkTableOffset;
  const ann = { [T_KEY]: String(T), [D_KEY]: result.chunkDigest };
  const b = Buffer.from(blob);
  b[T + 8 + 30] ^= 0x01; // inside entry 0's checksum: still parses, but must not be trusted
  await assert.rejects(loadChunkTable(desc(ann, b.length), memoryReader(b)), (err: unknown) => {
    assert.ok(err instanceof IntegrityError && err.subject === 'chunk-table');
    assert.ok(isSeekableReadError(err));
    return true;
  });
  // Garbage that would break rule 8 still reports the digest first.
  const g = Buffer.from(blob);
  g.writeUInt32LE(0x12345678, T + 8);
  await assert.rejects(loadChunkTable(desc(ann, g.length), memoryReader(g)), IntegrityError);
  await assert.rejects(loadChunkTable(desc({ ...ann, [D_KEY]: GOOD_DIGEST }, blob.length), memoryReader(blob)), IntegrityError);
});

test('rule 7: payload shorter than the 23-byte header', async () => {
  const { blob, result } = await smallBlob();
  const T = result.chunkTableOffset;
  for (const n of [0, 1, 22]) {
    const short = Buffer.from(blob.subarray(T + 8, T + 8 + n));
    const v = withPayload(blob, T, short);
    await assert.rejects(loadChunkTable(v.desc, memoryReader(v.blob)), isRule(7));
    assert.throws(() => parseChunkTable(short, { tableOffset: T, blobSize: T + 8 + n }), isRule(7));
  }
});

test('rule 8: table magic, version, ChunkSize, Reserved and HashAlgo', async () => {
  const { blob, result } = await smallBlob();
  const T = result.chunkTableOffset;
  const base = Buffer.from(blob.subarray(T + 8));
  const edits: Array<[string, (p: Buffer) => void]> = [
    ['magic', (p) => p.writeUInt32LE(0xcde4ec66, 0)],
    ['magic of the other draft', (p) => p.writeUInt32LE(0x67ece4cd, 0)],
    ['version 0', (p) => p.writeUInt32LE(0, 4)],
    ['version 2', (p) => p.writeUInt32LE(2, 4)],
    ['ChunkSize 0', (p) => p.writeUInt32LE(0, 16)],
    ['HashAlgo 2', (p) => p.writeUInt8(2, 20)],
    ['HashAlgo 255', (p) => p.writeUInt8(255, 20)],
    ['Reserved 1', (p) => p.writeUInt16LE(1, 21)],
    ['Reserved 0x100', (p) => p.writeUInt16LE(0x100, 21)],
  ];
  for (const [name, edit] of edits) {
    const p = Buffer.from(base);
    edit(p);
    assert.throws(() => parseChunkTable(p, { tableOffset: T, blobSize: blob.length }), isRule(8), name);
    const v = withPayload(blob, T, p);
    await assert.rejects(loadChunkTable(v.desc, memoryReader(v.blob)), isRule(8), name);
  }
});

test('rule 9: payload length must be exactly 23 + n(8+h), computed without wrapping', () => {
  const entries = [0, 1, 2].map((i) => ({ offset: i * 819, checksum: Buffer.alloc(64, i + 1) }));
  const v2 = serializeChunkTable({ uncompressedSize: 3071, chunkSize: 1024, hashAlgo: 1, entries });
  assert.throws(
    () => parseChunkTable(v2.subarray(0, 23), { tableOffset: 3000, blobSize: 3031 }),
    (err: unknown) => err instanceof SeekableFormatError && err.message === 'chunk table rule 9: payload length 23 != expected 239 (U=3071, C=1024, HashAlgo=1)',
  );
  assert.throws(() => parseChunkTable(Buffer.concat([v2, Buffer.alloc(72)]), { tableOffset: 3000, blobSize: 3000 + 8 + 311 }), isRule(9));
  assert.throws(() => parseChunkTable(v2.subarray(0, 238), { tableOffset: 3000, blobSize: 3000 + 8 + 238 }), isRule(9));
  // HashAlgo flipped to 0 changes the expected length.
  const h0 = Buffer.from(v2);
  h0.writeUInt8(0, 20);
  assert.throws(() => parseChunkTable(h0, { tableOffset: 3000, blobSize: 3247 }), isRule(9));
  // The reference's 32-bit wrap: U = 2^63, C = 1 would pass with Nt = 23 there.
  const wrap = Buffer.from(v2.subarray(0, 23));
  wrap.writeBigUInt64LE(1n << 63n, 8);
  wrap.writeUInt32LE(1, 16);
  assert.throws(() => parseChunkTable(wrap, { tableOffset: 0, blobSize: 31 }), (err: unknown) => isRule(9)(err) && /exceeds 0xFFFFFFFF/.test((err as Error).message));
  const wrap0 = Buffer.from(wrap);
  wrap0.writeUInt8(0, 20);
  assert.throws(() => parseChunkTable(wrap0, { tableOffset: 0, blobSize: 31 }), isRule(9));
});

test('rule 10: BlockOffset at or above 2^63; rule 12: above 2^53-1', () => {
  for (const [value, rule] of [[1n << 63n, 10], [(1n << 64n) - 1n, 10], [1n << 53n, 12], [(1n << 63n) - 1n, 12]] as const) {
    const p = serializeChunkTable({ uncompressedSize: 20, chunkSize: 10, hashAlgo: 0, entries: [{ offset: 0 }, { offset: 5 }] });
    p.writeBigUInt64LE(value, 23 + 8);
    assert.throws(() => parseChunkTable(p, { tableOffset: 100, blobSize: 100 + 8 + p.length }), isRule(rule), String(value));
  }
});

test('rule 11: offsets start at 0, strictly increase, stay below T; empty image has T = 0', () => {
  const mk = (offsets: number[], U = offsets.length * 10) =>
    serializeChunkTable({ uncompressedSize: U, chunkSize: 10, hashAlgo: 0, entries: offsets.map((offset) => ({ offset })) });
  const place = (p: Buffer, T: number) => ({ tableOffset: T, blobSize: T + 8 + p.length });
  assert.throws(() => parseChunkTable(mk([1, 5, 9]), place(mk([1, 5, 9]), 20)), isRule(11));
  assert.throws(() => parseChunkTable(mk([0, 5, 5]), place(mk([0, 5, 5]), 20)), isRule(11));
  assert.throws(() => parseChunkTable(mk([0, 9, 5]), place(mk([0, 9, 5]), 20)), isRule(11));
  assert.throws(() => parseChunkTable(mk([0, 5, 20]), place(mk([0, 5, 20]), 20)), isRule(11));
  assert.throws(() => parseChunkTable(mk([0, 5, 25]), place(mk([0, 5, 25]), 20)), isRule(11));
  assert.throws(() => parseChunkTable(mk([0]), place(mk([0]), 0)), isRule(11));
  assert.throws(() => parseChunkTable(mk([], 0), place(mk([], 0), 5)), isRule(11));
  assert.equal(parseChunkTable(mk([0, 5, 19]), place(mk([0, 5, 19]), 20)).frameLength(2), 1);
});

test('rule 12: blob must end right after the table (or the dm-verity frame), V = T + 8 + Nt, sizes exact', async () => {
  const { blob, result } = await smallBlob();
  const T = result.chunkTableOffset;
  const payload = Buffer.from(blob.subarray(T + 8));
  const place = { tableOffset: T, blobSize: blob.length };
  assert.throws(() => parseChunkTable(payload, { ...place, blobSize: blob.length + 1 }), isRule(12));
  assert.throws(() => parseChunkTable(payload, { ...place, verityOffset: blob.length + 1, blobSize: blob.length + 2000 }), isRule(12));
  assert.throws(() => parseChunkTable(payload, { ...place, tableOffset: 1.5 }), isRule(12));
  // Extra bytes after the table: the declared length does not fill [T, B).
  const extra = Buffer.concat([blob, Buffer.alloc(3)]);
  await assert.rejects(loadChunkTable(desc({ [T_KEY]: String(T), [D_KEY]: result.chunkDigest }, extra.length), memoryReader(extra)), isRule(12));
  // dm-verity offset announced beyond T + 8 + Nt.
  const ver = Buffer.concat([blob, Buffer.alloc(10), encodeSkippableFrame(Buffer.alloc(512))]);
  const verDesc = desc({ [T_KEY]: String(T), [D_KEY]: result.chunkDigest, [VO_KEY]: String(blob.length + 10), [VR_KEY]: GOOD_DIGEST }, ver.length);
  await assert.rejects(loadChunkTable(verDesc, memoryReader(ver)), isRule(12));
  // Descriptor size that is not a safe integer.
  assert.throws(() => parseSeekableAnnotations(desc({ [T_KEY]: '1', [D_KEY]: GOOD_DIGEST }, -1)), isRule(12));
  assert.throws(() => parseSeekableAnnotations(desc({ [T_KEY]: '1', [D_KEY]: GOOD_DIGEST }, 2 ** 53)), isRule(12));
  // U above 2^53-1 with a consistent Nt (HashAlgo 0, C = 2^32-1: about 2^21 entries).
  const C = 0xffffffff;
  const U = 2n ** 53n;
  const n = Number((U + BigInt(C) - 1n) / BigInt(C));
  const big = Buffer.alloc(23 + n * 8);
  big.writeUInt32LE(0xcde4ec67, 0);
  big.writeUInt32LE(1, 4);
  big.writeBigUInt64LE(U, 8);
  big.writeUInt32LE(C, 16);
  assert.throws(() => parseChunkTable(big, { tableOffset: 0, blobSize: 8 + big.length }), isRule(12));
  // A frame far larger than any encoder writes for its chunk (would make readers fetch absurd ranges).
  const huge = serializeChunkTable({ uncompressedSize: 20, chunkSize: 10, hashAlgo: 0, entries: [{ offset: 0 }, { offset: 5 }] });
  assert.throws(() => parseChunkTable(huge, { tableOffset: 10_000_000, blobSize: 10_000_000 + 8 + huge.length }), isRule(12));
});

test('rule 20 (cheap part): a dm-verity frame must fit after the table', async () => {
  const { blob, result } = await smallBlob();
  const T = result.chunkTableOffset;
  const payload = Buffer.from(blob.subarray(T + 8));
  const V = blob.length;
  assert.throws(() => parseChunkTable(payload, { tableOffset: T, blobSize: V + 7, verityOffset: V }), isRule(20));
  assert.throws(() => parseChunkTable(payload, { tableOffset: T, blobSize: V + 8 + 511, verityOffset: V }), isRule(20));
  const ann = { [T_KEY]: String(T), [D_KEY]: result.chunkDigest, [VO_KEY]: String(V), [VR_KEY]: GOOD_DIGEST };
  await assert.rejects(loadChunkTable(desc(ann, V + 4), memoryReader(blob)), isRule(20));
  assert.equal(parseChunkTable(payload, { tableOffset: T, blobSize: V + 8 + 512, verityOffset: V }).verityOffset, V);
});

/** A one-chunk blob whose single frame section is `frame`, vouched for by the table (so SHA-512 passes). */
async function oneFrame(frame: Buffer, size: number, chunkSize = size): Promise<{ table: ChunkTable; blob: Buffer; desc: Descriptor }> {
  const { blob, desc: d } = assembleBlob([frame], size, chunkSize);
  return { table: await loadChunkTable(d, memoryReader(blob)), blob, desc: d };
}

const DATA = makeImage(1000, 77);

test('rule 13: frame bytes must match the table bounds', async () => {
  const { table, blob } = await oneFrame(compressFrame(DATA), 1000);
  const { start, end } = table.frameRange(0);
  assert.throws(() => decodeFrame(blob.subarray(start, end - 1), 0, table), isRule(13));
  assert.throws(() => decodeFrame(blob.subarray(start, end + 1), 0, table), isRule(13));
  assert.deepEqual(decodeFrame(blob.subarray(start, end), 0, table), DATA);
});

test('rule 14: frame SHA-512 mismatch is an IntegrityError raised before decoding', async () => {
  const image = makeImage(9000, 4);
  const { blob, desc: d } = await encodeInMemory(image, { chunkSize: 4096 });
  const table = await loadChunkTable(d, memoryReader(blob));
  const { start, end } = table.frameRange(1);
  const bad = Buffer.from(blob.subarray(start, end));
  bad[bad.length - 1] ^= 0x80;
  assert.throws(() => decodeFrame(bad, 1, table), (err: unknown) => err instanceof IntegrityError && err.subject === 'frame' && err.chunkIndex === 1);
  // A perfectly valid frame for another chunk is still rejected: it is not this chunk's frame.
  const other = compressFrame(image.subarray(4096, 8192), { level: 19 });
  const padded = Buffer.concat([other, Buffer.alloc(Math.max(0, bad.length - other.length))]).subarray(0, bad.length);
  assert.throws(() => decodeFrame(padded, 1, table), IntegrityError);
  // Whole-blob decoders report it too, from a file (before decoding) and from a stream (against the table).
  const corrupt = Buffer.from(blob);
  corrupt[start + 20] ^= 0x01;
  const cdesc = { ...d, digest: `sha256:${createHash('sha256').update(corrupt).digest('hex')}` };
  await assert.rejects(decodeSeekableBlob(streamOf(corrupt, 1000), new CollectingSink(), cdesc), (err: unknown) => isSeekableReadError(err));
});

test('rule 15: zstd errors — bad magic, reserved bit, truncated frame, corrupt block', async () => {
  const good = compressFrame(DATA, { level: 1 });
  const cases: Array<[string, Buffer]> = [
    ['bad magic', Buffer.concat([Buffer.from('28b52ffe', 'hex'), good.subarray(4)])],
    ['reserved bit', (() => { const b = Buffer.from(good); b[4] |= 0x08; return b; })()],
    ['truncated', good.subarray(0, good.length - 5)],
    ['header only', good.subarray(0, 6)],
    ['too short for a header', good.subarray(0, 3)],
    ['corrupt block header', (() => { const b = Buffer.from(good); b[good.length - 8] ^= 0xff; b[8] = 0xff; b[9] = 0xff; b[10] = 0xff; return b; })()],
  ];
  for (const [name, frame] of cases) {
    const { table, blob } = await oneFrame(frame, 1000);
    const { start, end } = table.frameRange(0);
    assert.throws(() => decodeFrame(blob.subarray(start, end), 0, table), isRule(15), name);
  }
});

test('rule 16: exactly one frame, no skippable frame, no dictionary, bounded window', async () => {
  const half = compressFrame(DATA.subarray(0, 500));
  const skippable = encodeSkippableFrame(Buffer.from('hidden'));
  const full = compressFrame(DATA);
  // Dictionary_ID flag set with a non-zero id inserted after the header's fixed part.
  const withDict = (() => {
    const fhd = full[4]!;
    const single = (fhd & 0x20) !== 0;
    const at = single ? 5 : 6;
    return Buffer.concat([full.subarray(0, 4), Buffer.from([fhd | 0x01]), full.subarray(5, at), Buffer.from([7]), full.subarray(at)]);
  })();
  const wide = compressFrame(DATA, { windowLog: 24, contentSize: false });
  const cases: Array<[string, Buffer, RegExp]> = [
    ['two frames', Buffer.concat([half, compressFrame(DATA.subarray(500))]), /extra data after the frame/],
    ['skippable frame first', Buffer.concat([skippable, full]), /skippable/],
    ['skippable frame after', Buffer.concat([full, skippable]), /extra data after the frame/],
    ['dictionary id', withDict, /Dictionary_ID 7/],
    ['window 16 MiB > max(8 MiB, C)', wide, /window 16777216 > max\(8 MiB, C\) = 8388608/],
  ];
  for (const [name, frame, message] of cases) {
    const { table, blob } = await oneFrame(frame, 1000);
    const { start, end } = table.frameRange(0);
    assert.throws(() => decodeFrame(blob.subarray(start, end), 0, table), (e: unknown) => isRule(16)(e) && message.test((e as Error).message), name);
  }
  // The same 16 MiB window is fine when C is 16 MiB or more (the last chunk may be short).
  const { table, blob } = await oneFrame(wide, 1000, 16 * 1024 * 1024);
  assert.deepEqual(decodeFrame(blob.subarray(0, table.frameRange(0).end), 0, table), DATA);
});

test('rule 17: content size, decoded length and XXH64 must match size_i', async () => {
  const cases: Array<[string, Buffer]> = [
    ['Frame_Content_Size 999', compressFrame(DATA.subarray(0, 999))],
    ['decodes to 999 bytes (no FCS)', compressFrame(DATA.subarray(0, 999), { contentSize: false })],
    ['decodes to 1001 bytes (no FCS)', compressFrame(Buffer.concat([DATA, Buffer.from([1])]), { contentSize: false })],
    ['decodes to 1 MiB (no FCS)', compressFrame(Buffer.alloc(1 << 20), { contentSize: false })],
    ['XXH64 mismatch', (() => { const b = compressFrame(DATA); b[b.length - 1] ^= 0x55; return b; })()],
  ];
  for (const [name, frame] of cases) {
    const { table, blob } = await oneFrame(frame, 1000);
    assert.throws(() => decodeFrame(blob.subarray(0, table.frameRange(0).end), 0, table), isRule(17), name);
  }
  // Frames without Frame_Content_Size or without a checksum are fine when they decode to size_i.
  for (const frame of [compressFrame(DATA, { contentSize: false }), compressFrame(DATA, { checksum: false })]) {
    const { table, blob } = await oneFrame(frame, 1000);
    assert.deepEqual(decodeFrame(blob.subarray(0, table.frameRange(0).end), 0, table), DATA);
  }
});

test('rule 18: whole-blob decode checks size, DiffID and blob digest', async (t) => {
  const image = makeImage(20_000, 8);
  const { blob, result, desc: d } = await encodeInMemory(image, { chunkSize: 4096 });
  const dir = await tempDir(t);
  const path = join(dir, 'blob');
  await writeFile(path, blob);
  const wrongDiff = `sha256:${'1'.repeat(64)}`;
  await assert.rejects(decodeSeekableBlob(path, new CollectingSink(), d, { diffId: wrongDiff }), isRule(18));
  await assert.rejects(decodeSeekableBlob(streamOf(blob), new CollectingSink(), d, { diffId: wrongDiff }), isRule(18));
  const wrongDigest = { ...d, digest: `sha256:${'2'.repeat(64)}` };
  await assert.rejects(decodeSeekableBlob(path, new CollectingSink(), wrongDigest), isRule(18));
  await assert.rejects(decodeSeekableBlob(streamOf(blob), new CollectingSink(), wrongDigest), isRule(18));
  // Skipping the blob digest check still verifies every frame and the DiffID.
  await decodeSeekableBlob(path, new CollectingSink(), wrongDigest, { verifyBlobDigest: false, diffId: result.diffId });
  // Blob shorter or longer than its descriptor.
  await assert.rejects(decodeSeekableBlob(streamOf(blob.subarray(0, blob.length - 1)), new CollectingSink(), d), (e: unknown) => e instanceof SeekableFormatError);
  await assert.rejects(decodeSeekableBlob(streamOf(Buffer.concat([blob, Buffer.alloc(1)])), new CollectingSink(), d), isRule(18));
  await writeFile(join(dir, 'short'), blob.subarray(0, blob.length - 1));
  await assert.rejects(decodeSeekableBlob(join(dir, 'short'), new CollectingSink(), d), isRule(18));
  // A malformed expected DiffID is input too.
  await assert.rejects(decodeSeekableBlob(path, new CollectingSink(), d, { diffId: 'sha256:XYZ' }), isRule(18));
});

test('rule 19: HashAlgo 0 tables are not served lazily; whole-blob decode may use them', async () => {
  const image = makeImage(6000, 6);
  const frames = [0, 1].map((i) => compressFrame(image.subarray(i * 4096, (i + 1) * 4096)));
  const { blob, desc: d } = assembleBlob(frames, 6000, 4096, { hashAlgo: 0 });
  const table = await loadChunkTable(d, memoryReader(blob));
  assert.equal(table.verifiable, false);
  const f0 = blob.subarray(0, table.frameRange(0).end);
  assert.throws(() => decodeFrame(f0, 0, table), isRule(19));
  assert.deepEqual(decodeFrame(f0, 0, table, { allowUnverified: true }), image.subarray(0, 4096));
  const sink = new CollectingSink();
  await decodeSeekableBlob(streamOf(blob), sink, d, { diffId: `sha256:${createHash('sha256').update(image).digest('hex')}` });
  assert.deepEqual(sink.bytes(), image);
});

test('stream and file whole-blob decoders agree on frame-level violations', async (t) => {
  const dir = await tempDir(t);
  const image = makeImage(3000, 12);
  const good = [compressFrame(image.subarray(0, 1024)), compressFrame(image.subarray(1024, 2048)), compressFrame(image.subarray(2048))];
  const variants: Array<[string, Buffer[], number]> = [
    ['two frames in section 1', [good[0]!, Buffer.concat([compressFrame(image.subarray(1024, 1500)), compressFrame(image.subarray(1500, 2048))]), good[2]!], 16],
    ['skippable frame in section 1', [good[0]!, Buffer.concat([good[1]!, encodeSkippableFrame(Buffer.from('x'))]), good[2]!], 16],
    ['frame 1 decodes short', [good[0]!, compressFrame(image.subarray(1024, 2000), { contentSize: false }), good[2]!], 17],
    ['frame 1 has wrong FCS', [good[0]!, compressFrame(image.subarray(1024, 2000)), good[2]!], 17],
    ['frame 2 truncated', [good[0]!, good[1]!, good[2]!.subarray(0, good[2]!.length - 2)], 15],
  ];
  for (const [name, frames, rule] of variants) {
    const { blob, desc: d } = assembleBlob(frames, 3000, 1024);
    const path = join(dir, 'blob');
    await writeFile(path, blob);
    await assert.rejects(decodeSeekableBlob(path, new CollectingSink(), d), isRule(rule), `file: ${name}`);
    await assert.rejects(decodeSeekableBlob(streamOf(blob, 100), new CollectingSink(), d), isRule(rule), `stream: ${name}`);
  }
});
