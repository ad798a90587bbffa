// The containerd gRPC client against an in-process fake containerd (same protos, real grpc-js over a
// unix socket): namespace and lease headers, streamed content writes, error mapping, chain IDs.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import {
  CONTENT_WRITE_CHUNK_BYTES,
  ContainerdClient,
  ContainerdError,
  chainIds,
  extractKey,
  grpcTarget,
  isNotFound,
} from '../../src/containerd/index.js';
import { startFakeContainerd } from '../helpers/containerd.js';

function digestOf(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

describe('containerd client', () => {
  test('chain IDs follow identity.ChainID (vector checked against containerd 1.6 by `ctr run`)', () => {
    const d0 = 'sha256:fa554c1170cfad89d26ef20622a307b596ec76cb63caff7d41dcc063876d3e21';
    const d1 = 'sha256:c34dbb3d4385a36061b1fbc086a16cbbcd8c6a79835f66d1e627bd18b4826f9b';
    assert.deepEqual(chainIds([d0, d1]), [d0, 'sha256:9aed6581393aae81ed80580d3c5ff4be9887e7ebaf17d02633b50562d666fdc6']);
    assert.deepEqual(chainIds([]), []);
    const keys = new Set([extractKey(d0), extractKey(d0)]);
    assert.equal(keys.size, 2, 'extraction keys are unique');
    for (const k of keys) assert.match(k, /^extract-\S+ sha256:fa554c/);
  });

  test('addresses become unix targets; relative paths are refused', () => {
    assert.equal(grpcTarget('/run/containerd/containerd.sock'), 'unix:///run/containerd/containerd.sock');
    assert.equal(grpcTarget('unix:///x/y.sock'), 'unix:///x/y.sock');
    assert.throws(() => grpcTarget('containerd.sock'), /absolute unix socket path/);
  });

  test('every call carries the namespace header, and a lease view also the lease header', async (t) => {
    const fake = await startFakeContainerd(t);
    const client = ContainerdClient.connect(fake.address, { namespace: 'ns-one' });
    t.after(() => client.close());
    await client.images.list();
    const leased = client.withLease('lease-42');
    assert.equal(leased.lease, 'lease-42');
    assert.equal(await leased.snapshots.stat('snap', 'missing'), undefined);
    await client.leases.create({ id: 'x', labels: { a: 'b' } });
    assert.deepEqual(
      fake.calls.map((c) => [c.method, c.namespace, c.lease]),
      [
        ['Images/List', 'ns-one', undefined],
        ['Snapshots/Stat', 'ns-one', 'lease-42'],
        ['Leases/Create', 'ns-one', undefined],
      ],
    );
    assert.deepEqual(fake.leases.get('x'), { a: 'b' });
  });

  test('content writes stream in bounded chunks and commit with the expected digest, size and labels', async (t) => {
    const fake = await startFakeContainerd(t);
    const client = ContainerdClient.connect(fake.address);
    t.after(() => client.close());
    const blob = Buffer.alloc(CONTENT_WRITE_CHUNK_BYTES * 2 + 12345, 7);
    for (let i = 0; i < blob.length; i += 4096) blob[i] = i & 0xff;
    const desc = { mediaType: 'application/octet-stream', digest: digestOf(blob), size: blob.length };
    // A stream of odd-sized pieces, some bigger than a message.
    const pieces = [blob.subarray(0, 100), blob.subarray(100, CONTENT_WRITE_CHUNK_BYTES + 5000), blob.subarray(CONTENT_WRITE_CHUNK_BYTES + 5000)];
    let opened = 0;
    const result = await client.content.write(desc, async () => {
      opened++;
      return Readable.from(pieces);
    }, { ref: 'test-ref', labels: { 'containerd.io/uncompressed': 'sha256:abc' } });
    assert.equal(result, 'written');
    assert.equal(opened, 1);
    assert.ok(fake.writeChunkSizes.every((n) => n > 0 && n <= CONTENT_WRITE_CHUNK_BYTES), `chunks ${fake.writeChunkSizes.join(',')}`);
    assert.equal(fake.writeChunkSizes.reduce((a, b) => a + b, 0), blob.length);
    assert.deepEqual(fake.content.get(desc.digest)?.data, blob);
    const info = await client.content.info(desc.digest);
    assert.equal(info?.size, blob.length);
    assert.deepEqual(info?.labels, { 'containerd.io/uncompressed': 'sha256:abc' });
    const writes = fake.calls.filter((c) => c.method === 'Content/Write');
    assert.equal(writes[0]!.request.action, 'STAT');
    assert.equal(writes.at(-1)!.request.action, 'COMMIT');
    assert.equal(writes.at(-1)!.request.expected, desc.digest);
    assert.equal(writes.at(-1)!.request.total, blob.length);

    // Already there: the body is never opened; labels can be set one by one.
    const again = await client.content.write(desc, async () => {
      opened++;
      return Readable.from(pieces);
    }, { ref: 'test-ref-2' });
    assert.equal(again, 'exists');
    assert.equal(opened, 1);
    await client.content.setLabels(desc.digest, { 'containerd.io/gc.ref.content.config': 'sha256:def' });
    assert.deepEqual(fake.content.get(desc.digest)?.labels, {
      'containerd.io/uncompressed': 'sha256:abc',
      'containerd.io/gc.ref.content.config': 'sha256:def',
    });
    assert.deepEqual(await client.content.read(desc.digest), blob);
  });

  test('a write waits while another writer holds the ingest ref, then goes on', async (t) => {
    const fake = await startFakeContainerd(t);
    const client = ContainerdClient.connect(fake.address);
    t.after(() => client.close());
    const blob = Buffer.from('locked for a moment');
    const desc = { mediaType: 'application/octet-stream', digest: digestOf(blob), size: blob.length };
    fake.lockedWrites = 2;
    assert.equal(await client.content.write(desc, blob, { ref: 'busy-ref' }), 'written');
    assert.equal(fake.lockedWrites, 0);
    assert.equal(fake.calls.filter((c) => c.method === 'Content/Write' && c.request.action === 'STAT').length, 3);
    assert.deepEqual(fake.content.get(desc.digest)?.data, blob);
  });

  test('a source shorter than its descriptor fails the write instead of committing', async (t) => {
    const fake = await startFakeContainerd(t);
    const client = ContainerdClient.connect(fake.address);
    t.after(() => client.close());
    const blob = Buffer.from('short');
    const desc = { mediaType: 'application/octet-stream', digest: digestOf(blob), size: blob.length + 1 };
    await assert.rejects(client.content.write(desc, blob, { ref: 'r' }), /source gave 5 bytes, descriptor says 6/);
    assert.equal(fake.content.size, 0);
  });

  test('NOT_FOUND reads as absent; other failures are ContainerdErrors naming the method and code', async (t) => {
    const fake = await startFakeContainerd(t);
    const client = ContainerdClient.connect(fake.address);
    t.after(() => client.close());
    assert.equal(await client.content.info('sha256:' + '0'.repeat(64)), undefined);
    assert.equal(await client.images.get('nope'), undefined);
    await assert.rejects(client.snapshots.remove('s', 'nope'), (err: unknown) => {
      assert.ok(err instanceof ContainerdError);
      assert.equal(err.code, status.NOT_FOUND);
      assert.equal(err.method, 'Snapshots/Remove');
      assert.ok(isNotFound(err));
      return true;
    });
    await assert.rejects(client.snapshots.view('s', 'k', ''), (err: unknown) => {
      assert.ok(err instanceof ContainerdError);
      assert.equal(err.codeName, 'UNIMPLEMENTED');
      assert.match(err.message, /^containerd Snapshots\/View: no views here$/);
      return true;
    });
  });

  test('a streamed List is gathered from every message', async (t) => {
    const fake = await startFakeContainerd(t);
    const client = ContainerdClient.connect(fake.address);
    t.after(() => client.close());
    await client.snapshots.prepare('s', 'a', '');
    await client.snapshots.commit('s', 'A', 'a', { x: '1' });
    await client.snapshots.prepare('s', 'b', 'A');
    await client.snapshots.prepare('other', 'c', '');
    const list = await client.snapshots.list('s');
    assert.deepEqual(list.map((s) => [s.name, s.parent, s.kind]).sort(), [
      ['A', '', 'COMMITTED'],
      ['b', 'A', 'ACTIVE'],
    ]);
    assert.deepEqual((await client.snapshots.stat('s', 'A'))?.labels, { x: '1' });
    assert.deepEqual(await client.snapshots.mounts('s', 'b'), [{ type: 'bind', source: '/fake/b', target: '', options: ['ro', 'rbind'] }]);
  });

  test('an address where nothing listens fails fast with the socket path', async () => {
    const client = ContainerdClient.connect('/nonexistent/erofs-lazy-test/containerd.sock', { callTimeoutMs: 5000 });
    try {
      await assert.rejects(client.images.list(), (err: unknown) => {
        assert.ok(err instanceof ContainerdError);
        assert.equal(err.code, status.UNAVAILABLE);
        assert.match(err.message, /containerd Images\/List: .*\/nonexistent\/erofs-lazy-test\/containerd\.sock/);
        return true;
      });
    } finally {
      client.close();
    }
  });
});
