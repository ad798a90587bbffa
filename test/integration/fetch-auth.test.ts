// Credentials against the real distribution registry with htpasswd (bcrypt) Basic auth: anonymous access
// refused with a clear error, credentials from a docker config file (resolve + fetchRange), a wrong
// password refused without the password in the error, a rotated password picked up by the same store
// after a 401, and `erofs-lazy login` / `logout` writing and removing the config entry.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { RegistryAuthError } from '../../src/fetch/auth.js';
import { DockerCredentialStore, StaticCredentials } from '../../src/fetch/credentials.js';
import { RegistryError } from '../../src/fetch/errors.js';
import { openImageStore } from '../../src/fetch/open.js';
import { MEDIA_TYPE, type Descriptor } from '../../src/oci/types.js';
import { sha256Digest } from '../../src/util/digest.js';
import { CLI_PATH } from '../helpers/cli.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';

const USER = 'alice';
const PASSWORD = 'first-Pa55word';
const ROTATED = 'second-Pa55word';
const WRONG = 'wrong-Pa55word-zz';
const b64 = (s: string): string => Buffer.from(s).toString('base64');

function htpasswdLine(user: string, password: string): string {
  return execFileSync('htpasswd', ['-Bbn', user, password], { encoding: 'utf8' }).trim() + '\n';
}

/** Runs the CLI with `input` on stdin. */
function runCliWithInput(args: string[], input: string, env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI_PATH, ...args], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
    child.stdin.end(input);
  });
}

describe('registry with htpasswd auth', () => {
  let registry: TestRegistry;
  let dir: string;
  let htpasswd: string;
  const layerData = Buffer.from(Array.from({ length: 70_000 }, (_, i) => (i * 31) & 0xff));
  const layer: Descriptor = { mediaType: MEDIA_TYPE.erofsZstd, digest: sha256Digest(layerData), size: layerData.length };
  let ref: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'erofs-lazy-test-auth-'));
    htpasswd = join(dir, 'htpasswd');
    await writeFile(htpasswd, htpasswdLine(USER, PASSWORD));
    registry = await startRegistry({ htpasswd });
    ref = `${registry.host}/secure/app:v1`;
    const configData = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] } }));
    const config: Descriptor = { mediaType: MEDIA_TYPE.ociConfig, digest: sha256Digest(configData), size: configData.length };
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config, layers: [layer] }));
    const pusher = openImageStore(ref, { credentials: new StaticCredentials({ [registry.host]: { username: USER, password: PASSWORD } }) });
    try {
      await pusher.pushBlob(layer, { bytes: layerData });
      await pusher.pushBlob(config, { bytes: configData });
      await pusher.pushManifest(MEDIA_TYPE.ociManifest, manifest);
    } finally {
      await pusher.close();
    }
  });
  after(async () => {
    await registry?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  async function writeConfig(name: string, password: string): Promise<string> {
    const path = join(dir, name, 'config.json');
    await mkdir(join(dir, name), { recursive: true });
    await writeFile(path, JSON.stringify({ auths: { [`http://${registry.host}`]: { auth: b64(`${USER}:${password}`) } }, other: 'kept' }));
    return path;
  }

  test('anonymous access is refused with a clear "needs credentials" error', async () => {
    const store = openImageStore(ref, { credentials: 'none' });
    try {
      await assert.rejects(store.resolve(), (err: unknown) => {
        assert.ok(err instanceof RegistryError);
        assert.equal(err.status, 401);
        assert.match(err.message, new RegExp(`registry ${registry.host} needs credentials`));
        return true;
      });
    } finally {
      await store.close();
    }
  });

  test('credentials from a docker config file: resolve and fetchRange work', async () => {
    const path = await writeConfig('good', PASSWORD);
    const store = openImageStore(ref, { credentials: new DockerCredentialStore({ configPath: path }) });
    try {
      const resolved = await store.resolve();
      assert.equal(resolved.manifest.layers[0]!.digest, layer.digest);
      assert.deepEqual(await store.fetchRange(layer, 1000, 5000), layerData.subarray(1000, 5000));
    } finally {
      await store.close();
    }
    // The same through DOCKER_CONFIG, as the CLI would pick it up.
    const previous = process.env['DOCKER_CONFIG'];
    process.env['DOCKER_CONFIG'] = join(dir, 'good');
    try {
      const viaEnv = openImageStore(ref);
      try {
        assert.deepEqual(await viaEnv.fetchRange(layer, 0, 10), layerData.subarray(0, 10));
      } finally {
        await viaEnv.close();
      }
    } finally {
      if (previous === undefined) delete process.env['DOCKER_CONFIG'];
      else process.env['DOCKER_CONFIG'] = previous;
    }
  });

  test('a wrong password gives "authentication failed" naming the config file, never the password', async () => {
    const path = await writeConfig('wrong', WRONG);
    const store = openImageStore(ref, { credentials: new DockerCredentialStore({ configPath: path }) });
    try {
      await assert.rejects(store.resolve(), (err: unknown) => {
        assert.ok(err instanceof RegistryAuthError, String(err));
        assert.equal(err.status, 401);
        assert.ok(err.message.includes(`authentication failed for ${registry.host} (credentials from ${path})`), err.message);
        const everything = `${err.message} ${err.stack ?? ''} ${JSON.stringify(err)}`;
        assert.ok(!everything.includes(WRONG) && !everything.includes(b64(`${USER}:${WRONG}`)));
        return true;
      });
    } finally {
      await store.close();
    }
  });

  test('a rotated password in the config is picked up after a 401 by the same store', async () => {
    const path = await writeConfig('rotate', PASSWORD);
    const store = openImageStore(ref, { credentials: new DockerCredentialStore({ configPath: path }) });
    try {
      assert.equal((await store.fetchRange(layer, 0, 100)).length, 100);
      await registry.stop({ keepData: true });
      await writeFile(htpasswd, htpasswdLine(USER, ROTATED));
      await registry.restart();
      await writeFile(path, JSON.stringify({ auths: { [registry.host]: { auth: b64(`${USER}:${ROTATED}`) } } }));
      assert.deepEqual(await store.fetchRange(layer, 100, 200), layerData.subarray(100, 200));
    } finally {
      await store.close();
      await registry.stop({ keepData: true });
      await writeFile(htpasswd, htpasswdLine(USER, PASSWORD));
      await registry.restart();
    }
  });

  test('login checks the password and writes the entry (0600, other keys kept); logout removes it', async () => {
    const configDir = join(dir, 'cli');
    const path = await writeConfig('cli', 'placeholder');
    await writeFile(path, JSON.stringify({ credsStore: '', proxies: { default: {} } }));
    const env = { DOCKER_CONFIG: configDir };

    const bad = await runCliWithInput(['login', '--username', USER, '--password-stdin', registry.host], `${WRONG}\n`, env);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, new RegExp(`authentication failed for ${registry.host}`));
    assert.ok(!bad.stderr.includes(WRONG) && !bad.stdout.includes(WRONG));
    assert.deepEqual(JSON.parse(await readFile(path, 'utf8')), { credsStore: '', proxies: { default: {} } }, 'nothing stored on failure');

    const good = await runCliWithInput(['login', '-u', USER, '--password-stdin', registry.host], `${PASSWORD}\n`, env);
    assert.equal(good.code, 0, good.stderr);
    assert.match(good.stdout, /Login Succeeded/);
    assert.ok(!good.stdout.includes(PASSWORD) && !good.stderr.includes(PASSWORD));
    const doc = JSON.parse(await readFile(path, 'utf8')) as { auths: Record<string, { auth: string }>; proxies: unknown };
    assert.deepEqual(doc.auths, { [registry.host]: { auth: b64(`${USER}:${PASSWORD}`) } });
    assert.deepEqual(doc.proxies, { default: {} });
    assert.equal((await stat(path)).mode & 0o777, 0o600);

    // The stored entry is used by the CLI's image commands.
    const inspect = await runCliWithInput(['inspect', '--json', ref], '', env);
    assert.equal(inspect.code, 0, inspect.stderr);

    const flag = await runCliWithInput(['login', '-u', USER, '--password', PASSWORD, registry.host], '', env);
    assert.equal(flag.code, 0, flag.stderr);
    assert.match(flag.stderr, /WARNING! Using --password via the CLI is insecure/);

    const out = await runCliWithInput(['logout', registry.host], '', env);
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stdout, new RegExp(`Removing login credentials for ${registry.host}`));
    assert.deepEqual(JSON.parse(await readFile(path, 'utf8')), { auths: {}, credsStore: '', proxies: { default: {} } });
    const again = await runCliWithInput(['logout', registry.host], '', env);
    assert.equal(again.code, 0);
    assert.match(again.stdout, /Not logged in/);
  });
});
