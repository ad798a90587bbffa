// Platforms: host mapping from node's arch names, parsing and normalizing "os/arch/variant", and choosing a
// manifest from an index with containerd's variant rules.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PlatformError } from '../../src/fetch/errors.js';
import { formatPlatform, hostPlatform, parsePlatform, platformMatchRank, selectManifest } from '../../src/fetch/platform.js';
import type { Descriptor, Platform } from '../../src/oci/types.js';

test('hostPlatform maps node arch names to OCI ones', () => {
  assert.deepEqual(hostPlatform('x64'), { os: 'linux', architecture: 'amd64' });
  assert.deepEqual(hostPlatform('arm64'), { os: 'linux', architecture: 'arm64', variant: 'v8' });
  assert.equal(hostPlatform('arm').architecture, 'arm');
  assert.match(hostPlatform('arm').variant ?? '', /^v[5-8]$/);
  assert.deepEqual(hostPlatform('ia32'), { os: 'linux', architecture: '386' });
  assert.deepEqual(hostPlatform('ppc64'), { os: 'linux', architecture: 'ppc64le' });
  assert.deepEqual(hostPlatform('s390x'), { os: 'linux', architecture: 's390x' });
  assert.deepEqual(hostPlatform('riscv64'), { os: 'linux', architecture: 'riscv64' });
  assert.equal(hostPlatform().os, 'linux');
});

test('parsePlatform reads os/arch[/variant] and normalizes aliases', () => {
  assert.deepEqual(parsePlatform('linux/arm64/v8'), { os: 'linux', architecture: 'arm64', variant: 'v8' });
  assert.deepEqual(parsePlatform('linux/amd64'), { os: 'linux', architecture: 'amd64' });
  assert.deepEqual(parsePlatform('linux/arm/7'), { os: 'linux', architecture: 'arm', variant: 'v7' });
  assert.deepEqual(parsePlatform('Linux/AArch64'), { os: 'linux', architecture: 'arm64' });
  assert.deepEqual(parsePlatform('linux/x86_64'), { os: 'linux', architecture: 'amd64' });
  assert.deepEqual(parsePlatform('linux/armhf'), { os: 'linux', architecture: 'arm', variant: 'v7' });
  assert.deepEqual(parsePlatform('arm64'), { os: 'linux', architecture: 'arm64' });
  assert.equal(parsePlatform('windows').os, 'windows');
  assert.equal(parsePlatform('windows').architecture, hostPlatform().architecture);
  for (const bad of ['', 'a/b/c/d', 'linux//amd64', 'linux/amd 64']) assert.throws(() => parsePlatform(bad), PlatformError, bad);
  assert.equal(formatPlatform(parsePlatform('linux/arm/v6')), 'linux/arm/v6');
  assert.equal(formatPlatform({ os: 'linux', architecture: 'amd64' }), 'linux/amd64');
});

test('platformMatchRank: exact first, implied variants next, older variants after, never newer', () => {
  const p = (s: string): Platform => parsePlatform(s);
  assert.equal(platformMatchRank(p('linux/arm64/v8'), p('linux/arm64/v8')), 0);
  assert.equal(platformMatchRank(p('linux/arm64/v8'), p('linux/arm64')), 0.5);
  assert.equal(platformMatchRank(p('linux/arm64'), p('linux/arm64/v8')), 0.5);
  assert.equal(platformMatchRank(p('linux/arm/v7'), p('linux/arm/v6')), 100);
  assert.equal(platformMatchRank(p('linux/arm/v7'), p('linux/arm/v5')), 200);
  assert.equal(platformMatchRank(p('linux/arm/v6'), p('linux/arm/v7')), undefined);
  assert.equal(platformMatchRank(p('linux/arm'), p('linux/arm/v7')), 0.5);
  assert.equal(platformMatchRank(p('linux/amd64'), p('linux/amd64/v2')), undefined);
  assert.equal(platformMatchRank(p('linux/amd64/v3'), p('linux/amd64/v2')), 100);
  assert.equal(platformMatchRank(p('linux/amd64'), p('linux/arm64')), undefined);
  assert.equal(platformMatchRank(p('linux/amd64'), p('windows/amd64')), undefined);
  assert.equal(platformMatchRank(p('linux/riscv64'), p('linux/riscv64/rva20')), undefined);
});

function entry(name: string, platform?: string): Descriptor {
  const d: Descriptor = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${name.padEnd(64, '0')}`, size: 1 };
  if (platform) {
    const [os, architecture, variant] = platform.split('/');
    d.platform = variant ? { os: os!, architecture: architecture!, variant } : { os: os!, architecture: architecture! };
  }
  return d;
}

test('selectManifest picks by os/arch with containerd variant rules', () => {
  const index = [entry('a1', 'linux/amd64'), entry('b2', 'linux/arm64'), entry('c3', 'linux/arm/v6'), entry('d4', 'linux/arm/v5'), entry('e5', 'unknown/unknown')];
  assert.equal(selectManifest(index, parsePlatform('linux/amd64')).digest, index[0]!.digest);
  assert.equal(selectManifest(index, parsePlatform('linux/arm64/v8')).digest, index[1]!.digest);
  assert.equal(selectManifest(index, hostPlatform('arm64')).digest, index[1]!.digest);
  assert.equal(selectManifest(index, parsePlatform('linux/arm/v7')).digest, index[2]!.digest, 'v7 host runs the newest older variant');

  const both = [entry('f6', 'linux/arm64'), entry('a7', 'linux/arm64/v8')];
  assert.equal(selectManifest(both, parsePlatform('linux/arm64/v8')).digest, both[1]!.digest, 'exact variant preferred');
  assert.equal(selectManifest(both, parsePlatform('linux/arm64')).digest, both[0]!.digest);

  const amd = [entry('b8', 'linux/amd64/v2'), entry('c9', 'linux/amd64')];
  assert.equal(selectManifest(amd, parsePlatform('linux/amd64/v3')).digest, amd[0]!.digest);
  assert.equal(selectManifest(amd, parsePlatform('linux/amd64')).digest, amd[1]!.digest);

  assert.equal(selectManifest([entry('d0')], parsePlatform('linux/s390x')).digest, entry('d0').digest, 'a lone entry without platform is taken');
});

test('selectManifest lists the available platforms when none fits', () => {
  const index = [entry('a1', 'linux/amd64'), entry('c3', 'linux/arm/v7'), entry('e5')];
  assert.throws(
    () => selectManifest(index, parsePlatform('linux/arm/v6'), 'index sha256:x'),
    (err: unknown) =>
      err instanceof PlatformError &&
      err.message.includes('linux/arm/v6') &&
      err.message.includes('index sha256:x') &&
      err.message.includes('available: linux/amd64, linux/arm/v7, sha256:e5'),
  );
  assert.throws(() => selectManifest([], parsePlatform('linux/amd64')), /available: none/);
});
