// Layer tar extraction into a staging directory: fidelity against GNU tar (pax and gnu formats), xattr
// records, whiteouts in overlayfs form, tar replacement semantics, implicit directories, and the rejection
// of unsafe entries without touching anything outside the staging directory.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import tarStream from 'tar-stream';
import type { Header } from 'tar-stream';
import {
  DEFAULT_IMPLICIT_DIR_MODE,
  extractLayerTar,
  LayerEntryError,
  LayerExtractError,
  normaliseEntryPath,
  parsePaxRecords,
} from '../../src/convert/extract.js';
import type { ExtractStats } from '../../src/convert/extract.js';
import { tempDir } from '../helpers/tmp.js';
import { diffTrees, snapshotTree, writeSampleTree } from '../helpers/tree.js';

const DIGEST = `sha256:${'ab'.repeat(32)}`;
const MTIME = new Date('2020-02-02T02:02:02Z');
const MTIME_S = MTIME.getTime() / 1000;
const TAR_ARGS = ['--xattrs', '--xattrs-include=*', '--numeric-owner'];

type EntrySpec = Partial<Header> & { name: string; content?: string | Buffer; pax?: Record<string, string> };

/** A tar built with tar-stream's packer (defaults: mode 0644 / dirs 0755, root, MTIME). */
async function packTar(entries: EntrySpec[]): Promise<Buffer> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  })();
  for (const e of entries) {
    const { content, ...header } = e;
    const type = header.type ?? 'file';
    await new Promise<void>((resolve, reject) => {
      pack.entry(
        { mode: type === 'directory' ? 0o755 : 0o644, mtime: MTIME, uid: 0, gid: 0, type, ...header },
        content ?? '',
        (err) => (err ? reject(err) : resolve()),
      );
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

function sh(cmd: string, args: string[]): Buffer {
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
}

async function extractBuffer(tar: Buffer, staging: string): Promise<ExtractStats> {
  return extractLayerTar(Readable.from([tar]), staging, { layerDigest: DIGEST });
}

function xattrHex(path: string, name: string): string | undefined {
  try {
    return execFileSync('getfattr', ['-h', '--only-values', '-e', 'hex', '-n', name, '--absolute-names', path], {
      stdio: ['ignore', 'pipe', 'ignore'],
    }).toString('hex');
  } catch {
    return undefined;
  }
}

test('normaliseEntryPath strips ./ and /, resolves .. lexically, refuses to climb out', () => {
  const ok = (name: string) => {
    const r = normaliseEntryPath(name);
    assert.ok(r.ok, name);
    return r.path;
  };
  assert.equal(ok('./a/b/'), 'a/b');
  assert.equal(ok('/abs//x/./y'), 'abs/x/y');
  assert.equal(ok('./'), '');
  assert.equal(ok('a/../b'), 'b');
  for (const bad of ['../escape', 'a/../../x', '/..', './../x', 'a/b/../../../c', 'nul\0byte']) {
    assert.equal(normaliseEntryPath(bad).ok, false, bad);
  }
});

test('parsePaxRecords keeps values as raw bytes', () => {
  const value = Buffer.from([0x00, 0xff, 0x80, 0x0a, 0x3d]);
  const rec = (key: string, v: Buffer) => {
    const body = Buffer.concat([Buffer.from(` ${key}=`), v, Buffer.from('\n')]);
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len = String(len).length + body.length;
    return Buffer.concat([Buffer.from(String(len)), body]);
  };
  const parsed = parsePaxRecords(Buffer.concat([rec('SCHILY.xattr.user.bin', value), rec('path', Buffer.from('x/y'))]));
  assert.ok(parsed.get('SCHILY.xattr.user.bin')!.equals(value));
  assert.equal(parsed.get('path')!.toString(), 'x/y');
});

for (const format of ['pax', 'gnu'] as const) {
  test(`a GNU tar (${format} format) of the sample tree extracts to the same tree`, async (t) => {
    const dir = await tempDir(t);
    const src = join(dir, 'src');
    await writeSampleTree(src);
    const tarPath = join(dir, 'layer.tar');
    // GNU format has no xattrs: they are left out of the comparison there.
    const xattrArgs = format === 'pax' ? TAR_ARGS : TAR_ARGS.filter((a) => !a.startsWith('--xattrs'));
    sh('tar', [...xattrArgs, `--format=${format}`, '-C', src, '-cf', tarPath, '.']);
    const staging = join(dir, 'staging');
    const stats = await extractLayerTar(Readable.from([await readFile(tarPath)]), staging, { layerDigest: DIGEST });
    const expected = await snapshotTree(src);
    if (format === 'gnu') for (const info of expected.values()) info.xattrs = {};
    assert.deepEqual(diffTrees(expected, await snapshotTree(staging)), []);
    assert.equal(stats.hardLinks, 1);
    assert.equal(stats.charDevices, 1);
    assert.equal(stats.blockDevices, 1);
    assert.equal(stats.fifos, 1);
    assert.equal(stats.implicitDirs, 0);
    assert.ok(stats.contentBytes > 3 * 1024 * 1024);
    if (format === 'pax') assert.equal(stats.xattrs, 6);
  });
}

test('libarchive xattr records (percent-encoded name, base64 value) are applied', async (t) => {
  const dir = await tempDir(t);
  const tar = await packTar([
    { name: 'f', content: 'x', pax: { 'LIBARCHIVE.xattr.user.a%3Db': Buffer.from([0xde, 0xad, 0x00]).toString('base64') } },
  ]);
  const stats = await extractBuffer(tar, join(dir, 's'));
  assert.equal(stats.xattrs, 1);
  const out = execFileSync('getfattr', ['-d', '-m', '-', '-e', 'hex', '--absolute-names', join(dir, 's/f')]).toString();
  assert.match(out, /user\.a\\075b=0xdead00/);
});

test('trusted.overlay.* xattrs from the tar are dropped', async (t) => {
  const dir = await tempDir(t);
  const tar = await packTar([
    { name: 'd/', type: 'directory', pax: { 'SCHILY.xattr.trusted.overlay.opaque': 'y', 'SCHILY.xattr.user.keep': 'k' } },
  ]);
  const stats = await extractBuffer(tar, join(dir, 's'));
  assert.equal(stats.droppedXattrs, 1);
  assert.equal(xattrHex(join(dir, 's/d'), 'trusted.overlay.opaque'), undefined);
  assert.equal(xattrHex(join(dir, 's/d'), 'user.keep'), Buffer.from('k').toString('hex'));
});

test('whiteouts become overlayfs whiteouts and opaque markers', async (t) => {
  const dir = await tempDir(t);
  const s = join(dir, 's');
  const tar = await packTar([
    { name: 'dir/', type: 'directory' },
    { name: 'dir/.wh.gone', mtime: new Date('2019-01-01T00:00:00Z') },
    { name: 'opq/.wh..wh..opq' }, // no entry for opq/ itself: it is created
    { name: 'opq/new', content: 'new' },
    { name: 'dir/.wh..wh.plnk' }, // aufs bookkeeping: ignored
    { name: 'same/', type: 'directory' },
    { name: 'same/.wh.file-here' },
    { name: 'same/file-here', content: 'this layer has it' }, // later entry replaces the whiteout
    { name: 'same/.wh.kept' },
    { name: 'redo/.wh.sub' }, // the lower "sub" is deleted, then recreated in this layer
    { name: 'redo/sub/x', content: 'x' },
    { name: 'again/', type: 'directory' },
    { name: 'again/d/', type: 'directory' },
    { name: 'again/.wh.d' }, // same layer has d: it is kept, but opaque
  ]);
  const stats = await extractBuffer(tar, s);
  const gone = await lstat(join(s, 'dir/gone'));
  assert.ok(gone.isCharacterDevice());
  assert.equal(gone.rdev, 0);
  assert.equal(gone.mode & 0o7777, 0);
  assert.equal(gone.mtime.getTime(), Date.parse('2019-01-01T00:00:00Z'));
  assert.equal(existsSync(join(s, 'dir/.wh.gone')), false);
  assert.deepEqual((await readdir(join(s, 'dir'))).sort(), ['gone']);
  assert.equal(xattrHex(join(s, 'opq'), 'trusted.overlay.opaque'), '79');
  assert.deepEqual(await readdir(join(s, 'opq')), ['new']);
  assert.equal(await readFile(join(s, 'same/file-here'), 'utf8'), 'this layer has it');
  assert.ok((await lstat(join(s, 'same/kept'))).isCharacterDevice());
  assert.equal(xattrHex(join(s, 'same'), 'trusted.overlay.opaque'), undefined);
  assert.ok((await lstat(join(s, 'redo/sub'))).isDirectory());
  assert.equal(xattrHex(join(s, 'redo/sub'), 'trusted.overlay.opaque'), '79');
  assert.equal(xattrHex(join(s, 'again/d'), 'trusted.overlay.opaque'), '79');
  assert.equal(stats.opaqueDirs, 3);
  assert.equal(stats.ignoredWhiteoutMeta, 1);
  assert.equal(stats.whiteoutsShadowed, 1);
});

test('later entries replace earlier ones with tar semantics', async (t) => {
  const dir = await tempDir(t);
  const s = join(dir, 's');
  const tar = await packTar([
    { name: 'f', content: 'first' },
    { name: 'link-to-f', type: 'link', linkname: 'f' },
    { name: 'f', content: 'second' }, // the hard link keeps the first content
    { name: 'd/', type: 'directory', mode: 0o700 },
    { name: 'd/child', content: 'c' },
    { name: 'd/', type: 'directory', mode: 0o750, uid: 7 }, // stays a directory, new metadata
    { name: 'gone-dir/sub/x', content: 'x' },
    { name: 'gone-dir', content: 'now a file' }, // a file replaces a whole directory
    { name: 'was-file', content: 'x' },
    { name: 'was-file/', type: 'directory' }, // a directory replaces a file
    { name: 'sym', type: 'symlink', linkname: '/somewhere' },
    { name: 'sym', type: 'symlink', linkname: 'elsewhere' },
  ]);
  await extractBuffer(tar, s);
  assert.equal(await readFile(join(s, 'f'), 'utf8'), 'second');
  assert.equal(await readFile(join(s, 'link-to-f'), 'utf8'), 'first');
  const d = await lstat(join(s, 'd'));
  assert.equal(d.mode & 0o7777, 0o750);
  assert.equal(d.uid, 7);
  assert.equal(d.mtime.getTime() / 1000, MTIME_S);
  assert.deepEqual(await readdir(join(s, 'd')), ['child']);
  assert.equal(await readFile(join(s, 'gone-dir'), 'utf8'), 'now a file');
  assert.ok((await lstat(join(s, 'was-file'))).isDirectory());
  assert.equal(sh('readlink', [join(s, 'sym')]).toString().trim(), 'elsewhere');
});

test('implicit parent directories get fixed defaults or the metadata the caller supplies', async (t) => {
  const dir = await tempDir(t);
  const tar = await packTar([{ name: 'a/b/c', content: 'deep' }]);
  const stats = await extractBuffer(tar, join(dir, 's1'));
  assert.equal(stats.implicitDirs, 2);
  for (const p of ['', 'a', 'a/b']) {
    const st = await lstat(join(dir, 's1', p));
    assert.equal(st.mode & 0o7777, DEFAULT_IMPLICIT_DIR_MODE, p);
    assert.equal(st.mtime.getTime(), 0, p);
  }
  await extractLayerTar(Readable.from([tar]), join(dir, 's2'), {
    implicitDirMetadata: (rel) => (rel === 'a' ? { mode: 0o1777, uid: 5, gid: 6, mtime: 1234567 } : undefined),
  });
  const a = await lstat(join(dir, 's2/a'));
  assert.equal(a.mode & 0o7777, 0o1777);
  assert.equal(a.uid, 5);
  assert.equal(a.mtime.getTime(), 1234567000);
});

/** Patches the typeflag of the first header of a tar and fixes its checksum. */
function setTypeflag(tar: Buffer, flag: string): Buffer {
  const out = Buffer.from(tar);
  out[156] = flag.charCodeAt(0);
  out.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += out[i]!;
  out.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return out;
}

test('unsafe or unrepresentable entries are rejected with a typed error naming the entry', async (t) => {
  const dir = await tempDir(t);
  const outside = join(dir, 'outside');
  await mkdir(outside);
  await writeFile(join(outside, 'sentinel'), 'untouched');
  const unique = `erofs-lazy-test-${randomBytes(6).toString('hex')}`;
  const cases: Array<{ label: string; entries?: EntrySpec[]; tar?: Buffer; entry: string; reason: RegExp }> = [
    { label: 'dot-dot', entries: [{ name: '../escape', content: 'x' }], entry: '../escape', reason: /escapes/ },
    { label: 'climbing', entries: [{ name: 'a/../../x', content: 'x' }], entry: 'a/../../x', reason: /escapes/ },
    {
      label: 'through an absolute symlink',
      entries: [
        { name: 'link', type: 'symlink', linkname: '/etc' },
        { name: `link/${unique}`, content: 'x' },
      ],
      entry: `link/${unique}`,
      reason: /symlink/,
    },
    {
      label: 'through a symlink to an outside dir',
      entries: [
        { name: 'out', type: 'symlink', linkname: outside },
        { name: 'out/sentinel', content: 'overwritten' },
      ],
      entry: 'out/sentinel',
      reason: /symlink/,
    },
    {
      label: 'through a relative symlink',
      entries: [
        { name: 'l', type: 'symlink', linkname: '..' },
        { name: 'l/x', content: 'x' },
      ],
      entry: 'l/x',
      reason: /symlink/,
    },
    {
      label: 'directory through a symlink',
      entries: [
        { name: 'l', type: 'symlink', linkname: '..' },
        { name: 'l/newdir/', type: 'directory' },
      ],
      entry: 'l/newdir/',
      reason: /symlink/,
    },
    {
      label: 'hard link out',
      entries: [{ name: 'h', type: 'link', linkname: '../outside/sentinel' }],
      entry: 'h',
      reason: /escapes/,
    },
    { label: 'hard link to nothing', entries: [{ name: 'h', type: 'link', linkname: 'missing' }], entry: 'h', reason: /does not exist/ },
    {
      label: 'hard link through a symlink',
      entries: [
        { name: 'l', type: 'symlink', linkname: outside },
        { name: 'h', type: 'link', linkname: 'l/sentinel' },
      ],
      entry: 'h',
      reason: /does not exist/,
    },
    {
      label: 'file under a file',
      entries: [
        { name: 'f', content: 'x' },
        { name: 'f/g', content: 'x' },
      ],
      entry: 'f/g',
      reason: /not a directory/,
    },
    { label: 'bad whiteout', entries: [{ name: 'd/.wh..' }], entry: 'd/.wh..', reason: /whiteout/ },
    { label: 'volume header', tar: setTypeflag(await packTar([{ name: 'vol', content: '' }]), 'V'), entry: 'vol', reason: /unsupported/ },
    {
      label: 'GNU sparse',
      entries: [{ name: 'sp', content: 'x', pax: { 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0' } }],
      entry: 'sp',
      reason: /sparse/,
    },
  ];
  for (const [i, c] of cases.entries()) {
    const staging = join(dir, `staging-${i}`);
    const tar = c.tar ?? (await packTar(c.entries!));
    await assert.rejects(extractBuffer(tar, staging), (err: unknown) => {
      assert.ok(err instanceof LayerEntryError, `${c.label}: ${String(err)}`);
      assert.equal(err.entryPath, c.entry, c.label);
      assert.equal(err.layerDigest, DIGEST);
      assert.ok(err.message.includes(DIGEST) && err.message.includes(JSON.stringify(c.entry)), err.message);
      assert.match(err.reason, c.reason, c.label);
      return true;
    });
  }
  // Markers whose directory became a symlink later must not reach through it.
  await mkdir(join(outside, 'y'));
  const later = await packTar([
    { name: 'x/y/.wh..wh..opq' },
    { name: 'w/.wh.y' },
    { name: 'w/y/', type: 'directory' },
    { name: 'x', type: 'symlink', linkname: outside },
    { name: 'w', type: 'symlink', linkname: outside },
  ]);
  const stats = await extractBuffer(later, join(dir, 'staging-later'));
  assert.equal(stats.opaqueDirs, 0);
  assert.equal(xattrHex(join(outside, 'y'), 'trusted.overlay.opaque'), undefined);

  // Nothing was written outside the staging directories.
  assert.deepEqual((await readdir(outside)).sort(), ['sentinel', 'y']);
  assert.equal(await readFile(join(outside, 'sentinel'), 'utf8'), 'untouched');
  assert.equal(existsSync(join('/etc', unique)), false);
  assert.deepEqual((await readdir(dir)).filter((n) => !n.startsWith('staging-')), ['outside']);
  assert.equal(existsSync(join(dir, 'escape')), false);
});

test('a corrupt or truncated tar stream is a LayerExtractError with the layer digest', async (t) => {
  const dir = await tempDir(t);
  const good = await packTar([{ name: 'f', content: 'x'.repeat(5000) }]);
  const corrupt = Buffer.from(good);
  corrupt.fill(0x41, 0, 100); // breaks the header checksum
  await assert.rejects(extractBuffer(corrupt, join(dir, 'a')), (err: unknown) => {
    assert.ok(err instanceof LayerExtractError && !(err instanceof LayerEntryError), String(err));
    assert.match(err.message, new RegExp(`${DIGEST}.*(header|checksum)`, 'i'));
    return true;
  });
  await assert.rejects(extractBuffer(good.subarray(0, 2048), join(dir, 'b')), (err: unknown) => {
    assert.ok(err instanceof LayerExtractError, String(err));
    assert.match(err.message, /unexpected end/i);
    return true;
  });
  async function* failing(): AsyncGenerator<Buffer> {
    yield good.subarray(0, 1024);
    throw new Error('blob digest mismatch');
  }
  await assert.rejects(extractLayerTar(failing(), join(dir, 'c'), { layerDigest: DIGEST }), (err: unknown) => {
    assert.ok(err instanceof LayerExtractError, String(err));
    assert.match(err.message, new RegExp(`${DIGEST}.*blob digest mismatch`));
    assert.equal((err.cause as Error).message, 'blob digest mismatch');
    return true;
  });
});

test('the staging directory must be empty', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'stray'), '');
  await assert.rejects(extractBuffer(await packTar([{ name: 'f' }]), dir), /not empty/);
});
