// hosts.toml parsing: endpoint order (mirrors as written, then the server), defaults (capabilities, https,
// http for loopback, plain HTTP), capabilities, ca/client paths relative to the host directory, override_path,
// headers, the _default directory, a missing directory, and malformed files rejected naming file and key.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { HostsConfigError, loadRegistryEndpoints, parseHostsToml, readEndpointTls } from '../../src/fetch/hosts.js';

const root = mkdtempSync(join(tmpdir(), 'hosts-test-'));
after(() => rmSync(root, { recursive: true, force: true }));

function writeHosts(dirName: string, text: string): string {
  const dir = join(root, dirName);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'hosts.toml'), text);
  return dir;
}

test('mirrors come in the order written, the server last, with defaults', () => {
  const dir = writeHosts(
    'registry.example',
    `server = "https://registry.example"
[host."https://zeta.mirror"]
[host."http://alpha.mirror:5000/prefix/"]
  capabilities = ["pull"]
[host."https://mid.mirror"]
  capabilities = ["pull", "resolve"]
`,
  );
  const eps = loadRegistryEndpoints(root, 'registry.example');
  assert.deepEqual(
    eps.map((e) => [e.origin, e.apiRoot, [...e.capabilities].sort(), e.mirror]),
    [
      ['https://zeta.mirror', '/v2', ['pull', 'push', 'resolve'], true],
      ['http://alpha.mirror:5000', '/prefix/v2', ['pull'], true],
      ['https://mid.mirror', '/v2', ['pull', 'resolve'], true],
      ['https://registry.example', '/v2', ['pull', 'push', 'resolve'], false],
    ],
  );
  assert.equal(eps[0]!.source, join(dir, 'hosts.toml'));
  assert.deepEqual(eps[0]!.tls, { caFiles: [], clientPairs: [], skipVerify: false });
});

test('without server: the registry itself, https unless loopback or plain HTTP; apiHost for docker.io', () => {
  writeHosts('noserver.example', '[host."https://m.example"]\n');
  assert.equal(loadRegistryEndpoints(root, 'noserver.example').at(-1)!.origin, 'https://noserver.example');
  assert.equal(loadRegistryEndpoints(root, 'noserver.example', { plainHttp: true }).at(-1)!.origin, 'http://noserver.example');
  writeHosts('127.0.0.1:5000', '[host."https://m.example"]\n');
  assert.equal(loadRegistryEndpoints(root, '127.0.0.1:5000').at(-1)!.origin, 'http://127.0.0.1:5000');
  writeHosts('docker.io', '[host."https://m.example"]\n');
  assert.equal(loadRegistryEndpoints(root, 'docker.io', { apiHost: 'registry-1.docker.io' }).at(-1)!.origin, 'https://registry-1.docker.io');
});

test('a missing directory or file means the registry only; _default applies to hosts without a directory', () => {
  assert.deepEqual(
    loadRegistryEndpoints(join(root, 'does-not-exist'), 'x.example').map((e) => e.origin),
    ['https://x.example'],
  );
  assert.deepEqual(loadRegistryEndpoints(undefined, '127.0.0.1:1').map((e) => e.origin), ['http://127.0.0.1:1']);
  const withDefault = mkdtempSync(join(root, 'withdefault-'));
  mkdirSync(join(withDefault, '_default'));
  writeFileSync(join(withDefault, '_default', 'hosts.toml'), '[host."https://everyone.mirror"]\n');
  assert.deepEqual(loadRegistryEndpoints(withDefault, 'y.example').map((e) => e.origin), ['https://everyone.mirror', 'https://y.example']);
  // A host directory of its own wins over _default.
  mkdirSync(join(withDefault, 'z.example'));
  writeFileSync(join(withDefault, 'z.example', 'hosts.toml'), 'server = "https://z.example"\n');
  assert.deepEqual(loadRegistryEndpoints(withDefault, 'z.example').map((e) => e.origin), ['https://z.example']);
});

test('ca and client paths resolve relative to the host directory; skip_verify, override_path, headers', () => {
  const dir = writeHosts(
    'tls.example',
    `server = "https://tls.example"
ca = "server-ca.pem"
[host."https://m.example/api/v2/proxy"]
  override_path = true
  ca = ["a.pem", "/abs/b.pem"]
  client = [["c.crt", "c.key"], "both.pem", ["one.pem"]]
  skip_verify = true
  [host."https://m.example/api/v2/proxy".header]
    X-Token = "t"
    X-Multi = ["a", "b"]
`,
  );
  const [mirror, server] = loadRegistryEndpoints(root, 'tls.example');
  assert.equal(mirror!.apiRoot, '/api/v2/proxy');
  assert.deepEqual(mirror!.tls, {
    caFiles: [join(dir, 'a.pem'), '/abs/b.pem'],
    clientPairs: [
      { certFile: join(dir, 'c.crt'), keyFile: join(dir, 'c.key') },
      { certFile: join(dir, 'both.pem'), keyFile: join(dir, 'both.pem') },
      { certFile: join(dir, 'one.pem'), keyFile: join(dir, 'one.pem') },
    ],
    skipVerify: true,
  });
  assert.deepEqual(mirror!.headers, { 'x-token': 't', 'x-multi': 'a, b' });
  assert.deepEqual(server!.tls.caFiles, [join(dir, 'server-ca.pem')]);
  assert.equal(server!.apiRoot, '/v2');
});

test('readEndpointTls reads files and names the hosts.toml and path when one is missing', () => {
  const dir = writeHosts('readtls.example', 'ca = "ca.pem"\n[host."https://m.example"]\n  ca = "missing.pem"\n');
  writeFileSync(join(dir, 'ca.pem'), 'PEM');
  const [mirror, server] = loadRegistryEndpoints(root, 'readtls.example');
  const material = readEndpointTls(server!);
  assert.ok(material && material.ca?.includes('PEM') && material.rejectUnauthorized);
  assert.throws(() => readEndpointTls(mirror!), (err: Error) => err instanceof HostsConfigError && err.message.includes(join(dir, 'hosts.toml')) && err.message.includes('missing.pem'));
  assert.equal(readEndpointTls(loadRegistryEndpoints(undefined, 'plain.example')[0]!), undefined);
});

test('malformed files are rejected naming the file and the key', () => {
  const file = '/etc/hosts.d/r.example/hosts.toml';
  const cases: [string, RegExp][] = [
    ['server = "https://r.example"\n[host', /not valid TOML/],
    ['server = 5', /: server: must be a URL string/],
    ['server = "r.example:5000"', /: server: .* (is not a URL|must use http)/],
    ['[host."ftp://m.example"]', /host\."ftp:\/\/m\.example": .*must use http/],
    ['[host."https://m.example"]\ncapabilities = ["pull", "fly"]', /host\."https:\/\/m\.example"\.capabilities: must be a list/],
    ['[host."https://m.example"]\nskip_verify = "yes"', /\.skip_verify: must be true or false/],
    ['[host."https://m.example"]\noverride_path = 1', /\.override_path: must be true or false/],
    ['[host."https://m.example"]\nca = 3', /\.ca: must be a path or a list of paths/],
    ['[host."https://m.example"]\nclient = [["a", "b", "c"]]', /\.client: must be/],
    ['[host."https://m.example"]\nheader = 3', /\.header: must be a table/],
    ['[host."https://m.example"]\nbogus = 1', /\.bogus: unknown key/],
    ['[host."https://u:p@m.example"]', /must not carry user info/],
    ['host = 3', /: host: must be a table/],
  ];
  for (const [text, pattern] of cases) {
    assert.throws(
      () => parseHostsToml(text, file, 'r.example'),
      (err: Error) => {
        assert.ok(err instanceof HostsConfigError, `${text}: ${String(err)}`);
        assert.ok(err.message.startsWith(file), err.message);
        assert.match(err.message, pattern);
        assert.ok(!err.message.includes('u:p'), err.message);
        return true;
      },
      text,
    );
  }
});

test('an unreadable hosts.toml (a directory) is an error naming it', () => {
  const dir = join(root, 'weird');
  mkdirSync(join(dir, 'w.example', 'hosts.toml'), { recursive: true });
  assert.throws(() => loadRegistryEndpoints(dir, 'w.example'), (err: Error) => err instanceof HostsConfigError && err.message.includes(join(dir, 'w.example', 'hosts.toml')));
});
