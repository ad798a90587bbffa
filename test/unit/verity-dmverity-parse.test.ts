// dm-verity reader checks (spec §10 rules 3, 20, 21): each rejection with its error class and rule, root
// and tree verification mismatches, sidecar parsing, builder argument checks, and a mutation fuzz loop.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import {
  VerityFormatError,
  VerityIntegrityError,
  VeritySidecarError,
  VerityTreeBuilder,
  computeVerityLayout,
  formatUuid,
  formatVerityRootDigest,
  formatVeritySidecar,
  parseUuid,
  parseVerityFrameHeader,
  parseVerityPayload,
  parseVerityRootDigest,
  parseVeritySidecar,
  verifyVerityRoot,
  verifyVerityTree,
} from '../../src/verity/dmverity.js';

const UUID = parseUuid('12345678-1234-5678-1234-567812345678');
const FUZZ_ITERATIONS = 4000;

function build(data: Buffer, blockSize = 4096): ReturnType<VerityTreeBuilder['finish']> {
  const b = new VerityTreeBuilder({ blockSize, uuid: UUID });
  b.update(data);
  return b.finish();
}

function isFormatError(rule: number, field?: string) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof VerityFormatError, `expected VerityFormatError, got ${String(err)}`);
    assert.equal(err.rule, rule, `rule for: ${err.message}`);
    if (field !== undefined) assert.equal(err.field, field, `field for: ${err.message}`);
    assert.match(err.message, new RegExp(`rule ${rule}`));
    return true;
  };
}

const U6 = 22288; // six data blocks at bs 4096
const six = build(randomBytes(U6));

function mutated(edit: (p: Buffer) => void, base: Buffer = six.payload): Buffer {
  const p = Buffer.from(base);
  edit(p);
  return p;
}

test('a valid payload parses to the superblock fields and layout', () => {
  const info = parseVerityPayload(six.payload, { uncompressedSize: U6 });
  assert.deepEqual(
    { ...info, uuid: formatUuid(info.uuid) },
    {
      version: 1, hashType: 1, uuid: '12345678-1234-5678-1234-567812345678', algorithm: 'sha512', dataBlockSize: 4096, hashBlockSize: 4096,
      dataBlocks: 6, saltSize: 0, levels: 1, levelBlocks: [1], hashBlocks: 1, payloadLength: 8192, hashOffset: 24576,
    },
  );
  assert.deepEqual(computeVerityLayout(4097, 4096), { levels: 3, levelBlocks: [1, 2, 65], hashBlocks: 68, payloadLength: 4096 + 68 * 4096 });
  assert.deepEqual(computeVerityLayout(1, 4096), { levels: 0, levelBlocks: [], hashBlocks: 0, payloadLength: 512 });
  // A Uint8Array view at an offset parses the same way as a Buffer.
  const backing = new Uint8Array(six.payload.length + 3);
  backing.set(six.payload, 3);
  assert.equal(parseVerityPayload(backing.subarray(3), { uncompressedSize: U6 }).dataBlocks, 6);
});

test('rule 20: short payload, signature, version, zero UUID', () => {
  const opts = { uncompressedSize: U6 };
  for (const len of [0, 1, 8, 511]) {
    assert.throws(() => parseVerityPayload(six.payload.subarray(0, len), opts), isFormatError(20, 'payload length'));
  }
  assert.throws(() => parseVerityPayload(mutated((p) => p.write('Verity', 0, 'latin1')), opts), isFormatError(20, 'signature'));
  assert.throws(() => parseVerityPayload(mutated((p) => (p[7] = 1)), opts), isFormatError(20, 'signature'));
  assert.throws(() => parseVerityPayload(mutated((p) => p.writeUInt32LE(2, 8)), opts), isFormatError(20, 'version'));
  assert.throws(() => parseVerityPayload(mutated((p) => p.writeUInt32LE(0, 8)), opts), isFormatError(20, 'version'));
  assert.throws(() => parseVerityPayload(mutated((p) => p.fill(0, 16, 32)), opts), isFormatError(20, 'uuid'));
  // Messages name the offending value.
  assert.throws(() => parseVerityPayload(mutated((p) => p.writeUInt32LE(7, 8)), { ...opts, context: 'layer sha256:abc' }), /layer sha256:abc.*version 7, want 1/);
});

test('rule 20: dm-verity frame header bounds and magic', () => {
  const hdr = Buffer.from('502a4d1800200000', 'hex'); // magic 0x184D2A50, Nv 8192
  assert.deepEqual(parseVerityFrameHeader(hdr, 21122, 29322), { magic: 0x184d2a50, payloadOffset: 21130, payloadLength: 8192 });
  assert.equal(parseVerityFrameHeader(Buffer.from('5f2a4d1800000000', 'hex'), 0, 8).magic, 0x184d2a5f);
  assert.throws(() => parseVerityFrameHeader(hdr, 29320, 29322), isFormatError(20, 'offset'));
  assert.throws(() => parseVerityFrameHeader(hdr.subarray(0, 7), 0, 100000), isFormatError(20, 'offset'));
  assert.throws(() => parseVerityFrameHeader(Buffer.from('28b52ffd00200000', 'hex'), 0, 100000), isFormatError(20, 'magic'));
  assert.throws(() => parseVerityFrameHeader(Buffer.from('602a4d1800200000', 'hex'), 0, 100000), isFormatError(20, 'magic'));
  assert.throws(() => parseVerityFrameHeader(hdr, 21122, 29321), isFormatError(20, 'payload length'));
});

test('rule 21: hash type, algorithm, block sizes, salt size', () => {
  const opts = { uncompressedSize: U6 };
  for (const v of [0, 2, 0xffffffff]) {
    assert.throws(() => parseVerityPayload(mutated((p) => p.writeUInt32LE(v, 12)), opts), isFormatError(21, 'hash_type'));
  }
  const alg = (s: string) => mutated((p) => {
    p.fill(0, 32, 64);
    p.write(s, 32, 'latin1');
  });
  for (const name of ['sha256', 'SHA512', 'sha5121', 'sha512 ', '', 'sha512\0x']) {
    assert.throws(() => parseVerityPayload(alg(name), opts), isFormatError(21, 'algorithm'), `algorithm ${JSON.stringify(name)}`);
  }
  assert.throws(() => parseVerityPayload(mutated((p) => (p[63] = 1)), opts), isFormatError(21, 'algorithm'));
  for (const bs of [0, 1, 256, 1000, 4095, 6144, 1048576, 0x80000000, 0xffffffff]) {
    const p = mutated((q) => {
      q.writeUInt32LE(bs, 64);
      q.writeUInt32LE(bs, 68);
    });
    assert.throws(() => parseVerityPayload(p, opts), isFormatError(21, 'data_block_size'), `data_block_size ${bs}`);
  }
  for (const hbs of [0, 512, 8192]) {
    assert.throws(() => parseVerityPayload(mutated((p) => p.writeUInt32LE(hbs, 68)), opts), isFormatError(21, 'hash_block_size'));
  }
  for (const s of [1, 32, 256, 0xffff]) {
    assert.throws(() => parseVerityPayload(mutated((p) => p.writeUInt16LE(s, 80)), opts), isFormatError(21, 'salt_size'));
  }
});

test('rule 21: data_blocks against U, and the payload length', () => {
  const opts = { uncompressedSize: U6 };
  for (const n of [0n, 5n, 7n, 1n << 53n, (1n << 64n) - 1n]) {
    assert.throws(() => parseVerityPayload(mutated((p) => p.writeBigUInt64LE(n, 72)), opts), isFormatError(21, 'data_blocks'), `data_blocks ${n}`);
  }
  for (const u of [0, 20480, 24577, 2 ** 53 - 1]) {
    assert.throws(() => parseVerityPayload(six.payload, { uncompressedSize: u }), isFormatError(21, 'data_blocks'), `U ${u}`);
  }
  assert.equal(parseVerityPayload(six.payload, { uncompressedSize: 20481 }).dataBlocks, 6);
  assert.equal(parseVerityPayload(six.payload, { uncompressedSize: 24576 }).dataBlocks, 6);
  for (const len of [512, 4096, 8191, 8193, 12288]) {
    const p = Buffer.alloc(len);
    six.payload.copy(p, 0, 0, Math.min(len, six.payload.length));
    assert.throws(() => parseVerityPayload(p, opts), isFormatError(21, 'payload length'), `Nv ${len}`);
  }
  // One data block: 512 (reference) and bs (veritysetup) are both accepted, nothing else.
  const one = build(randomBytes(100));
  assert.equal(one.payload.length, 512);
  for (const len of [512, 4096]) {
    const p = Buffer.alloc(len);
    one.payload.copy(p);
    assert.equal(parseVerityPayload(p, { uncompressedSize: 100 }).payloadLength, len);
  }
  for (const len of [513, 1024, 4095, 4097, 8192]) {
    const p = Buffer.alloc(len);
    one.payload.copy(p);
    assert.throws(() => parseVerityPayload(p, { uncompressedSize: 100 }), isFormatError(21, 'payload length'), `one-block Nv ${len}`);
  }
  assert.throws(() => parseVerityPayload(one.payload, { uncompressedSize: 0 }), isFormatError(21, 'data_blocks'));
  // A non-integer U is a caller error, not a malformed payload.
  assert.throws(() => parseVerityPayload(six.payload, { uncompressedSize: -1 }), RangeError);
  assert.throws(() => parseVerityPayload(six.payload, { uncompressedSize: 1.5 }), RangeError);
});

test('rule 3: root_digest annotation format; formatting round-trips', () => {
  const root = formatVerityRootDigest(six.rootHash);
  assert.match(root, /^sha512:[0-9a-f]{128}$/);
  assert.ok(parseVerityRootDigest(root).equals(six.rootHash));
  for (const bad of ['', 'sha512:', root.toUpperCase(), `sha256:${root.slice(7, 71)}`, root.slice(7), `${root}0`, root.slice(0, -1), ` ${root}`, `SHA512:${root.slice(7)}`]) {
    assert.throws(() => parseVerityRootDigest(bad), isFormatError(3, 'root_digest'), JSON.stringify(bad));
  }
  assert.throws(() => formatVerityRootDigest(Buffer.alloc(32)), RangeError);
});

test('verifyVerityRoot: accepts the right root, names a wrong root or a bad interior block', () => {
  const opts = { uncompressedSize: U6 };
  assert.equal(verifyVerityRoot(six.payload, formatVerityRootDigest(six.rootHash), opts).rootChecked, true);
  const wrong = formatVerityRootDigest(Buffer.alloc(64, 0xab));
  assert.throws(() => verifyVerityRoot(six.payload, wrong, opts), (e: unknown) => e instanceof VerityIntegrityError && e.subject === 'root' && e.rule === 21);
  assert.throws(() => verifyVerityRoot(mutated((p) => (p[4096 + 100] ^= 1)), formatVerityRootDigest(six.rootHash), opts), VerityIntegrityError);
  assert.throws(() => verifyVerityRoot(six.payload, 'sha256:00', opts), isFormatError(3));
  assert.throws(() => verifyVerityRoot(six.payload, formatVerityRootDigest(six.rootHash), { uncompressedSize: 1 }), isFormatError(21));

  // Three levels at bs 512 (8 entries per block): 70 data blocks -> 9 + 2 + 1 hash blocks.
  const u = 70 * 512;
  const deep = build(randomBytes(u), 512);
  const root = formatVerityRootDigest(deep.rootHash);
  const info = verifyVerityRoot(deep.payload, root, { uncompressedSize: u }).info;
  assert.deepEqual(info.levelBlocks, [1, 2, 9]);
  // Payload blocks: [sb][top][L1 b0][L1 b1][L0 b0..b8]. Corrupt leaf-level block 8 (payload block 12).
  const badLeaf = mutated((p) => (p[12 * 512 + 5] ^= 0x10), deep.payload);
  assert.throws(() => verifyVerityRoot(badLeaf, root, { uncompressedSize: u }), (e: unknown) => {
    assert.ok(e instanceof VerityIntegrityError);
    assert.equal(e.subject, 'hash-block');
    assert.deepEqual(e.location, { level: 0, block: 8 });
    return true;
  });
  const badMid = mutated((p) => (p[3 * 512 + 1] ^= 0x10), deep.payload);
  assert.throws(() => verifyVerityRoot(badMid, root, { uncompressedSize: u }), (e: unknown) => e instanceof VerityIntegrityError && e.location?.level === 1 && e.location.block === 1);

  // One data block: structure only, the root needs the image.
  const one = build(Buffer.from('x'));
  assert.equal(verifyVerityRoot(one.payload, wrong, { uncompressedSize: 1 }).rootChecked, false);
});

test('verifyVerityTree: recomputes from a stream, names the differing block, checks U', async () => {
  const data = randomBytes(65 * 4096 + 9);
  const res = build(data);
  const root = formatVerityRootDigest(res.rootHash);
  const pieces = (buf: Buffer) => Readable.from([buf.subarray(0, 5000), buf.subarray(5000, 5001), buf.subarray(5001)]);
  const info = await verifyVerityTree(pieces(data), res.payload, root, { uncompressedSize: data.length });
  assert.equal(info.dataBlocks, 66);
  const altered = Buffer.from(data);
  altered[64 * 4096 + 3] ^= 1; // data block 64 -> leaf block 1
  await assert.rejects(verifyVerityTree(pieces(altered), res.payload, root), (e: unknown) => {
    assert.ok(e instanceof VerityIntegrityError);
    assert.deepEqual(e.location, { level: 0, block: 1 });
    return true;
  });
  // A U that disagrees with data_blocks fails before reading; one that agrees but not with the image, after.
  await assert.rejects(verifyVerityTree(pieces(data), res.payload, root, { uncompressedSize: data.length + 4096 }), isFormatError(21, 'data_blocks'));
  await assert.rejects(verifyVerityTree(pieces(data), res.payload, root, { uncompressedSize: data.length + 1 }), (e: unknown) => e instanceof VerityIntegrityError && e.subject === 'image-size');
  await assert.rejects(verifyVerityTree(pieces(data.subarray(0, 65 * 4096)), res.payload, root), isFormatError(21, 'data_blocks'));
  await assert.rejects(verifyVerityTree(pieces(data), res.payload, formatVerityRootDigest(Buffer.alloc(64, 1))), (e: unknown) => e instanceof VerityIntegrityError && e.subject === 'root');
  // One data block: the root is checked against the image.
  const one = build(data.subarray(0, 10));
  await verifyVerityTree(pieces(data.subarray(0, 10)), one.payload, formatVerityRootDigest(one.rootHash));
  await assert.rejects(verifyVerityTree(pieces(data.subarray(0, 10)), one.payload, root), (e: unknown) => e instanceof VerityIntegrityError && e.subject === 'root');
});

test('VerityTreeBuilder argument checks and lifecycle', () => {
  for (const bs of [0, 256, 1000, 4095, 1048576, 1.5]) {
    assert.throws(() => new VerityTreeBuilder({ blockSize: bs }), /invalid dm-verity block size/);
  }
  for (const bs of [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288]) {
    assert.equal(new VerityTreeBuilder({ blockSize: bs }).blockSize, bs);
  }
  assert.throws(() => new VerityTreeBuilder({ uuid: Buffer.alloc(16) }), /non-zero/);
  assert.throws(() => new VerityTreeBuilder({ uuid: Buffer.alloc(15, 1) }), /16 bytes/);
  // The default UUID is a random v4 UUID.
  const a = new VerityTreeBuilder();
  const b = new VerityTreeBuilder();
  assert.notDeepEqual(a.uuid, b.uuid);
  assert.match(formatUuid(a.uuid), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  const empty = new VerityTreeBuilder();
  empty.update(new Uint8Array(0));
  assert.throws(() => empty.finish(), /empty image/);
  const done = new VerityTreeBuilder();
  done.update(Buffer.from('abc'));
  assert.equal(done.finish().dataBlocks, 1);
  assert.throws(() => done.update(Buffer.from('d')), /after finish/);
  assert.throws(() => done.finish(), /twice/);
  // The root does not depend on the UUID; the payload does (only in the superblock).
  const data = randomBytes(9000);
  const x = new VerityTreeBuilder({ uuid: UUID });
  const y = new VerityTreeBuilder();
  x.update(data);
  y.update(data);
  const rx = x.finish();
  const ry = y.finish();
  assert.ok(rx.rootHash.equals(ry.rootHash));
  assert.ok(rx.payload.subarray(32).equals(ry.payload.subarray(32)));
  assert.ok(!rx.payload.subarray(16, 32).equals(ry.payload.subarray(16, 32)));
});

test('sidecar: exact format, prefix tolerance, rejections', () => {
  const hex = six.rootHash.toString('hex');
  const text = formatVeritySidecar({ rootHash: hex, hashOffset: 24576 });
  assert.equal(text, `{\n  "roothash": "${hex}",\n  "hashoffset": 24576\n}\n`);
  assert.deepEqual(parseVeritySidecar(text), { rootHash: hex, hashOffset: 24576 });
  assert.deepEqual(parseVeritySidecar(`{"hashoffset":4096,"roothash":"sha512:${hex}"}`), { rootHash: hex, hashOffset: 4096 });
  for (const bad of ['', '[]', 'null', '{}', `{"roothash":"${hex.toUpperCase()}","hashoffset":1}`, `{"roothash":"sha256:${hex}","hashoffset":1}`,
    `{"roothash":"${hex}","hashoffset":-1}`, `{"roothash":"${hex}","hashoffset":"4096"}`, `{"roothash":"${hex}","hashoffset":1.5}`, `{"roothash":"${hex}"}`]) {
    assert.throws(() => parseVeritySidecar(bad), VeritySidecarError, bad);
  }
  assert.throws(() => formatVeritySidecar({ rootHash: `sha512:${hex}`, hashOffset: 1 }), RangeError);
});

test(`fuzz: ${FUZZ_ITERATIONS} random mutations and truncations only ever raise VerityFormatError`, () => {
  let seed = 0x9e3779b9;
  const rnd = (n: number): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const bases: Array<{ payload: Buffer; u: number; root: string }> = [];
  for (const [u, bs] of [[U6, 4096], [100, 4096], [4096, 4096], [70 * 512 + 3, 512], [65 * 4096, 4096], [3 * 8192, 8192]] as const) {
    const r = u === U6 && bs === 4096 ? six : build(randomBytes(u), bs);
    bases.push({ payload: r.payload, u, root: formatVerityRootDigest(r.rootHash) });
  }
  const fields = [0, 8, 12, 16, 32, 64, 68, 72, 76, 80];
  const interesting = [0, 1, 2, 511, 512, 4096, 8192, 524288, 1048576, 0x7fffffff, 0xffffffff];
  let accepted = 0;
  let rejected = 0;
  for (let i = 0; i < FUZZ_ITERATIONS; i++) {
    const base = bases[rnd(bases.length)]!;
    let p = Buffer.from(base.payload);
    for (let m = 1 + rnd(3); m > 0; m--) {
      switch (rnd(6)) {
        case 0: // flip a superblock bit
          p[rnd(Math.min(p.length, 96) || 1)] ^= 1 << rnd(8);
          break;
        case 1: // random byte anywhere
          if (p.length > 0) p[rnd(p.length)] = rnd(256);
          break;
        case 2: // truncate
          p = p.subarray(0, rnd(p.length + 1));
          break;
        case 3: // extend
          p = Buffer.concat([p, randomBytes(rnd(3) === 0 ? 4096 : rnd(600))]);
          break;
        case 4: { // an interesting u32 in a field
          const off = fields[rnd(fields.length)]!;
          if (off + 4 <= p.length) p.writeUInt32LE(interesting[rnd(interesting.length)]!, off);
          break;
        }
        default: // leave as is, so some iterations only change U
          break;
      }
    }
    const u = rnd(4) === 0 ? rnd(300000) : base.u;
    try {
      parseVerityPayload(p, { uncompressedSize: u });
      accepted++;
    } catch (err) {
      assert.ok(err instanceof VerityFormatError, `iteration ${i}: unexpected ${String(err)}`);
      assert.ok(err.rule === 20 || err.rule === 21, `iteration ${i}: rule ${err.rule}`);
      rejected++;
    }
    try {
      verifyVerityRoot(p, base.root, { uncompressedSize: u });
    } catch (err) {
      assert.ok(err instanceof VerityFormatError || err instanceof VerityIntegrityError, `iteration ${i}: verifyVerityRoot threw ${String(err)}`);
    }
  }
  assert.ok(accepted > 50 && rejected > 1000, `coverage: ${accepted} accepted, ${rejected} rejected`);
});
