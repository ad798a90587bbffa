// Credentialed bearer-token auth against the real distribution registry (auth.token config through
// scripts/registry --token-realm/--token-cert) and a small RS256 JWT token issuer written here: it answers
// GET with Basic credentials and the OAuth2 refresh_token POST, and can hand out tokens that expire long
// before the expires_in it announces, so the client meets a server-side expiry in the middle of its use.
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createPrivateKey, randomUUID, sign, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { RegistryAuthError } from '../../src/fetch/auth.js';
import { StaticCredentials } from '../../src/fetch/credentials.js';
import { openImageStore } from '../../src/fetch/open.js';
import type { RegistryStore } from '../../src/fetch/registry.js';
import { MEDIA_TYPE, type Descriptor } from '../../src/oci/types.js';
import { sha256Digest } from '../../src/util/digest.js';
import { REPO_ROOT } from '../helpers/registry.js';

const run = promisify(execFile);
const SERVICE = 'erofs-lazy-test-registry';
const ISSUER = 'erofs-lazy-test-issuer';
const USER = 'tokuser';
const PASSWORD = 'tok-Pa55word';
const IDENTITY_TOKEN = 'refresh-identity-7f3';
const WRONG = 'tok-wrong-Pa55';
/** Clock-skew leeway distribution 2.8 grants on a token's exp. */
const REGISTRY_EXP_LEEWAY_S = 60;

const b64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url');

interface Issuer {
  server: Server;
  realm: string;
  /** JWT lifetime in seconds (the registry enforces it, with REGISTRY_EXP_LEEWAY_S of tolerance). */
  jwtLifetime: number;
  /** expires_in announced to the client. */
  announced: number;
  requests: Array<{ method: string; grant?: string }>;
}

async function startIssuer(keyPem: string, certPem: string): Promise<Issuer> {
  const key = createPrivateKey(keyPem);
  const x5c = [new X509Certificate(certPem).raw.toString('base64')];
  const issuer: Issuer = { server: createServer(), realm: '', jwtLifetime: 300, announced: 300, requests: [] };
  const tokenFor = (scopes: string[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const access = scopes.flatMap((scope) => {
      const [type, name, actions] = scope.split(':');
      return type && name && actions ? [{ type, name, actions: actions.split(',') }] : [];
    });
    const header = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', x5c }));
    const claims = b64url(JSON.stringify({ iss: ISSUER, sub: USER, aud: SERVICE, exp: now + issuer.jwtLifetime, nbf: Math.min(now, now + issuer.jwtLifetime) - 10, iat: now, jti: randomUUID(), access }));
    return `${header}.${claims}.${b64url(sign('sha256', Buffer.from(`${header}.${claims}`), key))}`;
  };
  issuer.server.on('request', (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://x');
      let ok = false;
      let scopes: string[] = [];
      if (req.method === 'POST') {
        const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
        issuer.requests.push({ method: 'POST', grant: form.get('grant_type') ?? '' });
        ok = form.get('grant_type') === 'refresh_token' && form.get('refresh_token') === IDENTITY_TOKEN && form.get('service') === SERVICE;
        scopes = (form.get('scope') ?? '').split(' ').filter((s) => s !== '');
      } else {
        issuer.requests.push({ method: 'GET' });
        ok = req.headers.authorization === `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}` && url.searchParams.get('service') === SERVICE;
        scopes = url.searchParams.getAll('scope');
      }
      const body = ok ? { token: tokenFor(scopes), expires_in: issuer.announced } : { errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] };
      res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    });
  });
  await new Promise<void>((resolve) => issuer.server.listen(0, '127.0.0.1', resolve));
  issuer.realm = `http://127.0.0.1:${(issuer.server.address() as AddressInfo).port}/token`;
  return issuer;
}

describe('registry with token auth', () => {
  let dir: string;
  let issuer: Issuer;
  let host: string;
  let ref: string;
  const layerData = Buffer.from(Array.from({ length: 50_000 }, (_, i) => (i * 13) & 0xff));
  const layer: Descriptor = { mediaType: MEDIA_TYPE.erofsZstd, digest: sha256Digest(layerData), size: layerData.length };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'erofs-lazy-test-token-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'token.key'), '-out', join(dir, 'token.crt'), '-days', '2', '-subj', '/CN=erofs-lazy-test-issuer'], { stdio: 'ignore' });
    issuer = await startIssuer(await readFile(join(dir, 'token.key'), 'utf8'), await readFile(join(dir, 'token.crt'), 'utf8'));
    const { stdout } = await run(join(REPO_ROOT, 'scripts/registry'), [
      'start', '--dir', join(dir, 'registry'), '--port', '0', '--token-realm', issuer.realm, '--token-cert', join(dir, 'token.crt'), '--token-service', SERVICE, '--token-issuer', ISSUER,
    ]);
    host = stdout.trim();
    ref = `${host}/tok/app:v1`;
    const configData = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] } }));
    const config: Descriptor = { mediaType: MEDIA_TYPE.ociConfig, digest: sha256Digest(configData), size: configData.length };
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config, layers: [layer] }));
    const pusher = openImageStore(ref, { credentials: new StaticCredentials({ [host]: { username: USER, password: PASSWORD } }) });
    try {
      await pusher.pushBlob(layer, { bytes: layerData });
      await pusher.pushBlob(config, { bytes: configData });
      await pusher.pushManifest(MEDIA_TYPE.ociManifest, manifest);
    } finally {
      await pusher.close();
    }
  });
  after(async () => {
    if (dir) await run(join(REPO_ROOT, 'scripts/registry'), ['stop', '--dir', join(dir, 'registry')]).catch(() => undefined);
    issuer?.server.closeAllConnections();
    await new Promise<void>((resolve) => (issuer ? issuer.server.close(() => resolve()) : resolve()));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('username/password: token by GET with Basic auth; resolve and fetchRange; token cached', async () => {
    issuer.requests.length = 0;
    const store = openImageStore(ref, { credentials: new StaticCredentials({ [host]: { username: USER, password: PASSWORD } }) });
    try {
      assert.equal((await store.resolve()).manifest.layers[0]!.digest, layer.digest);
      assert.deepEqual(await store.fetchRange(layer, 10, 4000), layerData.subarray(10, 4000));
      assert.deepEqual(issuer.requests, [{ method: 'GET' }]);
    } finally {
      await store.close();
    }
  });

  test('identity token: token by OAuth2 refresh_token POST', async () => {
    issuer.requests.length = 0;
    const store = openImageStore(ref, { credentials: new StaticCredentials({ [host]: { identityToken: IDENTITY_TOKEN } }) });
    try {
      assert.deepEqual(await store.fetchRange(layer, 0, 100), layerData.subarray(0, 100));
      assert.deepEqual(issuer.requests, [{ method: 'POST', grant: 'refresh_token' }]);
    } finally {
      await store.close();
    }
  });

  test('anonymous and wrong-password access fail clearly without the secret', async () => {
    const anonymous = openImageStore(ref, { credentials: 'none' });
    try {
      await assert.rejects(anonymous.resolve(), /token issuer refused an anonymous token/);
    } finally {
      await anonymous.close();
    }
    const wrong = openImageStore(ref, { credentials: new StaticCredentials({ [host]: { username: USER, password: WRONG } }, 'test credentials') });
    try {
      await assert.rejects(wrong.resolve(), (err: unknown) => {
        assert.ok(err instanceof RegistryAuthError, String(err));
        assert.match(err.message, new RegExp(`authentication failed for ${host} \\(credentials from test credentials\\)`));
        assert.ok(!`${err.message} ${JSON.stringify(err)}`.includes(WRONG));
        return true;
      });
    } finally {
      await wrong.close();
    }
  });

  test('a token that expires server-side during use is replaced once and reads go on', async () => {
    // distribution accepts tokens up to REGISTRY_EXP_LEEWAY_S past their exp: issue one that is inside
    // that leeway for only ~2 more seconds.
    issuer.jwtLifetime = 2 - REGISTRY_EXP_LEEWAY_S;
    issuer.announced = 300; // the client believes the token is good for 5 minutes
    issuer.requests.length = 0;
    const store = openImageStore(ref, { credentials: new StaticCredentials({ [host]: { username: USER, password: PASSWORD } }) });
    try {
      assert.deepEqual(await store.fetchRange(layer, 0, 100), layerData.subarray(0, 100));
      assert.equal(issuer.requests.length, 1);
      await new Promise((resolve) => setTimeout(resolve, 3_500));
      assert.deepEqual(await store.fetchRange(layer, 100, 200), layerData.subarray(100, 200));
      assert.equal(issuer.requests.length, 2, 'one new token after the registry refused the expired one');
      assert.equal((store as RegistryStore).stats.authRefreshes, 1, 'the renewal is counted for stats');
    } finally {
      issuer.jwtLifetime = 300;
      await store.close();
    }
  });
});
