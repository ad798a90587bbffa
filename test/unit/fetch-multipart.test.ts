// multipart/byteranges parsing: Go-style bodies, boundaries inside binary data, quoted boundaries, merged
// parts, and every way a body can be malformed (each a MultipartError, never wrong bytes).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { byterangesBoundary, MultipartError, parseByteranges, parseContentRange, sliceRanges } from '../../src/fetch/multipart.js';

const SIZE = 1000;
const BLOB = Buffer.from(Array.from({ length: SIZE }, (_, i) => (i * 37 + 11) & 0xff));

/** A body as Go's http.ServeContent writes it. */
function goBody(boundary: string, ranges: [number, number][], blob: Buffer = BLOB): Buffer {
  const pieces: Buffer[] = [];
  for (const [start, end] of ranges) {
    pieces.push(Buffer.from(`\r\n--${boundary}\r\nContent-Range: bytes ${start}-${end - 1}/${blob.length}\r\nContent-Type: application/octet-stream\r\n\r\n`));
    pieces.push(blob.subarray(start, end));
  }
  pieces.push(Buffer.from(`\r\n--${boundary}--\r\n`));
  return Buffer.concat(pieces);
}

test('byterangesBoundary reads plain and quoted boundaries and ignores other types', () => {
  assert.equal(byterangesBoundary('multipart/byteranges; boundary=abc123'), 'abc123');
  assert.equal(byterangesBoundary('Multipart/ByteRanges;charset=x; boundary="a b:c"'), 'a b:c');
  assert.equal(byterangesBoundary('application/octet-stream'), undefined);
  assert.equal(byterangesBoundary(undefined), undefined);
  assert.throws(() => byterangesBoundary('multipart/byteranges'), MultipartError);
  assert.throws(() => byterangesBoundary(`multipart/byteranges; boundary=${'x'.repeat(71)}`), MultipartError);
});

test('parseContentRange accepts bytes A-B/SIZE and A-B/* only', () => {
  assert.deepEqual(parseContentRange('bytes 0-9/100'), { start: 0, end: 10, size: 100 });
  assert.deepEqual(parseContentRange(' bytes 5-5/*'), { start: 5, end: 6, size: undefined });
  for (const bad of ['bytes 9-0/100', 'bytes 0-100/100', 'bytes */100', 'items 0-1/2', 'bytes 0-1', '']) {
    assert.equal(parseContentRange(bad), undefined, bad);
  }
});

test('a Go-style body gives each part exactly', () => {
  const ranges: [number, number][] = [
    [0, 10],
    [100, 356],
    [990, 1000],
  ];
  const parts = parseByteranges(goBody('3d6b6a416f9b5', ranges), '3d6b6a416f9b5');
  assert.equal(parts.length, 3);
  parts.forEach((part, k) => {
    assert.equal(part.start, ranges[k]![0]);
    assert.equal(part.end, ranges[k]![1]);
    assert.equal(part.size, SIZE);
    assert.deepEqual(part.data, BLOB.subarray(ranges[k]![0], ranges[k]![1]));
  });
});

test('data that contains the boundary string does not confuse the parser', () => {
  const boundary = 'BOUNDARY';
  const blob = Buffer.concat([Buffer.from(`xx\r\n--${boundary}\r\nContent-Range: bytes 0-1/2\r\n\r\n`), Buffer.alloc(50, 7)]);
  const parts = parseByteranges(goBody(boundary, [[0, 30], [40, 60]], blob), boundary);
  assert.deepEqual(parts[0]!.data, blob.subarray(0, 30));
  assert.deepEqual(parts[1]!.data, blob.subarray(40, 60));
});

test('malformed bodies are MultipartErrors', () => {
  const good = goBody('b', [[0, 10], [20, 30]]);
  const cases: [string, Buffer][] = [
    ['no boundary', Buffer.from('hello')],
    ['cut inside a part', good.subarray(0, good.length - 30)],
    ['no closing delimiter', good.subarray(0, good.indexOf(Buffer.from('\r\n--b--')))],
    ['missing Content-Range', Buffer.from('--b\r\nContent-Type: x\r\n\r\n0123\r\n--b--')],
    ['bad Content-Range', Buffer.from('--b\r\nContent-Range: bytes 5-1/10\r\n\r\n0123\r\n--b--')],
    ['data longer than its range', Buffer.from('--b\r\nContent-Range: bytes 0-1/10\r\n\r\n0123\r\n--b--')],
    ['header line without a colon', Buffer.from('--b\r\ngarbage\r\n\r\n01\r\n--b--')],
  ];
  for (const [what, body] of cases) assert.throws(() => parseByteranges(body, 'b'), MultipartError, what);
});

test('sliceRanges finds each wanted range in a part that covers it (merged or reordered parts)', () => {
  const parts = [
    { start: 500, end: 600, size: SIZE, data: BLOB.subarray(500, 600) },
    { start: 0, end: 200, size: SIZE, data: BLOB.subarray(0, 200) },
  ];
  const [a, b, c] = sliceRanges(parts, [
    { start: 10, end: 20 },
    { start: 150, end: 200 },
    { start: 550, end: 601 },
  ]);
  assert.deepEqual(a, BLOB.subarray(10, 20));
  assert.deepEqual(b, BLOB.subarray(150, 200));
  assert.equal(c, undefined, 'a range one byte past a part is not covered');
});
