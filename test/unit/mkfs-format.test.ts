// The EROFS writer's encoders against the user-space reader's parsers: directory packing (sorted in memcmp
// order, no dirent across blocks, sizes), xattr bodies (prefix indexes, padding, limits) and getfattr
// output parsing (quoted paths and names), compact and extended inodes, device numbers, the superblock and
// its checksum.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseDirBlock } from '../../src/erofs/dir.js';
import { decodeDevice } from '../../src/erofs/inode.js';
import { parseSuperblock } from '../../src/erofs/superblock.js';
import { encodeDirectory, packDirectory } from '../../src/mkfs/dirent.js';
import type { DirentPlan } from '../../src/mkfs/dirent.js';
import { BLOCK_SIZE, EROFS_DIRENT_SIZE } from '../../src/mkfs/format.js';
import { encodeDevice, encodeInode, needsExtendedInode } from '../../src/mkfs/inode.js';
import { encodeSuperblockBlock } from '../../src/mkfs/superblock.js';
import { encodeXattrBody, parseGetfattrDump, splitXattrName } from '../../src/mkfs/xattr.js';

const UUID = '0e0f5e1e-2000-4000-8000-0000000000aa';

function entries(names: Buffer[]): DirentPlan[] {
  return names.map((name, i) => ({ name, fileType: 1, nid: () => 1000 + i }));
}

test('packDirectory sorts in memcmp order (dot entries included) and never splits a dirent across blocks', () => {
  const names = [Buffer.from('b'), Buffer.from('-dash'), Buffer.from('a'), Buffer.from([0xff, 0x01]), Buffer.from('ab'), Buffer.from(' sp')];
  const packing = packDirectory(entries(names), () => 7, () => 3, 2);
  const sorted = packing.entries.map((e) => e.name.toString('latin1'));
  assert.deepEqual(sorted, [' sp', '-dash', '.', '..', 'a', 'ab', 'b', '\xff\x01']);
  const data = encodeDirectory(packing);
  assert.equal(data.length, packing.size);
  assert.equal(packing.size, 8 * EROFS_DIRENT_SIZE + sorted.reduce((n, s) => n + s.length, 0));
  const parsed = parseDirBlock(data, 0, 7);
  assert.deepEqual(parsed.map((e) => e.name.toString('latin1')), sorted);
  assert.equal(parsed.find((e) => e.name.equals(Buffer.from('.')))!.nid, 7);
  assert.equal(parsed.find((e) => e.name.equals(Buffer.from('..')))!.nid, 3);
  assert.equal(parsed.find((e) => e.name.equals(Buffer.from('a')))!.nid, 1002);
});

test('packDirectory fills blocks greedily; every block parses alone and the size counts full blocks', () => {
  const names = Array.from({ length: 500 }, (_, i) => Buffer.from(`${String(i).padStart(4, '0')}-${'x'.repeat(i % 50)}`));
  const packing = packDirectory(entries(names), () => 1, () => 1, 2);
  const blocks = packing.blockStarts.length - 1;
  assert.ok(blocks > 3, `${blocks} blocks`);
  assert.equal(packing.size, (blocks - 1) * BLOCK_SIZE + (packing.size % BLOCK_SIZE || BLOCK_SIZE));
  const data = encodeDirectory(packing);
  const seen: string[] = [];
  let previousFirst: Buffer | undefined;
  for (let b = 0; b < blocks; b++) {
    const block = data.subarray(b * BLOCK_SIZE, Math.min(data.length, (b + 1) * BLOCK_SIZE));
    const parsed = parseDirBlock(block, b * BLOCK_SIZE, 1);
    const used = parsed.length * EROFS_DIRENT_SIZE + parsed.reduce((n, e) => n + e.name.length, 0);
    assert.ok(used <= BLOCK_SIZE);
    // Greedy: the next block's first entry would not have fit in this one.
    if (b + 1 < blocks) {
      const next = packing.entries[packing.blockStarts[b + 1]!]!;
      assert.ok(used + EROFS_DIRENT_SIZE + next.name.length > BLOCK_SIZE);
    }
    if (previousFirst) assert.ok(Buffer.compare(previousFirst, parsed[0]!.name) < 0);
    previousFirst = parsed[0]!.name;
    seen.push(...parsed.map((e) => e.name.toString('latin1')));
  }
  assert.equal(seen.length, 502);
  assert.deepEqual(seen, [...seen].sort((x, y) => Buffer.compare(Buffer.from(x, 'latin1'), Buffer.from(y, 'latin1'))));
});

test('encodeXattrBody: prefix indexes, 4-byte padding, icount, sorted entries; unknown prefixes left out', () => {
  const { body, icount } = encodeXattrBody(
    [
      { name: 'user.b', value: Buffer.from('xyz') },
      { name: 'security.capability', value: Buffer.from([1, 2]) },
      { name: 'system.posix_acl_access', value: Buffer.from([2, 0, 0, 0]) },
      { name: 'user.a', value: Buffer.alloc(0) },
      { name: 'system.nfs4_acl', value: Buffer.from('dropped') },
      { name: 'trusted.overlay.opaque', value: Buffer.from('y') },
    ],
    'f',
  );
  assert.equal((body.length - 12) % 4, 0);
  assert.equal(icount, (body.length - 12) / 4 + 1);
  const got: Array<[number, string, string]> = [];
  for (let at = 12; at < body.length; ) {
    const nameLen = body.readUInt8(at);
    const index = body.readUInt8(at + 1);
    const valueSize = body.readUInt16LE(at + 2);
    got.push([index, body.toString('latin1', at + 4, at + 4 + nameLen), body.toString('hex', at + 4 + nameLen, at + 4 + nameLen + valueSize)]);
    at += Math.ceil((4 + nameLen + valueSize) / 4) * 4;
  }
  assert.deepEqual(got, [
    [1, 'a', ''],
    [1, 'b', '78797a'],
    [2, '', '02000000'],
    [4, 'overlay.opaque', '79'],
    [6, 'capability', '0102'],
  ]);
  assert.deepEqual(encodeXattrBody([], 'f'), { body: Buffer.alloc(0), icount: 0 });
  assert.equal(splitXattrName('user.'), undefined);
  assert.equal(splitXattrName('system.posix_acl_access_x'), undefined);
  assert.throws(() => encodeXattrBody([{ name: 'user.v', value: Buffer.alloc(70000) }], 'big'), /value of 70000 bytes/);
  assert.throws(() => encodeXattrBody([{ name: `user.${'n'.repeat(256)}`, value: Buffer.alloc(1) }], 'long'), /name suffix of 256 bytes/);
});

test('parseGetfattrDump undoes octal quoting of paths and names and reads hex and empty values', () => {
  const dump = [
    '# file: /t/we=ird\\134 name\\012x',
    'user.a\\075b=0x78',
    'user.empty=0x',
    'user.quoted=""',
    '',
    '# file: /t/\\377\\376',
    'trusted.overlay.opaque=0x79',
    '',
  ].join('\n');
  const parsed = parseGetfattrDump(dump);
  assert.deepEqual([...parsed.keys()], ['/t/we=ird\\ name\nx', '/t/\xff\xfe']);
  const first = parsed.get('/t/we=ird\\ name\nx')!;
  assert.deepEqual(
    first.map((x) => [x.name, x.value.toString('hex')]),
    [
      ['user.a=b', '78'],
      ['user.empty', ''],
      ['user.quoted', ''],
    ],
  );
  assert.equal(parsed.get('/t/\xff\xfe')![0]!.value.toString(), 'y');
  assert.throws(() => parseGetfattrDump('user.x=0x00\n'), /unexpected getfattr output/);
  assert.throws(() => parseGetfattrDump('# file: /a\nuser.x=0sAAA=\n'), /expected hex/);
});

test('inodes: compact only when every field fits; both forms decode as written', () => {
  const base = { mode: 0o100644, nlink: 1, size: 10, uid: 0, gid: 0, mtimeSec: 1000n, mtimeNsec: 0 };
  assert.equal(needsExtendedInode(base, 1000n), false);
  assert.equal(needsExtendedInode({ ...base, mtimeNsec: 1 }, 1000n), true);
  assert.equal(needsExtendedInode({ ...base, mtimeSec: 999n }, 1000n), true);
  assert.equal(needsExtendedInode({ ...base, uid: 65536 }, 1000n), true);
  assert.equal(needsExtendedInode({ ...base, gid: 70000 }, 1000n), true);
  assert.equal(needsExtendedInode({ ...base, size: 2 ** 32 }, 1000n), true);
  assert.equal(needsExtendedInode({ ...base, nlink: 65536 }, 1000n), true);

  const buf = Buffer.alloc(128);
  encodeInode({ extended: false, layout: 2, xattrIcount: 3, mode: 0o104755, nlink: 2, size: 5000, iu: 9, ino: 4, uid: 65535, gid: 7, mtimeSec: 1000n, mtimeNsec: 0 }, buf, 0);
  assert.equal(buf.readUInt16LE(0), 2 << 1);
  assert.equal(buf.readUInt16LE(2), 3);
  assert.equal(buf.readUInt16LE(4), 0o104755);
  assert.equal(buf.readUInt16LE(6), 2);
  assert.equal(buf.readUInt32LE(8), 5000);
  assert.equal(buf.readUInt32LE(16), 9);
  assert.equal(buf.readUInt32LE(20), 4);
  assert.equal(buf.readUInt16LE(24), 65535);
  assert.equal(buf.readUInt16LE(26), 7);
  encodeInode({ extended: true, layout: 0, xattrIcount: 0, mode: 0o100600, nlink: 70000, size: 5 * 2 ** 32 + 3, iu: 0xffffffff, ino: 5, uid: 3000000, gid: 4000000, mtimeSec: 1234567890123n, mtimeNsec: 999999999 }, buf, 64);
  assert.equal(buf.readUInt16LE(64), 1);
  assert.equal(buf.readBigUInt64LE(64 + 8), BigInt(5 * 2 ** 32 + 3));
  assert.equal(buf.readUInt32LE(64 + 16), 0xffffffff);
  assert.equal(buf.readUInt32LE(64 + 24), 3000000);
  assert.equal(buf.readUInt32LE(64 + 28), 4000000);
  assert.equal(buf.readBigUInt64LE(64 + 32), 1234567890123n);
  assert.equal(buf.readUInt32LE(64 + 40), 999999999);
  assert.equal(buf.readUInt32LE(64 + 44), 70000);
});

test('device numbers round-trip through the kernel encoding', () => {
  for (const [major, minor] of [
    [0, 0],
    [1, 3],
    [7, 200],
    [300, 70000],
    [259, 1048575],
    [4095, 255],
  ] as const) {
    assert.deepEqual(decodeDevice(encodeDevice(major, minor)), { major, minor });
  }
});

test('the superblock parses back with a verified checksum, and bad input is refused', () => {
  const block = encodeSuperblockBlock({ rootNid: 128, inodeCount: 42, buildTime: 1700000000n, blocks: 77, uuid: UUID });
  assert.equal(block.length, BLOCK_SIZE);
  const sb = parseSuperblock(block);
  assert.equal(sb.checksumVerified, true);
  assert.equal(sb.featureCompat, 3);
  assert.equal(sb.featureIncompat, 0);
  assert.equal(sb.blockSize, BLOCK_SIZE);
  assert.equal(sb.rootNid, 128);
  assert.equal(sb.inodeCount, 42);
  assert.equal(sb.buildTime, 1700000000);
  assert.equal(sb.buildTimeNsec, 0);
  assert.equal(sb.blocks, 77);
  assert.equal(sb.metaBlkAddr, 0);
  assert.equal(sb.uuid, UUID);
  assert.throws(() => encodeSuperblockBlock({ rootNid: 65536, inodeCount: 1, buildTime: 0n, blocks: 1, uuid: UUID }), /16-bit/);
  assert.throws(() => encodeSuperblockBlock({ rootNid: 1, inodeCount: 1, buildTime: 0n, blocks: 1, uuid: 'NOT-A-UUID' }), /invalid UUID/);
});
