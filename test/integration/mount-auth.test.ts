// A lazy mount against registries that need credentials, end to end (real docker-registry, real FUSE,
// loop devices and erofs): token auth through the test token issuer with tokens that expire during the
// mount's life, a token revoked mid-mount (a 401 with the registry's challenge injected by the fault
// proxy), htpasswd Basic auth with the password rotated mid-mount, and wrong credentials refused at mount
// time. Credentials come from a DOCKER_CONFIG directory as for any user; every test checks that no
// password or token shows in the mount log, stats, state record, process arguments or CLI output.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test, type TestContext } from 'node:test';
import { StaticCredentials, type CredentialProvider } from '../../src/fetch/credentials.js';
import { openImageStore } from '../../src/fetch/index.js';
import type { MountStats } from '../../src/mount/stats.js';
import { buildImageFromDirs, pseudoRandomBytes } from '../../src/sample/build.js';
import { CLI_PATH, runCli, type CliResult } from '../helpers/cli.js';
import { startFaultProxy, type FaultProxy } from '../helpers/faultproxy.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/tmp.js';
import { assertNothingLeft, killMountProcess, recordedPids } from '../helpers/mountcli.js';
import { DEFAULT_TOKEN_LIFETIME_SECONDS, lifetimeEnforcedAt, startTokenAuthRegistry, startTokenIssuer, type TokenIssuer } from '../helpers/tokenissuer.js';

const USER = 'mount-user';
const PASSWORD = 'mnt-Pa55word-first';
const ROTATED = 'mnt-Pa55word-rotated';
const WRONG = 'mnt-wrong-Pa55word';
/** Chunk size of the converted image: small, so each file spans several chunks. */
const CHUNK_SIZE = 256 * 1024;
/**
 * File A (read first), a filler that keeps readahead away from B, and file B (read after the event). The
 * filler is well beyond the FUSE mount's 4 MiB kernel read-ahead (src/fuse DEFAULT_READ_AHEAD_KIB).
 */
const FILE_A = { name: 'a.bin', size: 1024 * 1024 };
const FILLER = { name: 'm-filler.bin', size: 16 * 1024 * 1024 };
const FILE_B = { name: 'z.bin', size: 1024 * 1024 };
/** Token lifetime (client-announced and registry-enforced) in the expiry test. */
const SHORT_TOKEN_LIFETIME_S = 3;
/** Extra wait past the token lifetime before the second read. */
const EXPIRY_SLACK_MS = 1_500;
const REPOSITORY = 'mauth/app';

const b64 = (s: string): string => Buffer.from(s).toString('base64');
const contentOf = (file: { name: string; size: number }): Buffer => pseudoRandomBytes(file.size, `mount-auth-${file.name}`);

/** Writes the layer tree of the test image into `dir`. */
async function writeImageTree(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const file of [FILE_A, FILLER, FILE_B]) await writeFile(join(dir, file.name), contentOf(file));
}

/** A DOCKER_CONFIG directory whose config.json has `auths` entries for `hosts` with the given password. */
async function writeDockerConfig(dir: string, hosts: readonly string[], password: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  const auths = Object.fromEntries(hosts.map((h) => [h, { auth: b64(`${USER}:${password}`) }]));
  await writeFile(join(dir, 'config.json'), JSON.stringify({ auths }), { mode: 0o600 });
  return dir;
}

/** Pushes the test tree as a tar+gzip image to `host` and converts it with the CLI (credentials from `configDir`). */
async function pushConvertedImage(host: string, credentials: CredentialProvider, configDir: string, work: string): Promise<string> {
  const tree = join(work, 'tree');
  await writeImageTree(tree);
  const store = openImageStore(`${host}/${REPOSITORY}:src`, { credentials });
  try {
    await buildImageFromDirs(store, [tree], { workDir: work });
  } finally {
    await store.close();
  }
  const converted = `${host}/${REPOSITORY}:erofs`;
  const res = await runCli(['convert', `${host}/${REPOSITORY}:src`, converted, '--chunk-size', String(CHUNK_SIZE), '--work-dir', work], { env: { DOCKER_CONFIG: configDir } });
  assert.equal(res.code, 0, `convert failed: ${res.stderr}`);
  return `${REPOSITORY}:erofs`;
}

interface Mounted {
  mountpoint: string;
  stateDir: string;
  /** Output of the mount command. */
  result: CliResult;
  stats(): Promise<MountStats>;
  statsText(): Promise<string>;
  /** The mount process's log. */
  log(): Promise<string>;
  /** Everything of the mount an operator or another user could see: log, state records, stats, arguments. */
  visibleText(): Promise<string>;
  umount(): Promise<void>;
}

/**
 * Runs `erofs-lazy mount` with DOCKER_CONFIG=`configDir` on a fresh mountpoint, state and cache dir.
 * Cleanup (even when the test fails): `umount --all`, then the recorded serving processes still alive are
 * killed by PID, then tempDir releases whatever is still mounted.
 */
async function mountWith(t: TestContext, ref: string, configDir: string, expectSuccess = true): Promise<Mounted> {
  let stateDir = '';
  const base = await tempDir(t, 'erofs-lazy-test-mauth-', async () => {
    const pids = await recordedPids(stateDir);
    await runCli(['umount', '--all', '--state-dir', stateDir]);
    for (const pid of pids) await killMountProcess(pid, stateDir);
  });
  stateDir = join(base, 'state');
  const mountpoint = join(base, 'mnt');
  const env = { DOCKER_CONFIG: configDir };
  const result = await runCli(['mount', ref, mountpoint, '--state-dir', stateDir, '--cache-dir', join(base, 'cache')], { env });
  if (expectSuccess) assert.equal(result.code, 0, `mount failed: ${result.stderr}`);
  const statsJson = async (): Promise<MountStats> => {
    const s = await runCli(['stats', mountpoint, '--state-dir', stateDir, '--json']);
    assert.equal(s.code, 0, s.stderr);
    return JSON.parse(s.stdout) as MountStats;
  };
  const statsText = async (): Promise<string> => {
    const s = await runCli(['stats', mountpoint, '--state-dir', stateDir]);
    assert.equal(s.code, 0, s.stderr);
    return s.stdout;
  };
  const log = async (): Promise<string> => {
    const dir = join(stateDir, 'logs');
    const names = await readdir(dir).catch(() => [] as string[]);
    const texts = await Promise.all(names.map((n) => readFile(join(dir, n), 'utf8')));
    return texts.join('\n');
  };
  return {
    mountpoint,
    stateDir,
    result,
    stats: statsJson,
    statsText,
    log,
    async visibleText() {
      const parts = [result.stdout, result.stderr, await log(), await statsText(), JSON.stringify(await statsJson())];
      for (const pid of await recordedPids(stateDir)) parts.push((await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' '));
      const root = join(stateDir, 'mounts');
      for (const id of await readdir(root).catch(() => [] as string[])) parts.push(await readFile(join(root, id, 'state.json'), 'utf8'));
      return parts.join('\n');
    },
    async umount() {
      const u = await runCli(['umount', mountpoint, '--state-dir', stateDir]);
      assert.equal(u.code, 0, `umount failed: ${u.stderr}`);
      await assertNothingLeft([base]);
    },
  };
}

/** Fails if any secret (or a token's signature, which alone would be enough to spot a leak) is in `text`. */
function assertNoSecrets(text: string, secrets: readonly string[]): void {
  for (const secret of secrets) {
    const pieces = secret.split('.').length === 3 ? [secret, secret.split('.')[2]!] : [secret];
    for (const piece of pieces) assert.ok(!text.includes(piece), `a secret (${piece.length} chars) leaked into mount output`);
  }
}

async function assertFileContent(mountpoint: string, file: { name: string; size: number }): Promise<void> {
  const data = await readFile(join(mountpoint, file.name));
  assert.equal(data.length, file.size, file.name);
  assert.ok(data.equals(contentOf(file)), `${file.name}: wrong bytes`);
}

/** A failed mount: non-zero exit, one line naming the auth failure, no secret, nothing left behind. */
async function assertAuthFailure(m: Mounted, host: string, secrets: readonly string[]): Promise<void> {
  assert.notEqual(m.result.code, 0, 'mount with wrong credentials must fail');
  assert.equal(m.result.stderr.trim().split('\n').length, 1, m.result.stderr);
  assert.match(m.result.stderr, new RegExp(`authentication failed for ${host.replaceAll('.', '\\.')}`));
  assert.match(m.result.stderr, /config\.json/, 'names where the credentials came from');
  assertNoSecrets(`${m.result.stdout}\n${m.result.stderr}\n${await m.log()}`, secrets);
  await assertNothingLeft([join(m.mountpoint, '..')]);
}

describe('lazy mount with token auth', () => {
  let issuer: TokenIssuer;
  let registry: TestRegistry;
  let proxy: FaultProxy;
  let configDir: string;
  let path: string;
  const cleanups: Array<() => unknown> = [];

  before(async () => {
    const work = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) }, 'erofs-lazy-test-mauth-work-');
    issuer = await startTokenIssuer({ users: { [USER]: PASSWORD }, dir: join(work, 'issuer') });
    registry = await startTokenAuthRegistry(issuer);
    proxy = await startFaultProxy({ upstream: registry.host });
    configDir = await writeDockerConfig(join(work, 'docker'), [registry.host, proxy.host], PASSWORD);
    path = await pushConvertedImage(registry.host, new StaticCredentials({ [registry.host]: { username: USER, password: PASSWORD } }), configDir, work);
  });
  after(async () => {
    await proxy?.close();
    await registry?.stop();
    await issuer?.close();
    for (const c of cleanups.reverse()) await c();
  });

  test('tokens expiring during the mount are renewed and later reads of new chunks are right', async (t) => {
    issuer.lifetime = lifetimeEnforcedAt(SHORT_TOKEN_LIFETIME_S);
    t.after(() => (issuer.lifetime = lifetimeEnforcedAt(DEFAULT_TOKEN_LIFETIME_SECONDS)));
    issuer.resetCounters();
    // Through the (fault-free) proxy, to see the Authorization of each request.
    const m = await mountWith(t, `${proxy.host}/${path}`, configDir);
    await assertFileContent(m.mountpoint, FILE_A);
    const afterA = await m.stats();
    assert.ok(afterA.total.bytesFetched > 0 && afterA.total.bytesFetched < afterA.total.blobSize / 2, JSON.stringify(afterA.total));
    const issuedBefore = issuer.issuedCount(`repository:${REPOSITORY}:pull`);
    assert.ok(issuedBefore >= 1, 'the mount got a pull token');

    // Past the lifetime every token issued so far is refused by the registry itself (and the client was
    // told it expires), so the next fetch needs a new one.
    await sleep(SHORT_TOKEN_LIFETIME_S * 1000 + EXPIRY_SLACK_MS);
    const logStart = proxy.log.length;
    await assertFileContent(m.mountpoint, FILE_B);
    const later = proxy.log.slice(logStart);
    assert.ok(later.some((r) => r.url.includes('/blobs/')), 'file B was fetched from the registry');
    assert.deepEqual(later.filter((r) => !r.authorization).map((r) => `${r.method} ${r.url}`), [], 'the token was renewed before the requests, none went without it');
    const afterB = await m.stats();
    assert.ok(afterB.total.chunksFetched > afterA.total.chunksFetched, 'file B came from chunks fetched after the expiry');
    assert.ok(afterB.total.bytesFetched > afterA.total.bytesFetched);
    assert.ok(issuer.issuedCount(`repository:${REPOSITORY}:pull`) > issuedBefore, 'the client got a new token during the mount');
    assert.ok((afterB.registry?.tokenRenewals ?? 0) >= 1, `stats count the renewal: ${JSON.stringify(afterB.registry)}`);
    assert.match(await m.log(), /expired; renewed it before sending/);
    assert.equal(afterB.total.readErrors, 0);
    assert.ok(issuer.requests.every((r) => r.subject === USER || !r.issued), 'every token was issued to the configured user');

    assertNoSecrets(await m.visibleText(), [PASSWORD, b64(`${USER}:${PASSWORD}`), ...issuer.issuedTokens]);
    await m.umount();
  });

  test('a token revoked during the mount (401 with a challenge) is replaced and the read goes on', async (t) => {
    issuer.resetCounters();
    proxy.resetCounters();
    const m = await mountWith(t, `${proxy.host}/${path}`, configDir);
    t.after(() => proxy.clearFaults());
    await assertFileContent(m.mountpoint, FILE_A);
    const initial = await m.stats();
    assert.equal(initial.registry?.authRefreshes, 0, JSON.stringify(initial.registry));
    const issuedBefore = issuer.issuedCount();

    const challenge = `Bearer realm="${issuer.realm}",service="${issuer.service}",scope="repository:${REPOSITORY}:pull",error="invalid_token"`;
    const blobs = /\/v2\/.+\/blobs\/sha256:/;
    proxy.setFaults([
      {
        kind: 'status',
        method: 'GET',
        path: blobs,
        count: 1,
        status: 401,
        headers: { 'www-authenticate': challenge, 'content-type': 'application/json' },
        body: JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }),
      },
    ]);
    const logStart = proxy.log.length;
    await assertFileContent(m.mountpoint, FILE_B);
    assert.equal(proxy.appliedCount(0), 1, 'the revocation was injected');

    const refused = proxy.log.findIndex((r, i) => i >= logStart && r.fault === 'status');
    assert.ok(refused >= 0);
    assert.ok(proxy.log[refused]!.authorization, 'the refused request carried the (revoked) token');
    const retried = proxy.log.slice(refused + 1).find((r) => r.url === proxy.log[refused]!.url && r.range === proxy.log[refused]!.range);
    assert.ok(retried?.authorization, 'the same request was sent again with a token');
    assert.ok(issuer.issuedCount() > issuedBefore, 'a new token was fetched');

    const final = await m.stats();
    assert.ok((final.registry?.authRefreshes ?? 0) >= 1, JSON.stringify(final.registry));
    assert.equal(final.total.readErrors, 0);
    assert.match(await m.statsText(), /auth refreshes [1-9]/);
    assert.match(await m.log(), new RegExp(`${proxy.host.replaceAll('.', '\\.')} refused our authorization \\(401\\); renewing it`));

    assertNoSecrets(await m.visibleText(), [PASSWORD, b64(`${USER}:${PASSWORD}`), ...issuer.issuedTokens]);
    await m.umount();
  });

  test('a wrong password fails the mount with one line naming the problem, not the password', async (t) => {
    const wrongConfig = await writeDockerConfig(join(await tempDir(t), 'docker'), [registry.host], WRONG);
    const m = await mountWith(t, `${registry.host}/${path}`, wrongConfig, false);
    await assertAuthFailure(m, registry.host, [WRONG, b64(`${USER}:${WRONG}`)]);
  });
});

describe('lazy mount with htpasswd Basic auth', () => {
  let registry: TestRegistry;
  let htpasswd: string;
  let work: string;
  let path: string;
  const cleanups: Array<() => unknown> = [];
  const htpasswdLine = (password: string): string => execFileSync('htpasswd', ['-Bbn', USER, password], { encoding: 'utf8' }).trim() + '\n';

  before(async () => {
    work = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) }, 'erofs-lazy-test-mauth-work-');
    htpasswd = join(work, 'htpasswd');
    await writeFile(htpasswd, htpasswdLine(PASSWORD));
    registry = await startRegistry({ htpasswd });
    const configDir = await writeDockerConfig(join(work, 'docker-setup'), [registry.host], PASSWORD);
    path = await pushConvertedImage(registry.host, new StaticCredentials({ [registry.host]: { username: USER, password: PASSWORD } }), configDir, work);
  });
  after(async () => {
    await registry?.stop();
    for (const c of cleanups.reverse()) await c();
  });

  test('credentials from DOCKER_CONFIG mount the image; a password rotated mid-mount is picked up', async (t) => {
    const configDir = await writeDockerConfig(join(await tempDir(t), 'docker'), [registry.host], PASSWORD);
    const m = await mountWith(t, `${registry.host}/${path}`, configDir);
    t.after(async () => {
      // Leave the registry with its first password for the other tests, whatever happened.
      await registry.stop({ keepData: true });
      await writeFile(htpasswd, htpasswdLine(PASSWORD));
      await registry.restart();
    });
    await assertFileContent(m.mountpoint, FILE_A);
    const initial = await m.stats();
    assert.equal(initial.registry?.authRefreshes, 0, JSON.stringify(initial.registry));

    // Rotate: the registry now wants the new password, and the user updates the docker config.
    await registry.stop({ keepData: true });
    await writeFile(htpasswd, htpasswdLine(ROTATED));
    await registry.restart();
    await writeDockerConfig(configDir, [registry.host], ROTATED);

    await assertFileContent(m.mountpoint, FILE_B);
    const final = await m.stats();
    assert.ok(final.total.chunksFetched > initial.total.chunksFetched);
    assert.ok((final.registry?.authRefreshes ?? 0) >= 1, JSON.stringify(final.registry));
    assert.equal(final.total.readErrors, 0);
    assert.match(await m.log(), /refused our authorization \(401\); renewing it with re-read credentials/);
    assertNoSecrets(await m.visibleText(), [PASSWORD, ROTATED, b64(`${USER}:${PASSWORD}`), b64(`${USER}:${ROTATED}`)]);
    await m.umount();
  });

  test('a wrong password fails the mount with one line naming the problem, not the password', async (t) => {
    const configDir = await writeDockerConfig(join(await tempDir(t), 'docker'), [registry.host], WRONG);
    const m = await mountWith(t, `${registry.host}/${path}`, configDir, false);
    await assertAuthFailure(m, registry.host, [WRONG, b64(`${USER}:${WRONG}`)]);
  });
});
