// dm-verity builder and materializer against cryptsetup's veritysetup (spec §9, §12 V4): payload bytes,
// root hash, the materialized single file and its sidecar.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import { promisify } from 'node:util';
import {
  DEFAULT_VERITY_BLOCK_SIZE,
  VerityFormatError,
  VerityIntegrityError,
  VerityTreeBuilder,
  formatVerityRootDigest,
  materializeVerityFile,
  parseUuid,
  parseVerityPayload,
  readVeritySidecar,
  verifyVerityRoot,
  verifyVerityTree,
} from '../../src/verity/dmverity.js';
import { prng, v4Input } from '../fixtures/chunktable/helpers.js';
import { tempDir } from '../helpers/tmp.js';

const run = promisify(execFile);
const VERITYSETUP = '/usr/sbin/veritysetup';
/** veritysetup's hash file for a single data block is min(bs, this) bytes. */
const VERITYSETUP_SINGLE_BLOCK_CAP = 4096;
const UUID = '12345678-1234-5678-1234-567812345678';
const V4_SIZE = 22288;
const V4_DIFFID = 'c9490cafe601e006e85d9af4f73d93aac7c0602d3db323a1d58caa4db30ee99a';
const V4_ROOT = 'sha512:b31dd5be5ebb8e4e7cc7c9df6cf033e7cd988446706ab0c32ba866846ffaecbf43f0d75c1146eac90d3e0944ed9cc92449f2b105db1b06248e75bfcb0b16ba7f';

/** Feeds `data` to a builder in fixed-size pieces, or random ones when `piece` is a seed object. */
function build(data: Buffer, blockSize: number, piece: number | { seed: number }): ReturnType<VerityTreeBuilder['finish']> {
  const b = new VerityTreeBuilder({ blockSize, uuid: parseUuid(UUID) });
  const rnd = typeof piece === 'number' ? undefined : prng(piece.seed);
  let pos = 0;
  while (pos < data.length) {
    const n = rnd ? Math.floor(rnd() * 3 * blockSize) : piece as number; // includes 0-byte updates
    b.update(data.subarray(pos, pos + n));
    pos += n;
  }
  return b.finish();
}

interface Reference {
  hashFile: Buffer;
  rootHex: string;
}

/** Runs `veritysetup format` on `data` zero-padded to a multiple of bs. */
async function veritysetupFormat(t: TestContext, data: Buffer, blockSize: number): Promise<Reference> {
  const dir = await tempDir(t);
  const padded = Buffer.alloc(Math.ceil(data.length / blockSize) * blockSize);
  data.copy(padded);
  const dataPath = join(dir, 'data');
  const hashPath = join(dir, 'hash');
  await writeFile(dataPath, padded);
  const { stdout } = await run(VERITYSETUP, [
    'format', '--hash=sha512', '--salt=-', `--data-block-size=${blockSize}`, `--hash-block-size=${blockSize}`, `--uuid=${UUID}`, dataPath, hashPath,
  ]);
  const m = /^Root hash:\s+([0-9a-f]{128})$/m.exec(stdout);
  assert.ok(m, `no root hash in veritysetup output:\n${stdout}`);
  return { hashFile: await readFile(hashPath), rootHex: m[1]! };
}

function assertMatchesReference(res: ReturnType<VerityTreeBuilder['finish']>, ref: Reference, size: number, bs: number, label: string): void {
  const dataBlocks = Math.ceil(size / bs);
  assert.equal(res.dataBlocks, dataBlocks, `${label}: data_blocks`);
  assert.equal(res.hashOffset, dataBlocks * bs, `${label}: hashOffset`);
  assert.equal(res.rootHash.toString('hex'), ref.rootHex, `${label}: root hash`);
  if (dataBlocks === 1) {
    assert.equal(res.payload.length, 512, `${label}: one-block payload is the superblock only`);
    // veritysetup 2.6.1 writes one block, capped at 4096 bytes (for bs > 4096 that is not the "bs" of §9.4).
    assert.equal(ref.hashFile.length, Math.min(bs, VERITYSETUP_SINGLE_BLOCK_CAP), `${label}: veritysetup writes one block`);
    assert.ok(ref.hashFile.subarray(0, 512).equals(res.payload), `${label}: superblock bytes`);
    assert.ok(ref.hashFile.subarray(512).every((x) => x === 0), `${label}: veritysetup tail is zeros`);
    if (ref.hashFile.length !== 512 && ref.hashFile.length !== bs) {
      // The spec accepts exactly 512 or bs here, so this veritysetup output is outside it.
      assert.throws(() => parseVerityPayload(ref.hashFile, { uncompressedSize: size }), (e: unknown) => e instanceof VerityFormatError && e.rule === 21);
    }
  } else {
    assert.equal(res.payload.length, ref.hashFile.length, `${label}: payload length`);
    assert.ok(res.payload.equals(ref.hashFile), `${label}: payload bytes equal veritysetup's hash file`);
  }
  // The parser accepts what the builder writes, and what veritysetup writes.
  assert.equal(parseVerityPayload(res.payload, { uncompressedSize: size }).dataBlocks, dataBlocks);
  if (dataBlocks > 1 || bs <= VERITYSETUP_SINGLE_BLOCK_CAP) {
    assert.equal(parseVerityPayload(ref.hashFile, { uncompressedSize: size }).payloadLength, ref.hashFile.length);
  }
  const check = verifyVerityRoot(res.payload, formatVerityRootDigest(res.rootHash), { uncompressedSize: size });
  assert.equal(check.rootChecked, dataBlocks > 1);
}

const BS = DEFAULT_VERITY_BLOCK_SIZE;
const SIZES: Array<[string, number]> = [
  ['1 byte', 1],
  ['exactly one block', BS],
  ['6 blocks (V4-sized)', V4_SIZE],
  ['non-multiple of bs', 10 * BS + 1234],
  ['64 blocks (one full leaf block)', 64 * BS],
  ['65 blocks (two levels)', 65 * BS],
  ['4097 blocks + a bit (three levels)', 4097 * BS + 77],
];

for (const [label, size] of SIZES) {
  test(`builder matches veritysetup format: ${label} (${size} bytes, bs ${BS})`, async (t) => {
    const data = randomBytes(size);
    const ref = await veritysetupFormat(t, data, BS);
    const seed = (size * 2654435761) >>> 0;
    assertMatchesReference(build(data, BS, 1000), ref, size, BS, `${label}, 1000-byte pieces`);
    assertMatchesReference(build(data, BS, { seed }), ref, size, BS, `${label}, random pieces seed ${seed}`);
    assertMatchesReference(build(data, BS, size), ref, size, BS, `${label}, one piece`);
  });
}

for (const [bs, size] of [
  [512, 300],
  [512, 70 * 512 + 100],
  [512, 600 * 512],
  [8192, 5000],
  [8192, 25 * 8192 + 1],
  [8192, 129 * 8192],
  [65536, 3 * 65536 + 17],
] as const) {
  test(`builder matches veritysetup format with bs ${bs} (${size} bytes)`, async (t) => {
    const data = randomBytes(size);
    const ref = await veritysetupFormat(t, data, bs);
    assertMatchesReference(build(data, bs, 1000), ref, size, bs, `bs ${bs}, 1000-byte pieces`);
    assertMatchesReference(build(data, bs, { seed: bs + size }), ref, size, bs, `bs ${bs}, random pieces`);
  });
}

test('spec V4: root, Nv, hashoffset, veritysetup equality, materialized file, sidecar, veritysetup verify', async (t) => {
  const input = v4Input();
  assert.equal(input.length, V4_SIZE);
  assert.equal(createHash('sha256').update(input).digest('hex'), V4_DIFFID, 'V4 input DiffID');

  const res = build(input, BS, { seed: 4 });
  assert.equal(formatVerityRootDigest(res.rootHash), V4_ROOT);
  assert.equal(res.payload.length, 8192, 'Nv');
  assert.equal(res.dataBlocks, 6);
  assert.equal(res.hashOffset, 24576);
  const ref = await veritysetupFormat(t, input, BS);
  assert.ok(res.payload.equals(ref.hashFile), 'payload equals veritysetup hash file');
  assert.equal(`sha512:${ref.rootHex}`, V4_ROOT);

  const dir = await tempDir(t);
  const raw = join(dir, 'raw.erofs');
  const out = join(dir, 'layer.erofs');
  await writeFile(raw, input);
  const mat = await materializeVerityFile(raw, res.payload, out, { blockSize: BS, rootDigest: V4_ROOT });
  assert.equal(mat.hashOffset, 24576);
  assert.equal(mat.fileSize, 32768);
  assert.equal((await stat(out)).size, 32768, 'layer.erofs is 32768 bytes');
  const file = await readFile(out);
  assert.ok(file.subarray(0, V4_SIZE).equals(input), 'raw image first');
  assert.ok(file.subarray(V4_SIZE, 24576).every((x) => x === 0), 'zero padding to hashoffset');
  assert.ok(file.subarray(24576).equals(res.payload), 'payload verbatim at hashoffset');

  const sidecarText = await readFile(`${out}.dmverity`, 'utf8');
  assert.equal(sidecarText, `{\n  "roothash": "${V4_ROOT.slice(7)}",\n  "hashoffset": 24576\n}\n`);
  assert.deepEqual(await readVeritySidecar(`${out}.dmverity`), { rootHash: V4_ROOT.slice(7), hashOffset: 24576 });

  // The whole-image check accepts the raw image as a path and as a stream.
  await verifyVerityTree(raw, res.payload, V4_ROOT, { uncompressedSize: V4_SIZE });
  await verifyVerityTree(createReadStream(raw, { highWaterMark: 999 }), res.payload, V4_ROOT);

  // veritysetup accepts the single file at hashoffset, and rejects it after one data byte flips.
  await run(VERITYSETUP, ['verify', '--hash-offset=24576', out, out, V4_ROOT.slice(7)]);
  file[12345] ^= 0x01;
  await writeFile(out, file);
  await assert.rejects(run(VERITYSETUP, ['verify', '--hash-offset=24576', out, out, V4_ROOT.slice(7)]), /verification failed|corrupt|Command failed/i);
  // So does our full recompute on the altered image.
  const altered = join(dir, 'altered.erofs');
  await writeFile(altered, file.subarray(0, V4_SIZE));
  await assert.rejects(verifyVerityTree(altered, res.payload, V4_ROOT), (err: unknown) => {
    assert.ok(err instanceof VerityIntegrityError);
    assert.equal(err.subject, 'hash-block');
    assert.deepEqual(err.location, { level: 0, block: 0 });
    return true;
  });
});

for (const [label, size, bs] of [
  ['one block, 512-byte payload', 100, 4096],
  ['two levels, partial last block', 65 * 4096 + 5, 4096],
  ['bs 512, three levels', 70 * 512 + 100, 512],
] as const) {
  test(`materialized file is accepted by veritysetup verify and rejected after a flip: ${label}`, async (t) => {
    const dir = await tempDir(t);
    const data = randomBytes(size);
    const raw = join(dir, 'raw.erofs');
    const out = join(dir, 'layer.erofs');
    await writeFile(raw, data);
    const res = build(data, bs, 777);
    const root = formatVerityRootDigest(res.rootHash);
    const mat = await materializeVerityFile(raw, res.payload, out, { rootDigest: root });
    assert.equal(mat.rootHash, res.rootHash.toString('hex'));
    assert.equal((await stat(out)).size, res.hashOffset + res.payload.length);
    const sidecar = await readVeritySidecar(mat.sidecarPath);
    assert.deepEqual(sidecar, { rootHash: res.rootHash.toString('hex'), hashOffset: res.hashOffset });
    const args = ['verify', `--hash-offset=${sidecar.hashOffset}`, out, out, sidecar.rootHash];
    await run(VERITYSETUP, args);
    const file = await readFile(out);
    file[size - 1] ^= 0x80;
    await writeFile(out, file);
    await assert.rejects(run(VERITYSETUP, args));
  });
}

test('materializeVerityFile refuses a payload or root that does not match the image, leaving no files', async (t) => {
  const dir = await tempDir(t);
  const data = randomBytes(3 * BS);
  const raw = join(dir, 'raw.erofs');
  await writeFile(raw, data);
  const res = build(data, BS, 4096);
  const out = join(dir, 'layer.erofs');

  const other = build(randomBytes(3 * BS), BS, 4096);
  await assert.rejects(materializeVerityFile(raw, other.payload, out), VerityIntegrityError);
  await assert.rejects(materializeVerityFile(raw, res.payload, out, { rootDigest: formatVerityRootDigest(other.rootHash) }), VerityIntegrityError);
  await assert.rejects(materializeVerityFile(raw, res.payload, out, { blockSize: 8192 }), /block size 4096/);
  // One data block: the root comes from the image even without full verification.
  const one = build(data.subarray(0, 10), BS, 10);
  const oneRaw = join(dir, 'one.erofs');
  await writeFile(oneRaw, data.subarray(0, 11));
  await assert.rejects(materializeVerityFile(oneRaw, one.payload, out, { verify: false, rootDigest: formatVerityRootDigest(one.rootHash) }), VerityIntegrityError);
  await assert.rejects(stat(out), { code: 'ENOENT' });
  await assert.rejects(stat(`${out}.dmverity`), { code: 'ENOENT' });

  // verify: false still anchors the sidecar root to the payload's top block.
  const mat = await materializeVerityFile(raw, res.payload, out, { verify: false });
  assert.equal(mat.rootHash, res.rootHash.toString('hex'));
});
