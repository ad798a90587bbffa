// Unit tests of the snapshotter's metadata store: records survive reopening, interrupted writes (temp files,
// torn records) never lose or damage other records, and a damaged record gives a clear error (or is set
// aside when the caller accepts that).
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { MetadataCorruptError, MetadataStore, encodeRecord } from '../../src/snapshotter/store.js';
import type { SnapshotRecord } from '../../src/snapshotter/store.js';
import { tempDir } from '../helpers/tmp.js';

const T0 = '2026-01-02T03:04:05.678Z';

function record(id: string, name: string, extra: Partial<SnapshotRecord> = {}): SnapshotRecord {
  return { id, name, kind: 'committed', labels: { owner: name }, createdAt: T0, updatedAt: T0, ...extra };
}

const REMOTE = {
  imageRef: '127.0.0.1:5000/app:v1',
  manifestDigest: `sha256:${'a'.repeat(64)}`,
  descriptor: { mediaType: 'application/vnd.erofs.layer.v1+zstd', digest: `sha256:${'b'.repeat(64)}`, size: 1234, annotations: { 'dev.containerd.erofs.zstd.chunk_digest': `sha512:${'c'.repeat(128)}` } },
};

async function filledStore(dir: string): Promise<MetadataStore> {
  const store = await MetadataStore.open(dir);
  await store.put(record('1', 'base'));
  await store.put(record('2', 'remote', { parent: 'base', remote: REMOTE }));
  await store.put(record('3', 'work-key', { kind: 'active', parent: 'remote' }));
  return store;
}

test('records survive reopening: creates, a commit-style rename, label changes and deletes', async (t) => {
  const dir = join(await tempDir(t), 'metadata');
  const store = await filledStore(dir);
  const active = store.get('work-key')!;
  await store.put({ ...active, name: 'committed-top', kind: 'committed', labels: { a: 'b' } });
  await store.put(record('4', 'scratch'));
  await store.delete('4');
  assert.equal(store.has('work-key'), false);

  const again = await MetadataStore.open(dir);
  assert.deepEqual(
    again.all().map((r) => [r.id, r.name, r.kind, r.parent]),
    [
      ['1', 'base', 'committed', undefined],
      ['2', 'remote', 'committed', 'base'],
      ['3', 'committed-top', 'committed', 'remote'],
    ],
  );
  assert.deepEqual(again.get('remote')!.remote, REMOTE);
  assert.deepEqual(again.get('committed-top')!.labels, { a: 'b' });
  assert.deepEqual(again.children('base'), ['remote']);
  assert.equal(again.allocateId(), '4', 'new ids are above every record');
  assert.equal(again.allocateId(41), '42', 'ids stay above a floor (snapshot dirs still on disk)');
  assert.equal(again.allocateId(), '43');
});

test('a temp file left by an interrupted write is removed and loses nothing', async (t) => {
  const dir = join(await tempDir(t), 'metadata');
  await filledStore(dir);
  // A crash during put: the new content of record 1 half written to its temp file, never renamed.
  const half = encodeRecord(record('1', 'base', { labels: { changed: 'yes' } }));
  await writeFile(join(dir, '.1.json.tmp-999-abcdef'), half.slice(0, half.length / 2));
  await writeFile(join(dir, '.7.json.tmp-999-012345'), '');
  const store = await MetadataStore.open(dir);
  assert.equal(store.size, 3);
  assert.deepEqual(store.get('base')!.labels, { owner: 'base' }, 'the old content of the record is intact');
  assert.deepEqual((await readdir(dir)).sort(), ['1.json', '2.json', '3.json']);
});

test('a torn record file fails the open with a clear error naming it; other records are unaffected', async (t) => {
  const dir = join(await tempDir(t), 'metadata');
  await filledStore(dir);
  const file = join(dir, '2.json');
  const content = await readFile(file, 'utf8');
  await writeFile(file, content.slice(0, 40));
  await assert.rejects(MetadataStore.open(dir), (err: unknown) => {
    assert.ok(err instanceof MetadataCorruptError);
    assert.equal(err.file, file);
    assert.match(err.message, /2\.json is damaged: not valid JSON/);
    return true;
  });
  // Accepting the loss sets the file aside and keeps every other record.
  const seen: string[] = [];
  const store = await MetadataStore.open(dir, { onCorrupt: (err) => seen.push(err.file) });
  assert.deepEqual(seen, [file]);
  assert.deepEqual(store.all().map((r) => r.name), ['base', 'work-key']);
  const names = await readdir(dir);
  assert.ok(names.some((n) => n.startsWith('2.json.corrupt-')), names.join(','));
  assert.equal(store.allocateId(), '4', 'the id of the damaged record is not reused');
  const reopened = await MetadataStore.open(dir);
  assert.equal(reopened.size, 2, 'a set-aside record stays out');
});

test('a record altered on disk is refused by its checksum; a wrong shape or a mismatched id too', async (t) => {
  const dir = join(await tempDir(t), 'metadata');
  await filledStore(dir);
  const file = join(dir, '1.json');
  const good = await readFile(file, 'utf8');
  await writeFile(file, good.replace('"owner":"base"', '"owner":"evil"'));
  await assert.rejects(MetadataStore.open(dir), /1\.json is damaged: record does not match its SHA-256/);

  await writeFile(file, encodeRecord({ ...record('1', 'base'), kind: 'weird' as 'active' }));
  await assert.rejects(MetadataStore.open(dir), /1\.json is damaged: invalid kind "weird"/);

  await writeFile(file, encodeRecord(record('9', 'base')));
  await assert.rejects(MetadataStore.open(dir), /1\.json is damaged: record id 9 does not match the file name/);

  await writeFile(file, encodeRecord(record('1', 'remote')));
  await assert.rejects(MetadataStore.open(dir), /is damaged: name "remote" is also used by record 1/);

  await writeFile(file, good);
  assert.equal((await MetadataStore.open(dir)).size, 3);
});

test('put refuses invalid records and names held by another record', async (t) => {
  const store = await MetadataStore.open(join(await tempDir(t), 'metadata'));
  await store.put(record('1', 'a'));
  await assert.rejects(store.put(record('2', 'a')), /already used by record 1/);
  await assert.rejects(store.put({ ...record('3', 'b'), kind: 'active', remote: REMOTE }), /remote layer snapshot must be committed/);
  await assert.rejects(store.put({ ...record('3', 'b'), labels: { x: 1 as unknown as string } }), /labels are not a string map/);
  assert.deepEqual(store.all().map((r) => r.name), ['a']);
  const copy = store.get('a')!;
  copy.labels.mutated = 'yes';
  assert.equal(store.get('a')!.labels.mutated, undefined, 'get returns copies');
});
