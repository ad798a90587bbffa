// Mutation fuzzing of every reader in src/chunktable: starting from valid blobs, tables and frames, thousands
// of bit flips, byte sets, truncations, extensions, length-field and annotation edits. Only the documented
// error classes (SeekableFormatError, IntegrityError) may escape, and whatever decodes must equal the original
// bytes exactly.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  decodeFrame,
  decodeSeekableBlob,
  decodeSequential,
  isSeekableReadError,
  loadChunkTable,
  mapImageRange,
  parseChunkTable,
  parseSeekableAnnotations,
  SeekableFormatError,
  IntegrityError,
} from '../../src/chunktable/index.js';
import type { ChunkTable } from '../../src/chunktable/index.js';
import type { Descriptor } from '../../src/oci/types.js';
import { tempDir } from '../helpers/tmp.js';
import {
  assembleBlob,
  CollectingSink,
  compressFrame,
  encodeInMemory,
  makeImage,
  memoryReader,
  prng,
  randInt,
  streamOf,
} from '../fixtures/chunktable/helpers.js';

const T_KEY = 'dev.containerd.erofs.zstd.chunk_table_offset';
const D_KEY = 'dev.containerd.erofs.zstd.chunk_digest';
const VO_KEY = 'dev.containerd.erofs.dmverity.offset';
const VR_KEY = 'dev.containerd.erofs.dmverity.root_digest';

const LAZY_ITERATIONS = 20000;
const PARSE_ITERATIONS = 20000;
const FRAME_ITERATIONS = 10000;
const WHOLE_STREAM_ITERATIONS = 2000;
const WHOLE_FILE_ITERATIONS = 300;
const SEQUENTIAL_ITERATIONS = 1500;

interface Base {
  name: string;
  image: Buffer;
  blob: Buffer;
  desc: Descriptor;
  diffId: string;
  /** Offsets worth aiming at: frame starts, table header fields, entry offsets, dm-verity header. */
  hot: number[];
}

async function makeBases(): Promise<Base[]> {
  const specs: Array<{ name: string; size: number; chunkSize: number; verity?: boolean; contentSize?: boolean }> = [
    { name: '5 chunks', size: 5000, chunkSize: 1024 },
    { name: 'single chunk', size: 3000, chunkSize: 4096 },
    { name: 'empty', size: 0, chunkSize: 4096 },
    { name: 'dm-verity', size: 9000, chunkSize: 2048, verity: true },
    { name: 'no content size', size: 2500, chunkSize: 1000, contentSize: false },
  ];
  const bases: Base[] = [];
  for (const s of specs) {
    const image = makeImage(s.size, s.size + 1);
    const { blob, result, desc } = await encodeInMemory(image, {
      chunkSize: s.chunkSize,
      ...(s.verity ? { verity: { blockSize: 512 } } : {}),
      ...(s.contentSize === false ? { contentSize: false } : {}),
    });
    const T = result.chunkTableOffset;
    const hot = [0, 4, 5, 6, T, T + 4, T + 8, T + 12, T + 16, T + 24, T + 28];
    for (let i = 0; i < result.chunkCount; i++) hot.push(T + 8 + 23 + i * 72, T + 8 + 23 + i * 72 + 8);
    for (let off = 0, i = 0; i < result.chunkCount; i++) {
      // Frame starts are the entry offsets; read them back from the table.
      off = Number(blob.readBigUInt64LE(T + 8 + 23 + i * 72));
      hot.push(off, off + 4, off + 5, off + 6);
    }
    if (result.verity) hot.push(result.verity.offset, result.verity.offset + 4, result.verity.offset + 8);
    bases.push({ name: s.name, image, blob, desc, diffId: result.diffId, hot });
  }
  return bases;
}

/** Applies one random mutation to a copy of `bytes`. */
function mutateBytes(rand: () => number, bytes: Buffer, hot: number[]): { bytes: Buffer; what: string } {
  const b = Buffer.from(bytes);
  const pos = () => {
    if (b.length === 0) return 0;
    if (rand() < 0.5 && hot.length > 0) {
      const h = hot[randInt(rand, hot.length)]! + randInt(rand, 9) - 4;
      return Math.min(Math.max(h, 0), b.length - 1);
    }
    return randInt(rand, b.length);
  };
  const op = randInt(rand, 10);
  switch (op) {
    case 0: {
      const p = pos();
      if (b.length) b[p]! ^= 1 << randInt(rand, 8);
      return { bytes: b, what: `flip bit at ${p}` };
    }
    case 1: {
      const p = pos();
      const v = [0, 0xff, randInt(rand, 256)][randInt(rand, 3)]!;
      if (b.length) b[p] = v;
      return { bytes: b, what: `set byte ${p} = ${v}` };
    }
    case 2: {
      const n = randInt(rand, b.length + 1);
      return { bytes: b.subarray(0, n), what: `truncate to ${n}` };
    }
    case 3: {
      const extra = Buffer.from(Array.from({ length: 1 + randInt(rand, 80) }, () => randInt(rand, 256)));
      return { bytes: Buffer.concat([b, extra]), what: `extend by ${extra.length}` };
    }
    case 4: {
      const p = pos();
      const n = 1 + randInt(rand, 16);
      return { bytes: Buffer.concat([b.subarray(0, p), b.subarray(p + n)]), what: `delete ${n} at ${p}` };
    }
    case 5: {
      const p = pos();
      const ins = Buffer.from(Array.from({ length: 1 + randInt(rand, 16) }, () => randInt(rand, 256)));
      return { bytes: Buffer.concat([b.subarray(0, p), ins, b.subarray(p)]), what: `insert ${ins.length} at ${p}` };
    }
    case 6: {
      const p = pos();
      if (p + 4 > b.length) return { bytes: b, what: 'noop' };
      const old = b.readUInt32LE(p);
      const v = [0, 1, 0xffffffff, old + 1, old - 1, randInt(rand, 2 ** 32), old * 2][randInt(rand, 7)]! >>> 0;
      b.writeUInt32LE(v, p);
      return { bytes: b, what: `u32 at ${p} = ${v}` };
    }
    case 7: {
      const p = pos();
      if (p + 8 > b.length) return { bytes: b, what: 'noop' };
      const old = b.readBigUInt64LE(p);
      const choices = [0n, 1n << 53n, (1n << 53n) - 1n, 1n << 63n, (1n << 64n) - 1n, old + 1n, old > 0n ? old - 1n : 0n, old << 32n];
      const v = BigInt.asUintN(64, choices[randInt(rand, choices.length)]!);
      b.writeBigUInt64LE(v, p);
      return { bytes: b, what: `u64 at ${p} = ${v}` };
    }
    default: {
      const n = 2 + randInt(rand, 7);
      const at: number[] = [];
      for (let k = 0; k < n && b.length; k++) {
        const p = pos();
        at.push(p);
        b[p]! ^= 1 + randInt(rand, 255);
      }
      return { bytes: b, what: `scramble ${at.join(',')}` };
    }
  }
}

/** Applies one random edit to the descriptor's annotations or size. */
function mutateDesc(rand: () => number, desc: Descriptor, blobLength: number): { desc: Descriptor; what: string } {
  const ann: Record<string, string> = { ...(desc.annotations ?? {}) };
  const d: Descriptor = { ...desc, annotations: ann };
  const T = Number(ann[T_KEY] ?? 0);
  const op = randInt(rand, 9);
  switch (op) {
    case 0: {
      const v = [T + 1, T - 1, T + 8, 0, blobLength, blobLength - 8, randInt(rand, blobLength + 10)][randInt(rand, 7)]!;
      ann[T_KEY] = String(v);
      return { desc: d, what: `T = ${v}` };
    }
    case 1: {
      const v = ['', '+1', '01', '-0', ' 7', '9223372036854775807', '18446744073709551616', '1e2', `${T}.0`][randInt(rand, 9)]!;
      ann[T_KEY] = v;
      return { desc: d, what: `T = ${JSON.stringify(v)}` };
    }
    case 2: {
      const digest = ann[D_KEY] ?? '';
      const p = 7 + randInt(rand, Math.max(1, digest.length - 7));
      const c = '0123456789abcdefA'[randInt(rand, 17)]!;
      ann[D_KEY] = digest.slice(0, p) + c + digest.slice(p + 1);
      return { desc: d, what: `digest[${p}] = ${c}` };
    }
    case 3: {
      const key = [T_KEY, D_KEY, VO_KEY, VR_KEY][randInt(rand, 4)]!;
      delete ann[key];
      return { desc: d, what: `delete ${key}` };
    }
    case 4: {
      const v = ann[VO_KEY] !== undefined ? Number(ann[VO_KEY]) + randInt(rand, 17) - 8 : blobLength - 520;
      ann[VO_KEY] = String(Math.max(0, v));
      ann[VR_KEY] ??= `sha512:${'1'.repeat(128)}`;
      return { desc: d, what: `V = ${ann[VO_KEY]}` };
    }
    case 5: {
      ann[VR_KEY] = [`sha256:${'1'.repeat(64)}`, '', 'sha512:zz', `sha512:${'F'.repeat(128)}`][randInt(rand, 4)]!;
      return { desc: d, what: `root = ${ann[VR_KEY]}` };
    }
    case 6: {
      const v = [blobLength + 1, blobLength - 1, 0, blobLength * 2, -1, 2 ** 53, 1.5][randInt(rand, 7)]!;
      d.size = v;
      return { desc: d, what: `size = ${v}` };
    }
    case 7: {
      ann[T_KEY] = String(randInt(rand, 2 ** 40));
      return { desc: d, what: `T = ${ann[T_KEY]}` };
    }
    default: {
      const v = ['application/vnd.erofs.layer.v1', 'application/vnd.erofs.layer.v1+zstd+x'][randInt(rand, 2)]!;
      d.mediaType = v;
      return { desc: d, what: `mediaType = ${v}` };
    }
  }
}

/** Collects escaped error kinds and unexpected failures. */
class Ledger {
  readonly rules = new Map<string, number>();
  readonly unexpected: string[] = [];
  accepted = 0;

  record(err: unknown, what: string): void {
    if (err instanceof SeekableFormatError) this.bump(`rule ${err.rule}`);
    else if (err instanceof IntegrityError) this.bump(`integrity ${err.subject}`);
    else if (this.unexpected.length < 20) this.unexpected.push(`${what}: ${err instanceof Error ? err.stack : String(err)}`);
    assert.equal(isSeekableReadError(err), err instanceof SeekableFormatError || err instanceof IntegrityError);
  }

  bump(key: string): void {
    this.rules.set(key, (this.rules.get(key) ?? 0) + 1);
  }

  summary(): string {
    return `accepted ${this.accepted}; ${[...this.rules].sort().map(([k, v]) => `${k}: ${v}`).join(', ')}`;
  }

  check(minKinds: number): void {
    assert.deepEqual(this.unexpected, [], 'only documented error classes may escape');
    assert.ok(this.rules.size >= minKinds, `fuzzing reached only ${[...this.rules.keys()].join(', ')}`);
  }
}

function chunkOf(image: Buffer, table: ChunkTable, i: number): Buffer {
  return image.subarray(i * table.chunkSize, i * table.chunkSize + table.chunkLength(i));
}

test('fuzz: lazy path (annotations → loadChunkTable → decodeFrame / range mapping) never misbehaves', async (t) => {
  const bases = await makeBases();
  const rand = prng(20240611);
  const ledger = new Ledger();
  for (let iter = 0; iter < LAZY_ITERATIONS; iter++) {
    const base = bases[iter % bases.length]!;
    let blob = base.blob;
    let desc = base.desc;
    const what: string[] = [base.name];
    const mode = rand();
    if (mode < 0.75) {
      const m = mutateBytes(rand, blob, base.hot);
      blob = m.bytes;
      what.push(m.what);
    }
    if (mode >= 0.6) {
      const m = mutateDesc(rand, desc, blob.length);
      desc = m.desc;
      what.push(m.what);
    }
    const label = what.join(' / ');
    try {
      const verdict = parseSeekableAnnotations(desc);
      if (verdict.kind !== 'seekable') {
        ledger.bump(verdict.kind);
        continue;
      }
      const table = await loadChunkTable(verdict, memoryReader(blob));
      let ok = 0;
      for (let i = 0; i < table.chunkCount; i++) {
        const { start, end } = table.frameRange(i);
        try {
          const data = decodeFrame(blob.subarray(start, end), i, table);
          assert.ok(data.equals(chunkOf(base.image, table, i)), `${label}: chunk ${i} decoded to different bytes`);
          ok++;
        } catch (err) {
          if (err instanceof assert.AssertionError) throw err;
          ledger.record(err, `${label} (chunk ${i})`);
        }
      }
      if (ok === table.chunkCount && table.uncompressedSize > 0) {
        const off = randInt(rand, table.uncompressedSize);
        const len = randInt(rand, table.uncompressedSize - off + 1);
        const out = Buffer.alloc(len);
        for (const s of mapImageRange(table, off, len)) {
          const data = decodeFrame(blob.subarray(s.frame.start, s.frame.end), s.index, table);
          data.copy(out, s.outputOffset, s.lo, s.hi);
        }
        assert.ok(out.equals(base.image.subarray(off, off + len)), `${label}: range ${off}+${len}`);
      }
      ledger.accepted++;
    } catch (err) {
      if (err instanceof assert.AssertionError) throw err;
      ledger.record(err, label);
    }
  }
  t.diagnostic(ledger.summary());
  ledger.check(8);
  assert.ok(ledger.accepted > 0);
});

test('fuzz: parseChunkTable on mutated payloads throws only SeekableFormatError and returns sane tables', async (t) => {
  const bases = await makeBases();
  const rand = prng(7);
  const ledger = new Ledger();
  const seeds = bases.map((b) => {
    const T = Number(b.desc.annotations![T_KEY]);
    const V = b.desc.annotations![VO_KEY] === undefined ? undefined : Number(b.desc.annotations![VO_KEY]);
    const payload = b.blob.subarray(T + 8, V ?? b.blob.length);
    const hot = [4, 8, 12, 16, 20, 21, 22, ...Array.from({ length: 8 }, (_, i) => 23 + i * 72)];
    return { T, V, B: b.blob.length, payload, hot };
  });
  for (let iter = 0; iter < PARSE_ITERATIONS; iter++) {
    const s = seeds[iter % seeds.length]!;
    const m = mutateBytes(rand, s.payload, s.hot);
    const delta = m.bytes.length - s.payload.length;
    // Keep the placement consistent with the new length half of the time, so the deeper checks run.
    const consistent = rand() < 0.5;
    const placement = {
      tableOffset: s.T,
      blobSize: consistent ? s.B + delta : s.B,
      ...(s.V !== undefined ? { verityOffset: consistent ? s.V + delta : s.V } : {}),
    };
    try {
      const t = parseChunkTable(m.bytes, placement);
      let sum = 0;
      let previousEnd = 0;
      for (let i = 0; i < t.chunkCount; i++) {
        const r = t.frameRange(i);
        assert.ok(r.start === previousEnd && r.end > r.start && r.end <= t.tableOffset, m.what);
        previousEnd = r.end;
        sum += t.chunkLength(i);
      }
      assert.equal(sum, t.uncompressedSize, m.what);
      assert.equal(previousEnd, t.tableOffset, m.what);
      ledger.accepted++;
    } catch (err) {
      if (err instanceof assert.AssertionError) throw err;
      assert.ok(err instanceof SeekableFormatError, `${m.what}: ${String(err)}`);
      ledger.record(err, m.what);
    }
  }
  t.diagnostic(ledger.summary());
  ledger.check(6);
  assert.ok(ledger.accepted > 0, 'some mutations (e.g. in checksums) must still parse');
});

test('fuzz: frames vouched for by their table (SHA-512 passes) decode exactly or fail with a rule', async (t) => {
  const rand = prng(99);
  const ledger = new Ledger();
  const data = makeImage(3000, 5);
  const zeros = Buffer.alloc(3000);
  const seeds = [
    { chunk: data, frame: compressFrame(data) },
    { chunk: data, frame: compressFrame(data, { contentSize: false }) },
    { chunk: data, frame: compressFrame(data, { checksum: false, level: 1 }) },
    { chunk: zeros, frame: compressFrame(zeros) },
    { chunk: data.subarray(0, 100), frame: compressFrame(data.subarray(0, 100), { level: 19 }) },
  ];
  for (let iter = 0; iter < FRAME_ITERATIONS; iter++) {
    const seed = seeds[iter % seeds.length]!;
    const m = mutateBytes(rand, seed.frame, [0, 4, 5, 6, 7, 8, 9, 10, seed.frame.length - 4]);
    if (m.bytes.length === 0) continue;
    const { blob, desc } = assembleBlob([m.bytes], seed.chunk.length, seed.chunk.length);
    try {
      const table = await loadChunkTable(desc, memoryReader(blob));
      const out = decodeFrame(blob.subarray(0, table.frameRange(0).end), 0, table);
      // Without a content checksum a mutated literal can decode to other bytes; with one it must not.
      const hasChecksum = (m.bytes[4]! & 0x04) !== 0 && m.bytes.readUInt32LE(0) === 0xfd2fb528;
      if (hasChecksum) assert.ok(out.equals(seed.chunk), `${m.what}: accepted frame decoded to different bytes`);
      else assert.equal(out.length, seed.chunk.length);
      ledger.accepted++;
    } catch (err) {
      if (err instanceof assert.AssertionError) throw err;
      ledger.record(err, m.what);
    }
  }
  t.diagnostic(ledger.summary());
  ledger.check(3);
});

test('fuzz: whole-blob decoders (stream, file, sequential) only fail with documented errors and never emit wrong images', async (t) => {
  const bases = await makeBases();
  const rand = prng(31337);
  const ledger = new Ledger();
  const dir = await tempDir(t);
  const mutate = (base: Base) => {
    const what: string[] = [base.name];
    let blob = base.blob;
    let desc = base.desc;
    if (rand() < 0.85) {
      const m = mutateBytes(rand, blob, base.hot);
      blob = m.bytes;
      what.push(m.what);
    }
    if (rand() < 0.3) {
      const m = mutateDesc(rand, desc, blob.length);
      desc = m.desc;
      what.push(m.what);
    }
    return { blob, desc, label: what.join(' / ') };
  };
  const run = async (label: string, image: Buffer, fn: (sink: CollectingSink) => Promise<unknown>) => {
    const sink = new CollectingSink();
    try {
      await fn(sink);
      assert.ok(sink.bytes().equals(image), `${label}: decoded image differs`);
      ledger.accepted++;
    } catch (err) {
      if (err instanceof assert.AssertionError) throw err;
      ledger.record(err, label);
    }
  };
  for (let iter = 0; iter < WHOLE_STREAM_ITERATIONS; iter++) {
    const base = bases[iter % bases.length]!;
    const { blob, desc, label } = mutate(base);
    // Half with the DiffID, half relying on the blob digest alone.
    const options = rand() < 0.5 ? { diffId: base.diffId } : {};
    await run(`stream ${label}`, base.image, (sink) => decodeSeekableBlob(streamOf(blob, 1 + randInt(rand, 3000)), sink, desc, options));
  }
  for (let iter = 0; iter < WHOLE_FILE_ITERATIONS; iter++) {
    const base = bases[iter % bases.length]!;
    const { blob, desc, label } = mutate(base);
    const path = join(dir, 'blob');
    await writeFile(path, blob);
    await run(`file ${label}`, base.image, (sink) => decodeSeekableBlob(path, sink, desc, { diffId: base.diffId }));
  }
  for (let iter = 0; iter < SEQUENTIAL_ITERATIONS; iter++) {
    const base = bases[iter % bases.length]!;
    const { blob, label } = mutate(base);
    const options = rand() < 0.5 ? { diffId: base.diffId } : { blobDigest: base.desc.digest, blobSize: base.desc.size };
    await run(`sequential ${label}`, base.image, (sink) => decodeSequential(streamOf(blob, 1 + randInt(rand, 5000)), sink, options));
  }
  t.diagnostic(ledger.summary());
  ledger.check(6);
  assert.ok(ledger.accepted > 0);
  // Sanity: the unmutated blobs decode.
  for (const base of bases) {
    const sink = new CollectingSink();
    await decodeSeekableBlob(streamOf(base.blob), sink, base.desc, { diffId: base.diffId });
    assert.ok(sink.bytes().equals(base.image));
    assert.equal(`sha256:${createHash('sha256').update(base.image).digest('hex')}`, base.diffId);
  }
});
