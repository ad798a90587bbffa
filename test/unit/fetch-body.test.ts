// Tests of readBodyExact (src/fetch/http.ts): a body of known length read into one buffer of its own.
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { readBodyExact } from '../../src/fetch/http.js';

function body(pieces: Buffer[]): Readable {
  return Readable.from(pieces, { objectMode: false });
}

test('readBodyExact: the pieces in one buffer that owns its memory', async () => {
  const pieces = [Buffer.from('hello '), Buffer.alloc(70_000, 7), Buffer.from('world')];
  const want = Buffer.concat(pieces);
  const got = await readBodyExact(body(pieces), want.length, 'range');
  assert.ok(got.equals(want));
  assert.equal(got.byteOffset, 0);
  assert.equal(got.buffer.byteLength, want.length, 'a whole ArrayBuffer of its own (transferable)');
  assert.equal((await readBodyExact(body([]), 0, 'range')).length, 0);
});

test('readBodyExact: fewer bytes give what came; more is a RangeError and the body is destroyed', async () => {
  const short = await readBodyExact(body([Buffer.from('abc')]), 10, 'range');
  assert.equal(short.toString(), 'abc');
  const long = body([Buffer.from('abcdef'), Buffer.from('ghij')]);
  await assert.rejects(readBodyExact(long, 8, 'range'), (err: unknown) => err instanceof RangeError && /range is larger than 8 bytes/.test(err.message));
  assert.ok(long.destroyed);
});
