// Credentialed bearer-token auth against the real distribution registry (auth.token config through
// scripts/registry --token-realm/--token-cert) and the test token issuer (test/helpers/tokenissuer.ts): it
// answers GET with Basic credentials and the OAuth2 refresh_token POST, and can hand out tokens that expire
// long before the expires_in it announces, so the client meets a server-side expiry in the middle of its use.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { RegistryAuthError } from '../../src/fetch/auth.js';
import { StaticCredentials } from '../../src/fetch/credentials.js';
import { openImageStore } from '../../src/fetch/open.js';
import type { RegistryStore } from '../../src/fetch/registry.js';
import { MEDIA_TYPE, type Descriptor } from '../../src/oci/types.js';
import { sha256Digest } from '../../src/util/digest.js';
import { startFaultProxy } from '../helpers/faultproxy.js';
import type { TestRegistry } from '../helpers/registry.js';
import { DEFAULT_TOKEN_LIFETIME_SECONDS, lifetimeEnforcedAt, REGISTRY_EXP_LEEWAY_SECONDS, startTokenAuthRegistry, startTokenIssuer, type TokenIssuer } from '../helpers/tokenissuer.js';

const USER = 'tokuser';
const PASSWORD = 'tok-Pa55word';
const IDENTITY_TOKEN = 'refresh-identity-7f3';
const WRONG = 'tok-wrong-Pa55';
/** Lifetime of the short-lived tokens (announced and enforced by the registry). */
const SHORT_LIFETIME_S = 2;
/** Concurrent reads after the expiry. */
const CONCURRENT_READS = 8;

/** The issuer's request log reduced to method and grant. */
function requestKinds(issuer: TokenIssuer): Array<{ method: string; grant?: string }> {
  return issuer.requests.map((r) => (r.grant === undefined ? { method: r.method } : { method: r.method, grant: r.grant }));
}

describe('registry with token auth', () => {
  let issuer: TokenIssuer;
  let registry: TestRegistry;
  let host: string;
  let ref: string;
  const layerData = Buffer.from(Array.from({ length: 50_000 }, (_, i) => (i * 13) & 0xff));
  const layer: Descriptor = { mediaType: MEDIA_TYPE.erofsZstd, digest: sha256Digest(layerData), size: layerData.length };

  before(async () => {
    issuer = await startTokenIssuer({ users: { [USER]: PASSWORD }, identityTokens: { [IDENTITY_TOKEN]: USER } });
    registry = await startTokenAuthRegistry(issuer);
    host = registry.host;
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
    await registry?.stop();
    await issuer?.close();
  });

  test('username/password: token by GET with Basic auth; resolve and fetchRange; token cached', async () => {
    issuer.resetCounters();
    const store = openImageStore(ref, { credentials: new StaticCredentials({ [host]: { username: USER, password: PASSWORD } }) });
    try {
      assert.equal((await store.resolve()).manifest.layers[0]!.digest, layer.digest);
      assert.deepEqual(await store.fetchRange(layer, 10, 4000), layerData.subarray(10, 4000));
      assert.deepEqual(requestKinds(issuer), [{ method: 'GET' }]);
    } finally {
      await store.close();
    }
  });

  test('identity token: token by OAuth2 refresh_token POST', async () => {
    issuer.resetCounters();
    const store = openImageStore(ref, { credentials: new StaticCredentials({ [host]: { identityToken: IDENTITY_TOKEN } }) });
    try {
      assert.deepEqual(await store.fetchRange(layer, 0, 100), layerData.subarray(0, 100));
      assert.deepEqual(requestKinds(issuer), [{ method: 'POST', grant: 'refresh_token' }]);
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
    // distribution accepts tokens up to REGISTRY_EXP_LEEWAY_SECONDS past their exp: issue one that is inside
    // that leeway for only ~2 more seconds.
    issuer.lifetime = { jwtExpirySeconds: 2 - REGISTRY_EXP_LEEWAY_SECONDS, expiresInSeconds: 300 }; // the client believes 5 minutes
    issuer.resetCounters();
    const store = openImageStore(ref, { credentials: new StaticCredentials({ [host]: { username: USER, password: PASSWORD } }) });
    try {
      assert.deepEqual(await store.fetchRange(layer, 0, 100), layerData.subarray(0, 100));
      assert.equal(issuer.requests.length, 1);
      await new Promise((resolve) => setTimeout(resolve, 3_500));
      assert.deepEqual(await store.fetchRange(layer, 100, 200), layerData.subarray(100, 200));
      assert.equal(issuer.requests.length, 2, 'one new token after the registry refused the expired one');
      assert.equal((store as RegistryStore).stats.authRefreshes, 1, 'the renewal is counted for stats');
    } finally {
      issuer.lifetime = lifetimeEnforcedAt(DEFAULT_TOKEN_LIFETIME_SECONDS);
      await store.close();
    }
  });

  test('a token past its expires_in is renewed before the next requests: concurrent reads share one, none is refused', async (t) => {
    const proxy = await startFaultProxy({ upstream: host });
    t.after(() => proxy.close());
    issuer.lifetime = lifetimeEnforcedAt(SHORT_LIFETIME_S);
    t.after(() => (issuer.lifetime = lifetimeEnforcedAt(DEFAULT_TOKEN_LIFETIME_SECONDS)));
    const store = openImageStore(`${proxy.host}/tok/app:v1`, { credentials: new StaticCredentials({ [proxy.host]: { username: USER, password: PASSWORD } }) });
    try {
      assert.deepEqual(await store.fetchRange(layer, 0, 100), layerData.subarray(0, 100));
      await new Promise((resolve) => setTimeout(resolve, SHORT_LIFETIME_S * 1000 + 500));
      issuer.resetCounters();
      proxy.resetCounters();
      const reads = Array.from({ length: CONCURRENT_READS }, (_, i) => store.fetchRange(layer, i * 1000, i * 1000 + 500));
      (await Promise.all(reads)).forEach((data, i) => assert.deepEqual(data, layerData.subarray(i * 1000, i * 1000 + 500)));
      assert.equal(issuer.issuedCount(), 1, 'one renewal shared by the concurrent reads');
      assert.equal(proxy.requests, CONCURRENT_READS, 'no request was refused and sent again');
      assert.equal(proxy.authorizationHeadersSeen, CONCURRENT_READS);
      assert.equal((store as RegistryStore).stats.authRefreshes, 0, 'nothing was refused');
    } finally {
      await store.close();
    }
  });
});
