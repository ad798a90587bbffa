import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DigestFormatError, parseDigest, sha256Digest } from '../../src/util/digest.js';

test('parseDigest accepts sha256 and sha512 and rejects anything else', () => {
  const d = sha256Digest(Buffer.from('x'));
  assert.deepEqual(parseDigest(d), { algorithm: 'sha256', hex: d.slice(7) });
  assert.throws(() => parseDigest('sha256:ABC'), DigestFormatError);
  assert.throws(() => parseDigest(`md5:${'0'.repeat(32)}`), DigestFormatError);
  assert.throws(() => parseDigest(`sha512:${'0'.repeat(64)}`), DigestFormatError);
});
