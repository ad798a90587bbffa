// Image reference grammar: docker.io defaults, hosts with ports and IPv6, tags, digests, invalid input with
// clear messages (never echoing credentials), and the local `oci:DIR[:TAG]` syntax.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ImageReferenceError } from '../../src/fetch/errors.js';
import { parseImageSource, parseOciLayoutReference, parseRegistryReference } from '../../src/fetch/reference.js';

const HEX = 'a'.repeat(32) + '0123456789abcdef'.repeat(2);
const D = `sha256:${HEX}`;
const D512 = `sha512:${'0f'.repeat(64)}`;

// input → [registry, repository, tag, digest, normalized string, API host]
const VALID: Array<[string, string, string, string | undefined, string | undefined, string, string]> = [
  ['busybox', 'docker.io', 'library/busybox', 'latest', undefined, 'docker.io/library/busybox:latest', 'registry-1.docker.io'],
  ['busybox:1.36', 'docker.io', 'library/busybox', '1.36', undefined, 'docker.io/library/busybox:1.36', 'registry-1.docker.io'],
  ['library/busybox', 'docker.io', 'library/busybox', 'latest', undefined, 'docker.io/library/busybox:latest', 'registry-1.docker.io'],
  ['docker.io/busybox', 'docker.io', 'library/busybox', 'latest', undefined, 'docker.io/library/busybox:latest', 'registry-1.docker.io'],
  ['index.docker.io/library/busybox:1', 'docker.io', 'library/busybox', '1', undefined, 'docker.io/library/busybox:1', 'registry-1.docker.io'],
  ['registry-1.docker.io/library/alpine', 'docker.io', 'library/alpine', 'latest', undefined, 'docker.io/library/alpine:latest', 'registry-1.docker.io'],
  ['user/repo', 'docker.io', 'user/repo', 'latest', undefined, 'docker.io/user/repo:latest', 'registry-1.docker.io'],
  ['docker.io/user/repo:tag', 'docker.io', 'user/repo', 'tag', undefined, 'docker.io/user/repo:tag', 'registry-1.docker.io'],
  ['ghcr.io/owner/repo:v1.2.3', 'ghcr.io', 'owner/repo', 'v1.2.3', undefined, 'ghcr.io/owner/repo:v1.2.3', 'ghcr.io'],
  ['ghcr.io/single', 'ghcr.io', 'single', 'latest', undefined, 'ghcr.io/single:latest', 'ghcr.io'],
  ['localhost/foo', 'localhost', 'foo', 'latest', undefined, 'localhost/foo:latest', 'localhost'],
  ['localhost:5000/foo/bar:tag', 'localhost:5000', 'foo/bar', 'tag', undefined, 'localhost:5000/foo/bar:tag', 'localhost:5000'],
  ['127.0.0.1:5000/a/b/c:t', '127.0.0.1:5000', 'a/b/c', 't', undefined, '127.0.0.1:5000/a/b/c:t', '127.0.0.1:5000'],
  ['[::1]:5000/x:y', '[::1]:5000', 'x', 'y', undefined, '[::1]:5000/x:y', '[::1]:5000'],
  ['[fe80::1]/x', '[fe80::1]', 'x', 'latest', undefined, '[fe80::1]/x:latest', '[fe80::1]'],
  ['registry.example.com:443/a-b/c_d/e.f:1', 'registry.example.com:443', 'a-b/c_d/e.f', '1', undefined, 'registry.example.com:443/a-b/c_d/e.f:1', 'registry.example.com:443'],
  ['My.Registry.COM/foo', 'My.Registry.COM', 'foo', 'latest', undefined, 'My.Registry.COM/foo:latest', 'My.Registry.COM'],
  ['a__b/c--d:x', 'docker.io', 'a__b/c--d', 'x', undefined, 'docker.io/a__b/c--d:x', 'registry-1.docker.io'],
  ['quay.io/a/b@' + D, 'quay.io', 'a/b', undefined, D, `quay.io/a/b@${D}`, 'quay.io'],
  ['quay.io/a/b:t@' + D, 'quay.io', 'a/b', 't', D, `quay.io/a/b:t@${D}`, 'quay.io'],
  ['busybox@' + D, 'docker.io', 'library/busybox', undefined, D, `docker.io/library/busybox@${D}`, 'registry-1.docker.io'],
  ['h.io/x@' + D512, 'h.io', 'x', undefined, D512, `h.io/x@${D512}`, 'h.io'],
  ['docker://busybox', 'docker.io', 'library/busybox', 'latest', undefined, 'docker.io/library/busybox:latest', 'registry-1.docker.io'],
  ['host:5000', 'docker.io', 'library/host', '5000', undefined, 'docker.io/library/host:5000', 'registry-1.docker.io'],
  ['example.com/x:_under_score', 'example.com', 'x', '_under_score', undefined, 'example.com/x:_under_score', 'example.com'],
  ['example.com/x:' + 'T'.repeat(128), 'example.com', 'x', 'T'.repeat(128), undefined, `example.com/x:${'T'.repeat(128)}`, 'example.com'],
];

test('valid references normalize as the docker grammar says', () => {
  for (const [input, registry, repository, tag, digest, normalized, apiHost] of VALID) {
    const ref = parseRegistryReference(input);
    assert.equal(ref.registry, registry, input);
    assert.equal(ref.repository, repository, input);
    assert.equal(ref.tag, tag, input);
    assert.equal(ref.digest, digest, input);
    assert.equal(ref.toString(), normalized, input);
    assert.equal(ref.apiHost, apiHost, input);
    assert.equal(ref.name, `${registry}/${repository}`, input);
    // The normalized form parses to itself.
    assert.equal(parseRegistryReference(normalized).toString(), normalized, input);
  }
});

// input → a fragment the error message must contain
const INVALID: Array<[string, RegExp]> = [
  ['', /empty reference/],
  ['Busybox', /must be lowercase/],
  ['docker.io/Library/busybox', /must be lowercase/],
  ['ghcr.io/owner/MyRepo:1', /must be lowercase/],
  ['busybox:', /bad tag/],
  ['busybox:-tag', /bad tag/],
  ['busybox:.tag', /bad tag/],
  [`busybox:${'a'.repeat(129)}`, /bad tag/],
  ['busybox@sha256:abc', /bad sha256 digest/],
  [`busybox@md5:${'0'.repeat(32)}`, /unsupported digest algorithm "md5"/],
  [`busybox@sha256:${HEX.toUpperCase()}`, /bad sha256 digest/],
  [`busybox@sha512:${'0'.repeat(64)}`, /bad sha512 digest/],
  ['busybox@', /misplaced "@"/],
  ['busybox@sha256:', /digest must look like/],
  ['a//b', /bad repository path component ""/],
  ['a/b/', /bad repository path component ""/],
  ['-abc', /bad repository path component "-abc"/],
  ['abc-', /bad repository path component "abc-"/],
  ['a/b.', /bad repository path component "b."/],
  ['foo bar', /bad repository path component|bad tag/],
  ['a..b/c', /bad registry host "a..b"/],
  ['example.com:port/x', /bad registry host "example.com:port"/],
  ['-bad.host/x', /bad registry host/],
  [`a/${'b'.repeat(300)}`, /longer than 255/],
  ['https://registry.example.com/foo', /no URL scheme/],
  ['example.com/:tag', /missing repository name|bad repository path/],
  [':tag', /missing repository name/],
];

test('invalid references fail with a message that names the problem', () => {
  for (const [input, pattern] of INVALID) {
    assert.throws(
      () => parseRegistryReference(input),
      (err: unknown) => err instanceof ImageReferenceError && pattern.test(err.message),
      `${input} should fail with ${pattern}`,
    );
  }
});

test('reference errors never repeat credentials', () => {
  for (const input of [
    'user:pass@registry.example.com/foo:tag',
    'https://user:pass@registry.example.com/foo',
    'docker://user:pass@host/x',
    `user:pass@host/x@${D}`,
    'user:pass@host',
  ]) {
    assert.throws(
      () => parseRegistryReference(input),
      (err: unknown) => err instanceof ImageReferenceError && !err.message.includes('pass') && !err.message.includes('user:'),
      input,
    );
  }
});

test('oci:DIR[:TAG] takes the tag after the last colon unless it contains a slash', () => {
  const cases: Array<[string, string, string | undefined, string | undefined]> = [
    ['oci:/tmp/x', '/tmp/x', undefined, undefined],
    ['oci:/tmp/x:v1', '/tmp/x', 'v1', undefined],
    ['oci:./rel/dir:latest', './rel/dir', 'latest', undefined],
    ['oci:layout', 'layout', undefined, undefined],
    ['oci:/data/a:b:latest', '/data/a:b', 'latest', undefined],
    ['oci:/data/a:b:', '/data/a:b', undefined, undefined],
    ['oci:/data/a:b/c', '/data/a:b/c', undefined, undefined],
    ['oci:/x:1.0+build', '/x', '1.0+build', undefined],
    [`oci:/x@${D}`, '/x', undefined, D],
    [`oci:/with:colon@${D}`, '/with:colon', undefined, D],
  ];
  for (const [input, dir, tag, digest] of cases) {
    const ref = parseOciLayoutReference(input);
    assert.deepEqual([ref.dir, ref.tag, ref.digest], [dir, tag, digest], input);
    const again = parseOciLayoutReference(ref.toString());
    assert.deepEqual([again.dir, again.tag, again.digest], [dir, tag, digest], `${input} round trip via ${ref.toString()}`);
  }
  assert.throws(() => parseOciLayoutReference('oci:'), /missing layout directory/);
  assert.throws(() => parseOciLayoutReference('oci::tag'), /missing layout directory/);
  assert.throws(() => parseOciLayoutReference('oci:/x:bad tag'), /bad tag/);
  assert.throws(() => parseOciLayoutReference(`oci:/x@sha256:${'0'.repeat(10)}`), /bad sha256 digest/);
});

test('parseImageSource picks the layout syntax only for the oci: prefix', () => {
  assert.equal(parseImageSource('oci:/a:b').kind, 'oci-layout');
  assert.equal(parseImageSource('127.0.0.1:5000/oci:b').kind, 'registry');
  assert.equal(parseImageSource('busybox').kind, 'registry');
});
