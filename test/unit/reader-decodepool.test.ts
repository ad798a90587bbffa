// Tests of src/reader/decodepool: worker threads verify and decode frames exactly like the chunktable's
// decodeFrame, move memory by transfer, keep IntegrityError and SeekableFormatError distinct across the thread
// boundary, decode tiny chunks inline, and reject pending work on close.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { decodeFrame, IntegrityError, loadChunkTable, SeekableFormatError } from '../../src/chunktable/index.js';
import type { ChunkTable } from '../../src/chunktable/index.js';
import { deserializeError, releaseArrayBuffer, serializeError } from '../../src/reader/decodeprotocol.js';
import { DecodePool, DecodeWorkerError, InlineDecoder } from '../../src/reader/index.js';
import { assembleBlob, compressFrame, encodeInMemory, makeImage, memoryReader } from '../fixtures/chunktable/helpers.js';

const KiB = 1024;

async function encoded(size: number, chunkSize: number): Promise<{ image: Buffer; blob: Buffer; table: ChunkTable }> {
  const image = makeImage(size, 21);
  const { blob, desc } = await encodeInMemory(image, { chunkSize });
  return { image, blob, table: await loadChunkTable(desc, memoryReader(blob)) };
}

/** A fresh buffer holding the frame bytes of chunk i (owns its ArrayBuffer, so it can be transferred). */
function frameCopy(blob: Buffer, table: ChunkTable, i: number): Buffer {
  const { start, end } = table.frameRange(i);
  const out = Buffer.from(new ArrayBuffer(end - start));
  blob.copy(out, 0, start, end);
  return out;
}

describe('DecodePool', () => {
  test('decodes every chunk like decodeFrame, with concurrent jobs spread over the workers', async (t) => {
    const { image, blob, table } = await encoded(1024 * KiB + 123, 64 * KiB);
    const pool = new DecodePool({ workers: 2, inlineMaxChunkBytes: 0 });
    t.after(() => pool.close());
    const jobs = Array.from({ length: table.chunkCount }, (_, i) => pool.decode(table, i, frameCopy(blob, table, i), ` (test)`));
    const chunks = await Promise.all(jobs);
    chunks.forEach((chunk, i) => {
      assert.ok(chunk.equals(decodeFrame(frameCopy(blob, table, i), i, table)), `chunk ${i} like decodeFrame`);
      assert.ok(chunk.equals(image.subarray(i * 64 * KiB, i * 64 * KiB + table.chunkLength(i))), `chunk ${i} bytes`);
    });
    assert.equal(pool.workerJobs, table.chunkCount);
    assert.ok(pool.threads <= 2 && pool.threads >= 1);
  });

  test('a frame that owns its ArrayBuffer is transferred; a view into a larger buffer is copied', async (t) => {
    const { blob, table } = await encoded(256 * KiB, 64 * KiB);
    const pool = new DecodePool({ workers: 1, inlineMaxChunkBytes: 0 });
    t.after(() => pool.close());
    const owned = frameCopy(blob, table, 0);
    const length = owned.length;
    const decoded = await pool.decode(table, 0, owned, '');
    assert.equal(owned.buffer.byteLength, 0, 'the owned frame was transferred (detached here)');
    assert.equal(decoded.length, table.chunkLength(0));
    assert.ok(length > 0);
    const { start, end } = table.frameRange(1);
    const view = blob.subarray(start, end);
    await pool.decode(table, 1, view, '');
    assert.equal(blob.buffer.byteLength > 0, true, 'the shared blob buffer is untouched');
    assert.equal(view.length, end - start);
  });

  test('a SHA-512 mismatch arrives as IntegrityError naming the chunk', async (t) => {
    const { blob, table } = await encoded(256 * KiB, 64 * KiB);
    const pool = new DecodePool({ workers: 2, inlineMaxChunkBytes: 0 });
    t.after(() => pool.close());
    const frame = frameCopy(blob, table, 2);
    frame[frame.length >> 1]! ^= 1;
    await assert.rejects(pool.decode(table, 2, frame, ' (layer sha256:abc)'), (err: unknown) => {
      assert.ok(err instanceof IntegrityError, `got ${String(err)}`);
      assert.ok(!(err instanceof SeekableFormatError));
      assert.equal(err.subject, 'frame');
      assert.equal(err.chunkIndex, 2);
      assert.match(err.message, /chunk 2 \(layer sha256:abc\): frame SHA-512 mismatch/);
      return true;
    });
    // The pool keeps working after a failed job.
    assert.equal((await pool.decode(table, 1, frameCopy(blob, table, 1), '')).length, table.chunkLength(1));
  });

  test('a well-hashed but broken frame arrives as SeekableFormatError with its rule', async (t) => {
    const C = 64 * KiB;
    const good = compressFrame(Buffer.alloc(C, 1));
    const garbage = Buffer.concat([good.subarray(0, 12), Buffer.alloc(50, 0xee)]);
    const wrongSize = compressFrame(Buffer.alloc(C - 1, 2));
    const { blob, desc } = assembleBlob([good, garbage, wrongSize, good], 4 * C, C);
    const table = await loadChunkTable(desc, memoryReader(blob));
    const pool = new DecodePool({ workers: 1, inlineMaxChunkBytes: 0 });
    t.after(() => pool.close());
    const inline = new InlineDecoder();
    // Chunk 1: garbage after a valid header (rules 15/16, as the chunktable decides); chunk 2: wrong size (17).
    for (const [index, rule] of [
      [1, undefined],
      [2, 17],
    ] as const) {
      const frame = blob.subarray(table.frameRange(index).start, table.frameRange(index).end);
      let inlineError: unknown;
      await inline.decode(table, index, frame, '').catch((err: unknown) => (inlineError = err));
      await assert.rejects(pool.decode(table, index, frame, ''), (err: unknown) => {
        assert.ok(err instanceof SeekableFormatError, `got ${String(err)}`);
        assert.ok(inlineError instanceof SeekableFormatError);
        assert.equal(err.rule, rule ?? inlineError.rule);
        assert.equal(err.message, inlineError.message, 'same message as the inline decoder');
        return true;
      });
    }
    // A frame whose length disagrees with the table: rule 13, before hashing.
    await assert.rejects(pool.decode(table, 0, good.subarray(1), ''), (err: unknown) => err instanceof SeekableFormatError && err.rule === 13);
  });

  test('small chunks are decoded inline, without a worker', async (t) => {
    const { image, blob, table } = await encoded(40 * KiB, 4 * KiB);
    const pool = new DecodePool({ workers: 1 });
    t.after(() => pool.close());
    const chunk = await pool.decode(table, 3, frameCopy(blob, table, 3), '');
    assert.ok(chunk.equals(image.subarray(12 * KiB, 16 * KiB)));
    assert.equal(pool.workerJobs, 0);
    assert.equal(pool.threads, 0);
  });

  test('close rejects queued jobs and refuses new ones', async () => {
    const { blob, table } = await encoded(512 * KiB, 64 * KiB);
    const pool = new DecodePool({ workers: 1, inlineMaxChunkBytes: 0 });
    const jobs = Array.from({ length: 8 }, (_, i) => pool.decode(table, i, frameCopy(blob, table, i), ''));
    const settled = Promise.allSettled(jobs);
    await pool.close();
    const results = await settled;
    assert.ok(results.some((r) => r.status === 'rejected' && r.reason instanceof DecodeWorkerError));
    await assert.rejects(pool.decode(table, 0, frameCopy(blob, table, 0), ''), DecodeWorkerError);
  });
});

/** A fresh buffer (owning its ArrayBuffer) holding the frames of chunks first..last, as one Range request returns them. */
function runCopy(blob: Buffer, table: ChunkTable, first: number, last: number): { bytes: Buffer; start: number } {
  const start = table.frameRange(first).start;
  const end = table.frameRange(last).end;
  const bytes = Buffer.from(new ArrayBuffer(end - start));
  blob.copy(bytes, 0, start, end);
  return { bytes, start };
}

function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

describe('DecodePool runs and hashing', () => {
  test('decodeFrames decodes a whole run in one job, with each chunk\'s SHA-256, taking the run\'s memory', async (t) => {
    const { image, blob, table } = await encoded(512 * KiB + 77, 64 * KiB);
    const pool = new DecodePool({ workers: 2, inlineMaxChunkBytes: 0 });
    t.after(() => pool.close());
    const { bytes, start } = runCopy(blob, table, 2, 6);
    const frames = [2, 3, 4, 5, 6].map((index) => ({ index, offset: table.frameRange(index).start - start, context: ` (run ${index})` }));
    const results = await Promise.all(pool.decodeFrames(table, frames, bytes, { sha256: true }));
    assert.equal(bytes.buffer.byteLength, 0, 'the run buffer was transferred to the worker');
    results.forEach(({ data, sha256: digest }, k) => {
      const i = frames[k]!.index;
      const want = image.subarray(i * 64 * KiB, i * 64 * KiB + table.chunkLength(i));
      assert.ok(data.equals(want), `chunk ${i} bytes`);
      assert.ok(digest !== undefined && Buffer.from(digest).equals(sha256(want)), `chunk ${i} SHA-256`);
    });
    assert.equal(pool.workerJobs, frames.length);
    // Without sha256 asked for, none is given.
    const again = runCopy(blob, table, 0, 1);
    const plain = await Promise.all(pool.decodeFrames(table, [0, 1].map((index) => ({ index, offset: table.frameRange(index).start - again.start, context: '' })), again.bytes));
    assert.ok(plain.every((r) => r.sha256 === undefined));
  });

  test('decodeFrames on a view into a larger buffer copies it and leaves the buffer alone', async (t) => {
    const { image, blob, table } = await encoded(256 * KiB, 64 * KiB);
    const pool = new DecodePool({ workers: 1, inlineMaxChunkBytes: 0 });
    t.after(() => pool.close());
    const start = table.frameRange(1).start;
    const view = blob.subarray(start, table.frameRange(2).end);
    const results = await Promise.all(pool.decodeFrames(table, [1, 2].map((index) => ({ index, offset: table.frameRange(index).start - start, context: '' })), view));
    assert.ok(blob.buffer.byteLength > 0);
    assert.equal(view.length, table.frameRange(2).end - start);
    assert.ok(results[0]!.data.equals(image.subarray(64 * KiB, 128 * KiB)));
    assert.ok(results[1]!.data.equals(image.subarray(128 * KiB, 192 * KiB)));
  });

  test('one bad frame of a run fails alone, with its own error; the others decode', async (t) => {
    const { image, blob, table } = await encoded(256 * KiB, 64 * KiB);
    const pool = new DecodePool({ workers: 1, inlineMaxChunkBytes: 0 });
    t.after(() => pool.close());
    const { bytes, start } = runCopy(blob, table, 0, 3);
    bytes[table.frameRange(2).start - start + 5]! ^= 1;
    const settled = await Promise.allSettled(
      pool.decodeFrames(table, [0, 1, 2, 3].map((index) => ({ index, offset: table.frameRange(index).start - start, context: ' (x)' })), bytes, { sha256: true }),
    );
    settled.forEach((r, i) => {
      if (i === 2) {
        assert.equal(r.status, 'rejected');
        assert.ok(r.status === 'rejected' && r.reason instanceof IntegrityError && r.reason.chunkIndex === 2);
      } else {
        assert.equal(r.status, 'fulfilled');
        assert.ok(r.status === 'fulfilled' && r.value.data.equals(image.subarray(i * 64 * KiB, (i + 1) * 64 * KiB)));
      }
    });
    // A run whose bytes end early: the cut frame fails rule 13, the whole ones decode.
    const short = runCopy(blob, table, 0, 1);
    const cut = Buffer.from(new ArrayBuffer(short.bytes.length - 3));
    short.bytes.copy(cut, 0, 0, cut.length);
    const results = await Promise.allSettled(pool.decodeFrames(table, [0, 1].map((index) => ({ index, offset: table.frameRange(index).start - short.start, context: '' })), cut));
    assert.equal(results[0]!.status, 'fulfilled');
    assert.ok(results[1]!.status === 'rejected' && results[1].reason instanceof SeekableFormatError && results[1].reason.rule === 13);
  });

  test('sha256 hashes off the main thread and hands the same bytes back; small or shared bytes are hashed inline', async (t) => {
    const pool = new DecodePool({ workers: 1, inlineMaxChunkBytes: 4 * KiB });
    t.after(() => pool.close());
    const data = Buffer.from(new ArrayBuffer(300 * KiB));
    for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
    const copy = Buffer.from(data);
    const hashed = await pool.sha256(data, 96);
    assert.equal(data.buffer.byteLength, 0, 'the bytes were taken');
    assert.ok(hashed.bytes.equals(copy), 'and handed back unchanged');
    assert.ok(Buffer.from(hashed.sha256).equals(sha256(copy.subarray(96))));
    assert.equal(pool.workerJobs, 1);
    const shared = copy.subarray(10, 200 * KiB);
    const inlineHashed = await pool.sha256(shared, 0);
    assert.equal(inlineHashed.bytes, shared, 'a view of a larger buffer is hashed in place');
    assert.ok(Buffer.from(inlineHashed.sha256).equals(sha256(shared)));
    const small = Buffer.from(new ArrayBuffer(1000));
    assert.ok(Buffer.from((await pool.sha256(small, 0)).sha256).equals(sha256(small)));
    assert.equal(pool.workerJobs, 1, 'neither went to a worker');
    await assert.rejects(pool.sha256(small, 2000), RangeError);
  });

  test('InlineDecoder offers the same run decoding and hashing on the calling thread', async () => {
    const { image, blob, table } = await encoded(128 * KiB, 64 * KiB);
    const inline = new InlineDecoder();
    const { bytes, start } = runCopy(blob, table, 0, 1);
    const results = await Promise.all(inline.decodeFrames(table, [0, 1].map((index) => ({ index, offset: table.frameRange(index).start - start, context: '' })), bytes, { sha256: true }));
    assert.ok(results[1]!.data.equals(image.subarray(64 * KiB)));
    assert.ok(Buffer.from(results[1]!.sha256!).equals(sha256(image.subarray(64 * KiB))));
    const hashed = await inline.sha256(image, 5);
    assert.equal(hashed.bytes, image);
    assert.ok(Buffer.from(hashed.sha256).equals(sha256(image.subarray(5))));
  });

  test('releaseArrayBuffer frees memory at once (views become empty)', () => {
    const buffer = new ArrayBuffer(1024 * KiB);
    const view = new Uint8Array(buffer);
    releaseArrayBuffer(buffer);
    assert.equal(buffer.byteLength, 0);
    assert.equal(view.length, 0);
    releaseArrayBuffer(buffer); // already detached: no error
  });
});

describe('error serialization', () => {
  test('round trips keep class, message and fields', () => {
    const integrity = deserializeError(serializeError(new IntegrityError('chunk 4: bad', 'frame', 4)));
    assert.ok(integrity instanceof IntegrityError);
    assert.equal(integrity.message, 'chunk 4: bad');
    assert.equal(integrity.chunkIndex, 4);
    const original = new SeekableFormatError(16, 'chunk 1: window too large');
    const format = deserializeError(serializeError(original));
    assert.ok(format instanceof SeekableFormatError);
    assert.equal(format.rule, 16);
    assert.equal(format.message, original.message);
    const range = deserializeError(serializeError(new RangeError('out of range')));
    assert.ok(range instanceof RangeError);
    const other = deserializeError(serializeError(new TypeError('odd')));
    assert.equal(other.name, 'TypeError');
    assert.equal(other.message, 'odd');
  });
});
