// Unit tests of the snapshot semantics (no mounts needed: the mounts are only described), containerd's filter
// language, and the Prometheus rendering. Remote layers go through a fake provider that records its calls.
import assert from 'node:assert/strict';
import { mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { LayerFilesystemStats } from '../../src/fuse/index.js';
import type { LayerStats } from '../../src/reader/index.js';
import { SnapshotError } from '../../src/snapshotter/errors.js';
import { matchFilters, parseFilter, parseFilters } from '../../src/snapshotter/filters.js';
import { Histogram, renderMetrics } from '../../src/snapshotter/metrics.js';
import {
  LABEL_CRI_IMAGE_REF,
  LABEL_CRI_LAYER_DIGEST,
  LABEL_CRI_MANIFEST_DIGEST,
  LABEL_REMOTE,
  LABEL_SNAPSHOT_REF,
  Snapshotter,
} from '../../src/snapshotter/snapshots.js';
import type { RemoteLayerProvider, RemoteLayerRequest, SnapshotUsage } from '../../src/snapshotter/snapshots.js';
import { MetadataStore } from '../../src/snapshotter/store.js';
import type { RemoteLayerRef } from '../../src/snapshotter/store.js';
import { tempDir } from '../helpers/tmp.js';

function code(c: SnapshotError['code']): (err: unknown) => boolean {
  return (err: unknown) => err instanceof SnapshotError && err.code === c;
}

async function open(root: string, remote?: RemoteLayerProvider, log: string[] = []): Promise<Snapshotter> {
  const store = await MetadataStore.open(join(root, 'metadata'));
  const s = new Snapshotter({ root, store, remote, log: (l) => log.push(l) });
  await s.init();
  return s;
}

class FakeRemote implements RemoteLayerProvider {
  calls: string[] = [];
  attached = new Map<string, string>();
  verdict: 'seekable' | 'not-seekable' | 'throw' = 'seekable';
  failAttach = false;

  async resolve(r: RemoteLayerRequest): Promise<RemoteLayerRef | { notRemote: string }> {
    this.calls.push(`resolve ${r.layerDigest}`);
    if (this.verdict === 'throw') throw new Error('registry unreachable');
    if (this.verdict === 'not-seekable') return { notRemote: 'media type tar+gzip is not seekable EROFS' };
    return { imageRef: r.imageRef, manifestDigest: r.manifestDigest, descriptor: { mediaType: 'application/vnd.erofs.layer.v1+zstd', digest: r.layerDigest, size: 10 } };
  }
  async attach(id: string, ref: RemoteLayerRef, fsDir: string): Promise<void> {
    this.calls.push(`attach ${id} ${ref.descriptor.digest}`);
    if (this.failAttach) throw new Error('loop device refused');
    this.attached.set(id, fsDir);
  }
  isAttached(id: string): boolean {
    return this.attached.has(id);
  }
  async detach(id: string, digest: string, _fsDir: string, lastUse: boolean): Promise<void> {
    this.calls.push(`detach ${id} ${digest} lastUse=${lastUse}`);
    this.attached.delete(id);
  }
  async usage(): Promise<SnapshotUsage> {
    return { size: 777, inodes: 3 };
  }
  async cleanup(inUse: ReadonlySet<string>): Promise<void> {
    this.calls.push(`cleanup ${[...inUse].join(',')}`);
  }
}

const L1 = `sha256:${'1'.repeat(64)}`;
const L2 = `sha256:${'2'.repeat(64)}`;

function remoteLabels(target: string, layer: string): Record<string, string> {
  return {
    [LABEL_SNAPSHOT_REF]: target,
    [LABEL_CRI_IMAGE_REF]: '127.0.0.1:5000/app:v1',
    [LABEL_CRI_LAYER_DIGEST]: layer,
    [LABEL_CRI_MANIFEST_DIGEST]: `sha256:${'f'.repeat(64)}`,
  };
}

test('prepare, commit and view describe the mounts of the overlayfs snapshotter', async (t) => {
  const root = await tempDir(t);
  const s = await open(root);
  const m0 = await s.prepare('ns/1/base', '', { a: 'b' });
  assert.deepEqual(m0, [{ type: 'bind', source: join(root, 'snapshots/1/fs'), options: ['rw', 'rbind'] }]);
  assert.ok((await stat(join(root, 'snapshots/1/work'))).isDirectory());
  await writeFile(join(root, 'snapshots/1/fs/file'), 'x'.repeat(10_000));
  await s.commit('base', 'ns/1/base', { committed: 'yes' });
  assert.throws(() => s.stat('ns/1/base'), code('not-found'), 'the active key is gone after commit');
  const base = s.stat('base');
  assert.equal(base.kind, 'committed');
  assert.deepEqual(base.labels, { committed: 'yes' });

  const m1 = await s.prepare('ns/2/mid', 'base', {});
  assert.deepEqual(m1, [
    { type: 'overlay', source: 'overlay', options: [`workdir=${join(root, 'snapshots/2/work')}`, `upperdir=${join(root, 'snapshots/2/fs')}`, `lowerdir=${join(root, 'snapshots/1/fs')}`] },
  ]);
  await s.commit('mid', 'ns/2/mid', {});
  const m2 = await s.prepare('ns/3/top', 'mid', {});
  assert.equal(m2[0]!.options[2], `lowerdir=${join(root, 'snapshots/2/fs')}:${join(root, 'snapshots/1/fs')}`, 'top layer first');
  assert.deepEqual(await s.mounts('ns/3/top'), m2);

  assert.deepEqual(await s.view('v1', 'base', {}), [{ type: 'bind', source: join(root, 'snapshots/1/fs'), options: ['ro', 'rbind'] }]);
  assert.deepEqual(await s.view('v2', 'mid', {}), [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${join(root, 'snapshots/2/fs')}:${join(root, 'snapshots/1/fs')}`] }]);
  const v3 = await s.view('v3', '', {});
  assert.deepEqual(v3, [{ type: 'bind', source: join(root, 'snapshots/6/fs'), options: ['ro', 'rbind'] }]);
  assert.equal(s.stat('v2').kind, 'view');

  const usage = await s.usage('base');
  assert.ok(usage.size >= 10_000 && usage.inodes === 2, JSON.stringify(usage));
});

test('errors carry the codes containerd maps to errdefs', async (t) => {
  const s = await open(await tempDir(t));
  await s.prepare('a', '', {});
  await assert.rejects(s.prepare('a', '', {}), code('already-exists'));
  await assert.rejects(s.prepare('b', 'missing', {}), code('not-found'));
  await assert.rejects(s.prepare('b', 'a', {}), code('invalid-argument'), 'parent must be committed');
  await assert.rejects(s.prepare('', '', {}), code('invalid-argument'));
  await assert.rejects(s.prepare('big', '', { k: 'v'.repeat(5000) }), code('invalid-argument'));
  await assert.rejects(s.commit('A', 'missing', {}), code('not-found'));
  await s.commit('A', 'a', {});
  await assert.rejects(s.commit('A2', 'A', {}), code('failed-precondition'), 'only active snapshots commit');
  await s.prepare('c', 'A', {});
  await assert.rejects(s.commit('A', 'c', {}), code('already-exists'));
  await assert.rejects(s.mounts('A'), code('failed-precondition'));
  await assert.rejects(s.mounts('nope'), code('not-found'));
  await assert.rejects(s.remove('A'), code('failed-precondition'), 'a parent with children');
  await assert.rejects(s.remove('nope'), code('not-found'));
  assert.throws(() => s.stat('nope'), code('not-found'));
  await assert.rejects(s.update({ name: 'A', labels: {} }, ['parent']), code('invalid-argument'));
  await assert.rejects(s.update({ name: 'nope', labels: {} }, []), code('not-found'));
  await assert.rejects(s.usage('nope'), code('not-found'));
  await s.remove('c');
  await s.remove('A');
  assert.deepEqual(s.list([]), []);
  assert.deepEqual(await readdir(join(s.root, 'snapshots')), [], 'removal deletes the snapshot dirs');
});

test('update follows the field mask; list honours filters', async (t) => {
  const s = await open(await tempDir(t));
  await s.prepare('k1', '', { keep: '1', drop: '2' });
  await s.commit('c1', 'k1', { keep: '1', drop: '2', 'containerd.io/snapshot.ref': 'sha256:abc' });
  await s.prepare('k2', 'c1', { role: 'app' });
  let info = await s.update({ name: 'c1', labels: { drop: '', added: 'x', keep: 'ignored' } }, ['labels.drop', 'labels.added']);
  assert.deepEqual(info.labels, { keep: '1', added: 'x', 'containerd.io/snapshot.ref': 'sha256:abc' });
  info = await s.update({ name: 'c1', labels: { only: 'this' } }, ['labels']);
  assert.deepEqual(info.labels, { only: 'this' });
  info = await s.update({ name: 'c1', labels: { all: 'replaced' } }, []);
  assert.deepEqual(info.labels, { all: 'replaced' });
  assert.ok(info.updatedAt.getTime() >= info.createdAt.getTime());
  await s.update({ name: 'c1', labels: { 'containerd.io/snapshot.ref': 'sha256:abc' } }, []);

  const names = (filters: string[]): string[] => s.list(filters).map((i) => i.name).sort();
  assert.deepEqual(names([]), ['c1', 'k2']);
  assert.deepEqual(names(['kind==committed']), ['c1']);
  assert.deepEqual(names(['kind==active', 'name==c1']), ['c1', 'k2'], 'filters are OR-ed');
  assert.deepEqual(names(['labels."containerd.io/snapshot.ref"==sha256:abc,parent==""']), ['c1'], 'no parent reads as ""');
  assert.deepEqual(names(['labels."containerd.io/snapshot.ref"==sha256:abc,parent=="x"']), [], 'selectors are AND-ed');
  assert.deepEqual(names(['labels."containerd.io/snapshot.ref"==sha256:abc']), ['c1']);
  assert.deepEqual(names(['parent=="c1"']), ['k2']);
  assert.deepEqual(names(['labels.role']), ['k2'], 'presence');
  assert.deepEqual(names(['name~=^k']), ['k2']);
  assert.deepEqual(names(['name!=k2']), ['c1']);
  assert.throws(() => s.list(['name==']), code('invalid-argument'));
});

test('filter parsing: quoted fields and values, bare values with colons and slashes', () => {
  const f = parseFilter('labels."containerd.io/snapshot.ref"==sha256:0123,parent=="default/3/sha256:ab"');
  assert.deepEqual(
    f.map((s) => [s.path, s.operator, s.value]),
    [
      [['labels', 'containerd.io/snapshot.ref'], '==', 'sha256:0123'],
      [['parent'], '==', 'default/3/sha256:ab'],
    ],
  );
  assert.deepEqual(parseFilter('labels.a.b==`x,y`')[0]!.value, 'x,y');
  assert.equal(matchFilters(parseFilters(['labels.a.b==1']), (p) => (p.join('.') === 'labels.a.b' ? '1' : undefined)), true);
  assert.throws(() => parseFilter('name=="unterminated'), /unterminated/);
  assert.throws(() => parseFilter('name~=('), /invalid regular expression/);
});

test('state survives a new Snapshotter on the same root; cleanup removes orphaned dirs', async (t) => {
  const root = await tempDir(t);
  const s1 = await open(root);
  await s1.prepare('a', '', {});
  await s1.commit('A', 'a', {});
  await s1.prepare('b', 'A', {});
  await mkdir(join(root, 'snapshots/17/fs'), { recursive: true });
  const s2 = await open(root);
  assert.equal(s2.stat('A').kind, 'committed');
  assert.equal(s2.stat('b').parent, 'A');
  const m = await s2.prepare('c', '', {});
  assert.equal(m[0]!.source, join(root, 'snapshots/18/fs'), 'ids stay above directories on disk');
  await s2.cleanup();
  assert.deepEqual((await readdir(join(root, 'snapshots'))).sort(), ['1', '18', '2']);
});

test('remote layers: ALREADY_EXISTS with a committed snapshot under snapshot.ref; fallbacks; removal detaches', async (t) => {
  const root = await tempDir(t);
  const remote = new FakeRemote();
  const log: string[] = [];
  const s = await open(root, remote, log);

  await assert.rejects(s.prepare('ns/1/extract-1', '', remoteLabels('chain1', L1)), code('already-exists'));
  const c1 = s.stat('chain1');
  assert.equal(c1.kind, 'committed');
  assert.equal(c1.parent, undefined);
  assert.equal(c1.labels[LABEL_SNAPSHOT_REF], 'chain1');
  assert.equal(c1.labels[LABEL_REMOTE], 'true');
  assert.throws(() => s.stat('ns/1/extract-1'), code('not-found'), 'the extraction key is never created');

  await assert.rejects(s.prepare('ns/2/extract-2', 'chain1', remoteLabels('chain2', L2)), code('already-exists'));
  assert.equal(s.stat('chain2').parent, 'chain1');
  assert.deepEqual(s.list(['labels."containerd.io/snapshot.ref"==chain2,parent=="chain1"']).map((i) => i.name), ['chain2']);

  remote.calls = [];
  await assert.rejects(s.prepare('ns/3/extract-2', 'chain1', remoteLabels('chain2', L2)), code('already-exists'));
  assert.deepEqual(remote.calls, [], 'an existing target is answered at once');

  // A container on top: overlay of both remote fs dirs.
  const m = await s.prepare('ctr', 'chain2', {});
  assert.equal(m[0]!.options[2], `lowerdir=${remote.attached.get('2')}:${remote.attached.get('1')}`);
  assert.deepEqual(await s.usage('chain1'), { size: 777, inodes: 3 });

  // The same layer under another parent shares it: removing one is not the last use.
  await assert.rejects(s.prepare('ns/4/x', '', remoteLabels('chain2-alone', L2)), code('already-exists'));

  // Not seekable, or the registry is down, or mounting fails: an ordinary active snapshot.
  remote.verdict = 'not-seekable';
  const plain = await s.prepare('ns/5/plain', '', remoteLabels('chain-plain', L1));
  assert.equal(plain[0]!.type, 'bind');
  assert.equal(s.stat('ns/5/plain').kind, 'active');
  remote.verdict = 'throw';
  assert.equal((await s.prepare('ns/6/down', '', remoteLabels('chain-down', L1)))[0]!.type, 'bind');
  remote.verdict = 'seekable';
  remote.failAttach = true;
  assert.equal((await s.prepare('ns/7/fail', '', remoteLabels('chain-fail', L1)))[0]!.type, 'bind');
  remote.failAttach = false;
  assert.ok(log.some((l) => /is not lazy: media type tar\+gzip/.test(l)), log.join('\n'));
  assert.ok(log.some((l) => /remote mount failed \(registry unreachable\); containerd will download it/.test(l)), log.join('\n'));
  assert.ok(log.some((l) => /remote mount failed \(loop device refused\)/.test(l)), log.join('\n'));

  // A view (not a prepare) never goes remote.
  remote.calls = [];
  await s.view('ns/8/v', '', remoteLabels('chain-view', L1));
  assert.deepEqual(remote.calls, []);

  remote.calls = [];
  await assert.rejects(s.remove('chain1'), code('failed-precondition'));
  await s.remove('ctr');
  await s.remove('chain2');
  await s.remove('chain1');
  await s.remove('chain2-alone');
  assert.deepEqual(remote.calls, [`detach 2 ${L2} lastUse=false`, `detach 1 ${L1} lastUse=true`, `detach 4 ${L2} lastUse=true`]);
});

test('remote snapshots are attached again after a restart, and on use when that failed', async (t) => {
  const root = await tempDir(t);
  const r1 = new FakeRemote();
  const s1 = await open(root, r1);
  await assert.rejects(s1.prepare('e1', '', remoteLabels('chain1', L1)), code('already-exists'));
  await s1.prepare('ctr', 'chain1', {});

  const r2 = new FakeRemote();
  r2.failAttach = true;
  const log: string[] = [];
  const s2 = await open(root, r2, log);
  assert.deepEqual(await s2.restoreRemote(), { restored: 0, failed: 1 });
  assert.match(log.join('\n'), /could not be mounted again: loop device refused; will retry when it is used/);
  await assert.rejects(s2.mounts('ctr'), code('unavailable'));
  await assert.rejects(s2.prepare('ctr2', 'chain1', {}), code('unavailable'));
  assert.throws(() => s2.stat('ctr2'), code('not-found'), 'nothing is created on top of an unmountable layer');
  r2.failAttach = false;
  const m = await s2.mounts('ctr');
  assert.equal(m[0]!.options[2], `lowerdir=${join(root, 'snapshots/1/fs')}`);
  assert.ok(r2.isAttached('1'));
  await s2.cleanup();
  assert.deepEqual(r2.calls.at(-1), `cleanup ${L1}`);
});

test('metrics: contract names, per-layer labels, cumulative latency buckets', async () => {
  const h = new Histogram([0.001, 0.01, 0.1]);
  for (const v of [0.0005, 0.005, 0.005, 0.5]) h.observe(v);
  const stats: LayerStats = {
    layerDigest: L1,
    imageSize: 100,
    blobSize: 5000,
    chunkCount: 4,
    lazy: true,
    bytesFetched: 123,
    requests: 2,
    chunksFetched: 3,
    memoryHits: 4,
    diskHits: 5,
    bytesServed: 6,
    reads: 7,
    readErrors: 0,
    verificationFailures: 1,
    retries: 2,
    fractionFetched: 0.5,
  };
  const fuse: LayerFilesystemStats = { reads: 9, bytesRead: 6, readErrors: 0, maxReadLength: 4096, readsInFlight: 0, maxReadsInFlight: 1 };
  const text = await renderMetrics({ layers: async () => [{ layerDigest: L1, stats, fuse, latency: h.snapshot() }], remoteSnapshots: () => 3 });
  const l = `layer="${L1}"`;
  for (const line of [
    `erofs_lazy_fetched_bytes_total{${l}} 123`,
    `erofs_lazy_fetch_requests_total{${l}} 2`,
    `erofs_lazy_layer_blob_bytes{${l}} 5000`,
    `erofs_lazy_fetch_retries_total{${l}} 2`,
    `erofs_lazy_verification_failures_total{${l}} 1`,
    `erofs_lazy_cache_hits_total{${l},cache="memory"} 4`,
    `erofs_lazy_cache_hits_total{${l},cache="disk"} 5`,
    `erofs_lazy_cache_misses_total{${l}} 3`,
    `erofs_lazy_read_latency_seconds_bucket{${l},le="0.001"} 1`,
    `erofs_lazy_read_latency_seconds_bucket{${l},le="0.01"} 3`,
    `erofs_lazy_read_latency_seconds_bucket{${l},le="0.1"} 3`,
    `erofs_lazy_read_latency_seconds_bucket{${l},le="+Inf"} 4`,
    `erofs_lazy_read_latency_seconds_count{${l}} 4`,
    'erofs_lazy_remote_snapshots 3',
    '# TYPE erofs_lazy_read_latency_seconds histogram',
  ]) {
    assert.ok(text.split('\n').includes(line), `missing ${line}\n${text}`);
  }
});
