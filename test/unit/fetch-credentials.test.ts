// Credential store and credentialed registry auth: docker config parsing (auth / username+password /
// identitytoken, Docker Hub key spellings), refresh after rotation, the docker-credential-<name> helper
// protocol through a small shell helper put first on PATH (found, <token>, not found, failure, timeout),
// atomic login/logout writes, and the client's Basic and credentialed Bearer flows against a node:http fake
// (GET with Basic auth, OAuth2 refresh_token POST, one refresh after a refusal, secrets kept out of errors).
import assert from 'node:assert/strict';
import { chmod, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { delimiter, join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { RegistryAuthError } from '../../src/fetch/auth.js';
import {
  CredentialError,
  dockerConfigPath,
  DockerCredentialStore,
  normalizeRegistryHost,
  parseDockerConfig,
  removeAuthEntry,
  runCredentialHelper,
  saveAuthEntry,
  serverUrlFor,
  StaticCredentials,
} from '../../src/fetch/credentials.js';
import { RegistryError } from '../../src/fetch/errors.js';
import { RegistryClient } from '../../src/fetch/http.js';
import { tempDir } from '../helpers/tmp.js';

const b64 = (s: string): string => Buffer.from(s).toString('base64');

test('normalizeRegistryHost strips scheme and path and maps Docker Hub spellings to docker.io', () => {
  assert.equal(normalizeRegistryHost('https://index.docker.io/v1/'), 'docker.io');
  assert.equal(normalizeRegistryHost('index.docker.io'), 'docker.io');
  assert.equal(normalizeRegistryHost('registry-1.docker.io'), 'docker.io');
  assert.equal(normalizeRegistryHost('docker.io'), 'docker.io');
  assert.equal(normalizeRegistryHost('http://127.0.0.1:5000/v2/'), '127.0.0.1:5000');
  assert.equal(normalizeRegistryHost('GHCR.io'), 'ghcr.io');
  assert.equal(serverUrlFor('registry-1.docker.io'), 'https://index.docker.io/v1/');
  assert.equal(serverUrlFor('https://ghcr.io'), 'ghcr.io');
  assert.equal(dockerConfigPath({ DOCKER_CONFIG: '/x/y' }), '/x/y/config.json');
  assert.equal(dockerConfigPath({ HOME: '/home/u' }), '/home/u/.docker/config.json');
});

test('parseDockerConfig keeps auths, credHelpers and credsStore; bad JSON errors name the file only', () => {
  const config = parseDockerConfig(
    JSON.stringify({ auths: { 'a.io': { auth: b64('u:p') }, 'b.io': {} }, credHelpers: { 'c.io': 'x', bad: 3 }, credsStore: 'desktop', other: 1 }),
    '/cfg.json',
  );
  assert.deepEqual(config.auths, { 'a.io': { auth: b64('u:p') }, 'b.io': {} });
  assert.deepEqual(config.credHelpers, { 'c.io': 'x' });
  assert.equal(config.credsStore, 'desktop');
  assert.throws(() => parseDockerConfig('{"auths": {"a": {"auth": "c2VjcmV0"}', '/cfg.json'), (err: unknown) => err instanceof CredentialError && !err.message.includes('c2VjcmV0'));
});

test('DockerCredentialStore reads auth, username/password and identitytoken entries; refresh re-reads the file', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'config.json');
  await writeFile(
    path,
    JSON.stringify({
      auths: {
        'https://index.docker.io/v1/': { auth: b64('hubuser:hub:pass') },
        'http://127.0.0.1:5000': { username: 'alice', password: 's3cret' },
        'id.example': { identitytoken: 'refresh-xyz' },
        'empty.example': {},
      },
    }),
  );
  const store = new DockerCredentialStore({ configPath: path });
  assert.deepEqual(await store.get('registry-1.docker.io'), { username: 'hubuser', password: 'hub:pass', source: path });
  assert.deepEqual(await store.get('127.0.0.1:5000'), { username: 'alice', password: 's3cret', source: path });
  assert.deepEqual(await store.get('id.example'), { identityToken: 'refresh-xyz', source: path });
  assert.equal(await store.get('empty.example'), undefined);
  assert.equal(await store.get('other.example'), undefined);

  await writeFile(path, JSON.stringify({ auths: { '127.0.0.1:5000': { auth: b64('alice:rotated') } } }));
  assert.equal((await store.get('127.0.0.1:5000'))?.password, 's3cret', 'cached until refresh');
  store.refresh();
  assert.equal((await store.get('127.0.0.1:5000'))?.password, 'rotated');

  const missing = new DockerCredentialStore({ configPath: join(dir, 'nope', 'config.json') });
  assert.equal(await missing.get('127.0.0.1:5000'), undefined);
  const envStore = new DockerCredentialStore({ env: { DOCKER_CONFIG: dir } });
  assert.equal(envStore.configPath, path);
});

/** Writes docker-credential-test into a fresh dir put first on PATH; its behaviour is read from MODE. */
async function installHelper(t: TestContext): Promise<{ dir: string; setMode(mode: string): Promise<void>; log(): Promise<string[]> }> {
  const dir = await tempDir(t);
  const script = `#!/bin/sh
read -r url
printf '%s %s\\n' "$1" "$url" >> "${dir}/log"
mode=$(cat "${dir}/mode")
case "$mode" in
  found) printf '{"ServerURL":"%s","Username":"helper-user","Secret":"helper-secret-%s"}' "$url" "$(cat "${dir}/gen" 2>/dev/null || echo 1)" ;;
  token) printf '{"ServerURL":"%s","Username":"<token>","Secret":"identity-abc"}' "$url" ;;
  notfound) echo "credentials not found in native keychain"; exit 1 ;;
  fail) echo "boom: leaked-secret-on-stderr" >&2; echo "leaked-secret-on-stdout"; exit 3 ;;
  garbage) echo "not json leaked-secret" ;;
  slow) sleep 5; echo '{}' ;;
esac
`;
  await writeFile(join(dir, 'docker-credential-test'), script);
  await chmod(join(dir, 'docker-credential-test'), 0o755);
  const oldPath = process.env['PATH'];
  process.env['PATH'] = `${dir}${delimiter}${oldPath ?? ''}`;
  t.after(() => {
    process.env['PATH'] = oldPath;
  });
  return {
    dir,
    setMode: (mode) => writeFile(join(dir, 'mode'), mode),
    log: async () => (await readFile(join(dir, 'log'), 'utf8').catch(() => '')).split('\n').filter((l) => l !== ''),
  };
}

test('credential helper protocol: get with the server URL on stdin, <token>, not found, failures stay generic', async (t) => {
  const helper = await installHelper(t);
  await helper.setMode('found');
  assert.deepEqual(await runCredentialHelper('test', 'https://index.docker.io/v1/'), {
    username: 'helper-user',
    password: 'helper-secret-1',
    source: 'credential helper docker-credential-test',
  });
  assert.deepEqual(await helper.log(), ['get https://index.docker.io/v1/']);
  await helper.setMode('token');
  assert.deepEqual(await runCredentialHelper('test', 'ghcr.io'), { identityToken: 'identity-abc', source: 'credential helper docker-credential-test' });
  await helper.setMode('notfound');
  assert.equal(await runCredentialHelper('test', 'ghcr.io'), undefined);
  for (const mode of ['fail', 'garbage']) {
    await helper.setMode(mode);
    await assert.rejects(
      runCredentialHelper('test', 'ghcr.io'),
      (err: unknown) => err instanceof CredentialError && err.message.includes('docker-credential-test') && !err.message.includes('leaked'),
    );
  }
  await helper.setMode('slow');
  const started = Date.now();
  await assert.rejects(runCredentialHelper('test', 'ghcr.io', 200), /did not answer within 200 ms/);
  assert.ok(Date.now() - started < 3000);
  await assert.rejects(runCredentialHelper('absent-helper-xyz', 'ghcr.io'), /not installed/);
  await assert.rejects(runCredentialHelper('../evil', 'ghcr.io'), /invalid credential helper name/);
});

test('credHelpers win per host, credsStore is the default, auths entries come before credsStore; refresh re-asks', async (t) => {
  const helper = await installHelper(t);
  await helper.setMode('found');
  const dir = await tempDir(t);
  const path = join(dir, 'config.json');
  await writeFile(
    path,
    JSON.stringify({ auths: { 'plain.example': { auth: b64('p:q') }, 'helped.example': { auth: b64('x:y') } }, credHelpers: { 'https://helped.example': 'test' }, credsStore: 'test' }),
  );
  const store = new DockerCredentialStore({ configPath: path });
  assert.equal((await store.get('helped.example'))?.password, 'helper-secret-1');
  assert.equal((await store.get('plain.example'))?.password, 'q');
  assert.equal((await store.get('registry-1.docker.io'))?.password, 'helper-secret-1');
  assert.equal((await store.get('helped.example'))?.password, 'helper-secret-1');
  assert.deepEqual(await helper.log(), ['get helped.example', 'get https://index.docker.io/v1/'], 'answers are cached');
  await writeFile(join(helper.dir, 'gen'), '2');
  store.refresh();
  assert.equal((await store.get('helped.example'))?.password, 'helper-secret-2');
  await helper.setMode('fail');
  store.refresh();
  await assert.rejects(store.get('helped.example'), CredentialError);
  await helper.setMode('found');
  assert.equal((await store.get('helped.example'))?.username, 'helper-user', 'a failure is not cached');
});

test('saveAuthEntry / removeAuthEntry: atomic 0600 writes that keep other keys and replace other spellings', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'sub', 'config.json');
  await saveAuthEntry(path, 'docker.io', 'u1', 'p1');
  assert.equal((await stat(path)).mode & 0o777, 0o600);
  assert.deepEqual(JSON.parse(await readFile(path, 'utf8')), { auths: { 'https://index.docker.io/v1/': { auth: b64('u1:p1') } } });

  await writeFile(path, JSON.stringify({ auths: { 'http://reg.example/': { auth: b64('old:old') }, 'keep.example': { auth: b64('k:k') } }, credsStore: 'x', proxies: { a: 1 } }), { mode: 0o644 });
  await saveAuthEntry(path, 'reg.example', 'new', 'pw');
  const doc = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  assert.deepEqual(doc, { auths: { 'keep.example': { auth: b64('k:k') }, 'reg.example': { auth: b64('new:pw') } }, credsStore: 'x', proxies: { a: 1 } });
  assert.equal((await stat(path)).mode & 0o777, 0o600);

  assert.equal(await removeAuthEntry(path, 'https://reg.example'), true);
  assert.equal(await removeAuthEntry(path, 'reg.example'), false);
  assert.deepEqual(JSON.parse(await readFile(path, 'utf8')), { auths: { 'keep.example': { auth: b64('k:k') } }, credsStore: 'x', proxies: { a: 1 } });
  assert.equal(await removeAuthEntry(join(dir, 'missing.json'), 'reg.example'), false);
});

// ---- the client against a node:http fake registry + token issuer ----

type Handler = (req: IncomingMessage, res: ServerResponse, url: URL, body: string) => void;

async function startServer(t: TestContext, handler: Handler): Promise<string> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => handler(req, res, new URL(req.url ?? '/', 'http://x'), Buffer.concat(chunks).toString('utf8')));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const bytes = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': bytes.length, ...headers });
  res.end(bytes);
}

/** A mutable provider that counts refresh() calls. */
class MutableCredentials {
  refreshes = 0;
  constructor(public password: string, public identityToken?: string) {}
  async get(): Promise<{ username?: string; password?: string; identityToken?: string; source: string }> {
    return this.identityToken !== undefined ? { identityToken: this.identityToken, source: 'test provider' } : { username: 'bob', password: this.password, source: 'test provider' };
  }
  refresh(): void {
    this.refreshes++;
  }
}

test('Basic challenge: credentials are sent, then sent up front; a rotated password is picked up after one refresh', async (t) => {
  let valid = 'pw-one';
  const seen: Array<string | undefined> = [];
  const host = await startServer(t, (req, res) => {
    seen.push(req.headers.authorization);
    if (req.headers.authorization === `Basic ${b64(`bob:${valid}`)}`) send(res, 200, {});
    else send(res, 401, { errors: [{ code: 'UNAUTHORIZED' }] }, { 'www-authenticate': 'Basic realm="r"' });
  });
  const creds = new MutableCredentials('pw-one');
  const client = new RegistryClient({ credentials: creds });
  t.after(() => client.close());
  const get = async (): Promise<number> => {
    const res = await client.send({ operation: 'probe', method: 'GET', url: new URL(`http://${host}/v2/`) });
    await res.body.dump();
    return res.status;
  };
  assert.equal(await get(), 200);
  assert.deepEqual(seen, [undefined, `Basic ${b64('bob:pw-one')}`]);
  assert.equal(await get(), 200);
  assert.equal(seen.length, 3, 'the second request authenticates up front');
  valid = 'pw-two';
  creds.password = 'pw-two';
  assert.equal(await get(), 200);
  assert.equal(creds.refreshes, 1);
  creds.password = 'wrong-password-123';
  valid = 'pw-three';
  await assert.rejects(get(), (err: unknown) => {
    assert.ok(err instanceof RegistryAuthError);
    assert.equal(err.status, 401);
    assert.match(err.message, new RegExp(`authentication failed for ${host.replace('.', '\\.')} \\(credentials from test provider\\)`));
    assert.ok(!err.message.includes('wrong-password-123') && !err.message.includes(b64('bob:wrong-password-123')));
    return true;
  });
  assert.equal(creds.refreshes, 2, 'one refresh per request, no more');
});

test('Bearer challenge with credentials: token GET with Basic auth, OAuth2 refresh_token POST, refused credentials', async (t) => {
  const tokenRequests: Array<{ method: string; auth: string | undefined; query: string; body: string }> = [];
  let goodPassword = 'tok-pw';
  const host: string = await startServer(t, (req, res, url, body) => {
    if (url.pathname === '/token') {
      tokenRequests.push({ method: req.method ?? '', auth: req.headers.authorization, query: url.search, body });
      if (req.method === 'POST') {
        const form = new URLSearchParams(body);
        if (form.get('grant_type') === 'refresh_token' && form.get('refresh_token') === 'identity-1') send(res, 200, { access_token: 'token-from-post', expires_in: 300 });
        else send(res, 401, { error: 'invalid_grant' });
      } else if (req.headers.authorization === `Basic ${b64(`bob:${goodPassword}`)}`) send(res, 200, { token: 'token-from-get', expires_in: 300 });
      else send(res, 401, { errors: [{ code: 'UNAUTHORIZED' }] });
      return;
    }
    const auth = req.headers.authorization;
    if (auth === 'Bearer token-from-get' || auth === 'Bearer token-from-post') send(res, 200, {});
    else send(res, 401, { errors: [{ code: 'UNAUTHORIZED' }] }, { 'www-authenticate': `Bearer realm="http://${host}/token",service="svc",scope="repository:a/b:pull"` });
  });
  const probe = async (client: RegistryClient): Promise<number> => {
    const res = await client.send({ operation: 'probe', method: 'GET', url: new URL(`http://${host}/v2/a/b/tags/list`), scopes: ['repository:a/b:pull'] });
    await res.body.dump();
    return res.status;
  };

  const withPassword = new RegistryClient({ credentials: new MutableCredentials('tok-pw') });
  t.after(() => withPassword.close());
  assert.equal(await probe(withPassword), 200);
  assert.equal(await probe(withPassword), 200);
  assert.equal(tokenRequests.length, 1, 'token cached per scope');
  assert.equal(tokenRequests[0]!.method, 'GET');
  assert.equal(tokenRequests[0]!.auth, `Basic ${b64('bob:tok-pw')}`);
  assert.equal(tokenRequests[0]!.query, '?service=svc&scope=repository%3Aa%2Fb%3Apull');

  tokenRequests.length = 0;
  const withIdentity = new RegistryClient({ credentials: new MutableCredentials('', 'identity-1') });
  t.after(() => withIdentity.close());
  assert.equal(await probe(withIdentity), 200);
  assert.equal(tokenRequests.length, 1);
  assert.equal(tokenRequests[0]!.method, 'POST');
  assert.equal(tokenRequests[0]!.query, '');
  const form = new URLSearchParams(tokenRequests[0]!.body);
  assert.equal(form.get('grant_type'), 'refresh_token');
  assert.equal(form.get('service'), 'svc');
  assert.equal(form.get('scope'), 'repository:a/b:pull');
  assert.equal(form.get('client_id'), 'erofs-lazy');

  tokenRequests.length = 0;
  goodPassword = 'something-else';
  const refused = new MutableCredentials('bad-secret-pw');
  const refusedClient = new RegistryClient({ credentials: refused });
  t.after(() => refusedClient.close());
  await assert.rejects(probe(refusedClient), (err: unknown) => {
    assert.ok(err instanceof RegistryAuthError, String(err));
    assert.equal(err.status, 401);
    assert.match(err.message, /authentication failed for 127\.0\.0\.1:\d+ \(credentials from test provider\)/);
    assert.ok(!err.message.includes('bad-secret-pw'));
    assert.ok(!JSON.stringify(err).includes('bad-secret-pw'));
    return true;
  });
  assert.equal(tokenRequests.length, 1, 'the issuer refusal is final (no retry storm)');
});

test('a token the registry stops accepting is replaced once after re-reading credentials, then fails clearly', async (t) => {
  let accepted = new Set(['t1']);
  let issued = 0;
  const host: string = await startServer(t, (req, res, url) => {
    if (url.pathname === '/token') {
      issued++;
      send(res, 200, { token: `t${issued}`, expires_in: 300 });
      return;
    }
    const token = req.headers.authorization?.replace(/^Bearer /, '');
    if (token !== undefined && accepted.has(token)) send(res, 200, {});
    else send(res, 401, { errors: [{ code: 'UNAUTHORIZED' }] }, { 'www-authenticate': `Bearer realm="http://${host}/token",service="svc"` });
  });
  const creds = new MutableCredentials('pw');
  const client = new RegistryClient({ credentials: creds });
  t.after(() => client.close());
  const probe = async (): Promise<number> => {
    const res = await client.send({ operation: 'probe', method: 'GET', url: new URL(`http://${host}/v2/x/manifests/v1`), scopes: ['repository:x:pull'] });
    await res.body.dump();
    return res.status;
  };
  assert.equal(await probe(), 200);
  accepted = new Set(['t2']); // t1 revoked server-side before its expiry
  assert.equal(await probe(), 200);
  assert.equal(issued, 2);
  assert.equal(creds.refreshes, 1);
  accepted = new Set();
  await assert.rejects(probe(), RegistryAuthError);
});

test('a 403 to a credentialed token gets one new token after a refresh, then a RegistryAuthError (403)', async (t) => {
  let issued = 0;
  let allow = true;
  const host: string = await startServer(t, (req, res, url) => {
    if (url.pathname === '/token') {
      issued++;
      send(res, 200, { token: `t${issued}`, expires_in: 300 });
      return;
    }
    if (req.headers.authorization === undefined) send(res, 401, {}, { 'www-authenticate': `Bearer realm="http://${host}/token",service="svc"` });
    else if (allow || req.headers.authorization === 'Bearer t2') send(res, 200, {});
    else send(res, 403, { errors: [{ code: 'DENIED' }] });
  });
  const creds = new MutableCredentials('pw');
  const client = new RegistryClient({ credentials: creds });
  t.after(() => client.close());
  const probe = async (): Promise<number> => {
    const res = await client.send({ operation: 'probe', method: 'GET', url: new URL(`http://${host}/v2/x/manifests/v1`), scopes: ['repository:x:pull'] });
    await res.body.dump();
    return res.status;
  };
  assert.equal(await probe(), 200);
  allow = false;
  assert.equal(await probe(), 200, 't1 refused with 403, t2 accepted');
  assert.equal(issued, 2);
  issued = 10;
  await client.close();
  const client2 = new RegistryClient({ credentials: creds });
  t.after(() => client2.close());
  await assert.rejects(
    (async () => {
      const res = await client2.send({ operation: 'probe', method: 'GET', url: new URL(`http://${host}/v2/x/manifests/v1`), scopes: ['repository:x:pull'] });
      await res.body.dump();
    })(),
    (err: unknown) => err instanceof RegistryAuthError && err.status === 403 && /authentication failed/.test(err.message),
  );
});

test('StaticCredentials and a provider failure: the error names the registry, not the secret', async (t) => {
  assert.deepEqual(await new StaticCredentials({ 'docker.io': { username: 'a', password: 'b' } }).get('registry-1.docker.io'), { username: 'a', password: 'b', source: 'static credentials' });
  const host = await startServer(t, (_req, res) => send(res, 401, {}, { 'www-authenticate': 'Basic realm="r"' }));
  const client = new RegistryClient({
    credentials: {
      get: async () => {
        throw new CredentialError('credential helper docker-credential-x failed (exit status 1)');
      },
      refresh: () => undefined,
    },
  });
  t.after(() => client.close());
  await assert.rejects(client.send({ operation: 'probe', method: 'GET', url: new URL(`http://${host}/v2/`) }), (err: unknown) => {
    assert.ok(err instanceof RegistryError);
    assert.match(err.message, /no credentials for 127\.0\.0\.1:\d+: credential helper docker-credential-x failed/);
    return true;
  });
});
