// Layer decompression: media types, magic-byte sniffing (mislabelled layers), gzip/zstd/plain streams, errors.
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { compress as zstdCompress } from 'zstd-napi';
import {
  declaredCompression,
  openLayerTar,
  sniffCompression,
  UnsupportedLayerMediaTypeError,
} from '../../src/convert/layertar.js';
import { MEDIA_TYPE } from '../../src/oci/types.js';

const PAYLOAD = Buffer.from('not really a tar, but bytes that must come back unchanged '.repeat(500));

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** A blob stream whose first bytes come one at a time (sniffing must gather chunks), then in `size` pieces. */
function trickle(bytes: Buffer, size = 4096): Readable {
  const parts: Buffer[] = [];
  const SINGLE_BYTES = 8;
  for (let i = 0; i < Math.min(SINGLE_BYTES, bytes.length); i++) parts.push(bytes.subarray(i, i + 1));
  for (let i = SINGLE_BYTES; i < bytes.length; i += size) parts.push(bytes.subarray(i, i + size));
  return Readable.from(parts);
}

test('declaredCompression knows OCI and Docker tar media types and rejects others', () => {
  assert.equal(declaredCompression(MEDIA_TYPE.ociLayerTar), 'none');
  assert.equal(declaredCompression(MEDIA_TYPE.ociLayerTarGzip), 'gzip');
  assert.equal(declaredCompression(MEDIA_TYPE.ociLayerTarZstd), 'zstd');
  assert.equal(declaredCompression(MEDIA_TYPE.dockerLayerTar), 'none');
  assert.equal(declaredCompression(MEDIA_TYPE.dockerLayerTarGzip), 'gzip');
  assert.throws(() => declaredCompression(MEDIA_TYPE.erofsZstd, 'sha256:feed'), (err: unknown) => {
    assert.ok(err instanceof UnsupportedLayerMediaTypeError);
    assert.match(err.message, /sha256:feed/);
    assert.match(err.message, /application\/vnd\.erofs\.layer\.v1\+zstd/);
    return true;
  });
});

test('sniffCompression recognises gzip, zstd frames and zstd skippable frames', () => {
  assert.equal(sniffCompression(gzipSync(PAYLOAD)), 'gzip');
  assert.equal(sniffCompression(zstdCompress(PAYLOAD)), 'zstd');
  assert.equal(sniffCompression(Buffer.from([0x5a, 0x2a, 0x4d, 0x18, 0, 0, 0, 0])), 'zstd');
  assert.equal(sniffCompression(PAYLOAD), undefined);
  assert.equal(sniffCompression(Buffer.from([0x1f])), undefined);
});

test('openLayerTar decompresses according to content, also when mislabelled', async () => {
  const cases: Array<{ bytes: Buffer; mediaType: string; detected: string }> = [
    { bytes: PAYLOAD, mediaType: MEDIA_TYPE.ociLayerTar, detected: 'none' },
    { bytes: gzipSync(PAYLOAD), mediaType: MEDIA_TYPE.ociLayerTarGzip, detected: 'gzip' },
    { bytes: zstdCompress(PAYLOAD), mediaType: MEDIA_TYPE.ociLayerTarZstd, detected: 'zstd' },
    // Mislabelled: gzip under "tar", zstd under "tar+gzip", plain tar under "tar+zstd".
    { bytes: gzipSync(PAYLOAD), mediaType: MEDIA_TYPE.dockerLayerTar, detected: 'gzip' },
    { bytes: zstdCompress(PAYLOAD), mediaType: MEDIA_TYPE.dockerLayerTarGzip, detected: 'zstd' },
    { bytes: PAYLOAD, mediaType: MEDIA_TYPE.ociLayerTarZstd, detected: 'none' },
  ];
  for (const c of cases) {
    const opened = await openLayerTar(trickle(c.bytes), c.mediaType);
    assert.equal(opened.detected, c.detected, c.mediaType);
    assert.ok((await collect(opened.tar)).equals(PAYLOAD), `${c.mediaType} as ${c.detected}`);
  }
});

test('openLayerTar handles multi-member gzip and an empty blob', async () => {
  const twoMembers = Buffer.concat([gzipSync(PAYLOAD.subarray(0, 1000)), gzipSync(PAYLOAD.subarray(1000))]);
  const opened = await openLayerTar(trickle(twoMembers, 333), MEDIA_TYPE.ociLayerTarGzip);
  assert.ok((await collect(opened.tar)).equals(PAYLOAD));
  const empty = await openLayerTar(Readable.from([]), MEDIA_TYPE.ociLayerTar);
  assert.equal((await collect(empty.tar)).length, 0);
});

test('openLayerTar surfaces corrupt compressed data and blob stream errors on the tar stream', async () => {
  const corrupt = gzipSync(PAYLOAD);
  corrupt.fill(0x55, 20, 60);
  const opened = await openLayerTar(Readable.from([corrupt]), MEDIA_TYPE.ociLayerTarGzip);
  await assert.rejects(collect(opened.tar), /invalid|incorrect|corrupt|check/i);

  async function* failing(): AsyncGenerator<Buffer> {
    yield PAYLOAD.subarray(0, 10);
    throw new Error('digest mismatch from the store');
  }
  const failed = await openLayerTar(Readable.from(failing()), MEDIA_TYPE.ociLayerTar);
  await assert.rejects(collect(failed.tar), /digest mismatch from the store/);
});

test('openLayerTar rejects an unknown media type before reading the blob', async () => {
  const blob = Readable.from([PAYLOAD]);
  await assert.rejects(openLayerTar(blob, 'application/octet-stream', { layerDigest: 'sha256:abc' }), /sha256:abc.*not a tar layer/);
  assert.equal(blob.readableDidRead, false);
  blob.destroy();
});
