// Prefetch from recorded profiles, end to end: `mount --record` writes the chunks a workload read, `profile
// push` stores the profile with the image as a referrer artifact (referrers tag schema on distribution 2.8),
// and a later cold mount (`--prefetch auto`, or a profile file) fetches exactly those chunks ahead of the
// workload, so the workload itself then makes no registry request. A bad profile never fails a mount.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openImageStore } from '../../src/fetch/index.js';
import type { MountStats } from '../../src/mount/stats.js';
import { parseProfile } from '../../src/prefetch/profile.js';
import { buildImageFromDirs, pseudoRandomBytes } from '../../src/sample/build.js';
import { runCli } from '../helpers/cli.js';
import { mountImage, type MountHandle } from '../helpers/mountcli.js';
import { startFaultProxy } from '../helpers/faultproxy.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/tmp.js';

const FILES = 24;
const FILE_BYTES = 1024 * 1024 + 333;
const CHUNK_BYTES = 256 * 1024;
/** The workload: a few files spread over the image. */
const WORKLOAD = ['f3', 'f11', 'f19'];
const PREFETCH_WAIT_MS = 20_000;
/**
 * Requests the replayed workload may still make: the kernel's read-ahead windows depend on timing, so a replay
 * touches a few chunks next to the recorded ones. Without prefetch the workload makes about 18 requests.
 */
const REPLAY_SLACK_REQUESTS = 4;

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

async function waitForPrefetch(m: MountHandle, which: 'prefetch' | 'pathPrefetch' = 'prefetch'): Promise<MountStats> {
  const until = Date.now() + PREFETCH_WAIT_MS;
  for (;;) {
    const s = await m.stats();
    const status = s[which];
    if (status && status.state !== 'running') return s;
    if (Date.now() > until) assert.fail(`prefetch did not finish within ${PREFETCH_WAIT_MS} ms: ${JSON.stringify(status)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('prefetch profiles', () => {
  let registry: TestRegistry;
  let ref: string;
  let work: string;
  const hashes = new Map<string, string>();
  const cleanups: Array<() => unknown> = [];

  before(async () => {
    registry = await startRegistry();
    work = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) });
    const src = join(work, 'src');
    await mkdir(src, { recursive: true });
    for (let i = 0; i < FILES; i++) {
      const data = pseudoRandomBytes(FILE_BYTES, `prefetch-${i}`);
      await writeFile(join(src, `f${i}`), data);
      hashes.set(`f${i}`, sha256(data));
    }
    const store = openImageStore(`${registry.host}/prefetch/app:src`, {});
    await buildImageFromDirs(store, [src], { workDir: work });
    await store.close();
    ref = `${registry.host}/prefetch/app:erofs`;
    const c = await runCli(['convert', `${registry.host}/prefetch/app:src`, ref, '--chunk-size', String(CHUNK_BYTES)]);
    assert.equal(c.code, 0, c.stderr);
  });
  after(async () => {
    await registry?.stop();
    for (const c of cleanups.reverse()) await c();
  });

  async function runWorkload(m: MountHandle): Promise<void> {
    for (const name of WORKLOAD) assert.equal(sha256(await readFile(join(m.mountpoint, name))), hashes.get(name), name);
  }

  test('record, push, and a cold mount that prefetches exactly the recorded chunks', async (t) => {
    const dir = await tempDir(t);
    const profilePath = join(dir, 'profile.json');

    // Record: the workload on a cold mount, profile written at unmount.
    const recording = await mountImage(t, ref, ['--record', profilePath, '--prefetch', 'none']);
    await runWorkload(recording);
    const recordedStats = await recording.stats();
    await recording.umount();
    const profile = parseProfile(await readFile(profilePath), profilePath);
    assert.equal(profile.image, recordedStats.manifestDigest);
    assert.deepEqual(profile.layers, recordedStats.layers.map((l) => l.layerDigest));
    assert.ok(profile.chunks.length >= WORKLOAD.length * Math.floor(FILE_BYTES / CHUNK_BYTES), `${profile.chunks.length} chunks recorded`);
    assert.ok(profile.chunks.length < (FILES * FILE_BYTES) / CHUNK_BYTES / 2, 'far from every chunk');

    // No profile stored yet.
    const none = await runCli(['profile', 'show', ref]);
    assert.notEqual(none.code, 0);
    assert.match(none.stderr, /no prefetch profile is stored/);

    const push = await runCli(['profile', 'push', ref, profilePath]);
    assert.equal(push.code, 0, push.stderr);
    const shown = await runCli(['profile', 'show', ref]);
    assert.equal(shown.code, 0, shown.stderr);
    assert.deepEqual(JSON.parse(shown.stdout), profile);
    // The image's own tag still names the image.
    const inspect = await runCli(['inspect', ref, '--json']);
    assert.equal(JSON.parse(inspect.stdout).manifestDigest, profile.image);

    // Cold mount with auto prefetch: the recorded chunks arrive before the workload asks for them.
    const cold = await mountImage(t, ref);
    const prefetched = await waitForPrefetch(cold);
    assert.equal(prefetched.prefetch?.state, 'done', JSON.stringify(prefetched.prefetch));
    assert.equal(prefetched.prefetch?.chunks, new Set(profile.chunks.map(([, c]) => c)).size);
    assert.ok(prefetched.total.requests > 0);
    assert.ok(prefetched.total.bytesFetched < prefetched.total.blobSize / 2, 'only the profile was prefetched');
    await runWorkload(cold);
    const after = await cold.stats();
    assert.ok(after.total.requests - prefetched.total.requests <= REPLAY_SLACK_REQUESTS, `the workload made ${after.total.requests - prefetched.total.requests} registry requests of its own`);
    await cold.umount();
  });

  test('with --multi-range, prefetch asks for the profile\'s scattered runs in one request; a registry refusing that gets single ranges', async (t) => {
    const dir = await tempDir(t);
    const profilePath = join(dir, 'profile.json');
    const recording = await mountImage(t, ref, ['--record', profilePath, '--prefetch', 'none']);
    await runWorkload(recording);
    await recording.umount();
    const proxy = await startFaultProxy({ upstream: registry.host });
    t.after(() => proxy.close());
    const proxied = ref.replace(registry.host, proxy.host);
    const blobs = /\/v2\/.+\/blobs\//;
    for (const refuse of [false, true]) {
      proxy.setFaults(refuse ? [{ kind: 'refuse-multirange', path: blobs }] : []);
      proxy.resetCounters();
      const m = await mountImage(t, proxied, ['--prefetch', profilePath, '--multi-range', '--max-gap-bytes', '0']);
      const s = await waitForPrefetch(m);
      assert.equal(s.prefetch?.state, 'done', JSON.stringify(s.prefetch));
      const ranges = proxy.log.filter((r) => blobs.test(r.url) && r.range !== undefined).map((r) => r.range!);
      const multi = ranges.filter((r) => r.includes(','));
      if (refuse) {
        // The two prefetch workers may each send one before the first refusal is known; none after.
        const refused = proxy.log.filter((r) => r.fault === 'refuse-multirange').length;
        assert.ok(refused >= 1 && refused <= 2, `refused ${refused} times`);
        assert.equal(s.registry?.multiRangeRefused, refused, JSON.stringify(s.registry));
      } else {
        assert.ok(multi.length >= 1, `a multi-range request was sent: ${JSON.stringify(ranges)}`);
        assert.equal(s.registry?.multiRangeRefused, 0);
      }
      const before = s.total.requests;
      await runWorkload(m);
      const workloadRanges = proxy.log.filter((r) => blobs.test(r.url) && r.range !== undefined).map((r) => r.range!).slice(ranges.length);
      const own = (await m.stats()).total.requests - before;
      assert.ok(own <= REPLAY_SLACK_REQUESTS, `the workload made ${own} requests (refuse ${refuse}; prefetch ranges ${JSON.stringify(ranges)}, then ${JSON.stringify(workloadRanges)})`);
      await m.umount();
    }
  });

  test('--prefetch-path fetches what reading those paths needs, resolved in the image; unknown paths are skipped', async (t) => {
    const m = await mountImage(t, ref, ['--prefetch', 'none', ...WORKLOAD.flatMap((name) => ['--prefetch-path', `/${name}`]), '--prefetch-path', '/no/such/file']);
    const s = await waitForPrefetch(m, 'pathPrefetch');
    assert.equal(s.pathPrefetch?.state, 'done', JSON.stringify(s.pathPrefetch));
    const perFile = Math.ceil(FILE_BYTES / CHUNK_BYTES);
    assert.ok((s.pathPrefetch?.chunks ?? 0) >= WORKLOAD.length * (perFile - 1), JSON.stringify(s.pathPrefetch));
    assert.ok((s.pathPrefetch?.chunks ?? 0) <= WORKLOAD.length * (perFile + 2), 'only those files');
    const before = s.total.requests;
    await runWorkload(m);
    // The files' own chunks were prefetched; what the workload still fetches is the kernel's read-ahead past them.
    const own = (await m.stats()).total.requests - before;
    const cold = await mountImage(t, ref, ['--prefetch', 'none']);
    const coldBefore = (await cold.stats()).total.requests;
    await runWorkload(cold);
    const coldOwn = (await cold.stats()).total.requests - coldBefore;
    await cold.umount();
    assert.ok(own < coldOwn, `the workload made ${own} requests after path prefetch, ${coldOwn} on a cold mount`);
    assert.match(await readFile(join(m.stateDir, 'logs', (await readdir(join(m.stateDir, 'logs')))[0]!), 'utf8'), /not in the image: \/no\/such\/file/);
    await m.umount();
  });

  test('a profile file works the same, and a broken one fails only the prefetch', async (t) => {
    const dir = await tempDir(t);
    const profilePath = join(dir, 'profile.json');
    const recording = await mountImage(t, ref, ['--record', profilePath, '--prefetch', 'none']);
    await runWorkload(recording);
    await recording.umount();

    const fromFile = await mountImage(t, ref, ['--prefetch', profilePath]);
    const s = await waitForPrefetch(fromFile);
    assert.equal(s.prefetch?.state, 'done');
    assert.equal(s.prefetch?.source, profilePath);
    const before = s.total.requests;
    await runWorkload(fromFile);
    const own = (await fromFile.stats()).total.requests - before;
    assert.ok(own <= REPLAY_SLACK_REQUESTS, `the workload made ${own} requests of its own`);
    await fromFile.umount();

    const broken = join(dir, 'broken.json');
    await writeFile(broken, '{"mediaType":"something else"}');
    const m = await mountImage(t, ref, ['--prefetch', broken]);
    const failed = await waitForPrefetch(m);
    assert.equal(failed.prefetch?.state, 'failed');
    assert.match(failed.prefetch?.error ?? '', /mediaType/);
    await runWorkload(m);
    await m.umount();

    const off = await mountImage(t, ref, ['--prefetch', 'none']);
    await new Promise((r) => setTimeout(r, 500));
    const idle = await off.stats();
    assert.equal(idle.prefetch, undefined);
    assert.ok(idle.total.requests <= 1, `only what mounting erofs reads (the superblock chunk), got ${idle.total.requests} requests`);
    await off.umount();
  });
});
