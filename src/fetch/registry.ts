// ImageStore for one repository of an OCI distribution registry: manifest resolution (through indexes by
// platform), verified blob reads (whole, streamed, byte ranges), and pushes (existence check, cross-repository
// mount, monolithic or chunked upload with the digest checked before the final PUT, manifests by tag).
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { pipeline, type Readable } from 'node:stream';
import type { BlobContent, ImageStore, ResolveOptions } from '../oci/store.js';
import { MANIFEST_MEDIA_TYPES, type Descriptor, type Platform, type ResolvedImage } from '../oci/types.js';
import { parseDigest, sha256Digest } from '../util/digest.js';
import { ContentVerificationError, ImageReferenceError, RegistryError } from './errors.js';
import {
  discardBody,
  abandonBody,
  cutBody,
  getHeader,
  readBodyCapped,
  RegistryClient,
  registryScheme,
  responseError,
  type HttpMethod,
  type HttpResponse,
  type RegistryClientOptions,
} from './http.js';
import { bareMediaType, isManifestMediaType, MAX_MANIFEST_BYTES, resolveThroughIndexes } from './manifest.js';
import { hostPlatform } from './platform.js';
import { parseRegistryReference, type RegistryReference } from './reference.js';
import { checkDescriptor, checkRange, digestLike, newHash, verifyContent, VerifyingStream } from './verify.js';

/** Blobs up to this size are uploaded with one PUT; larger ones in PATCH chunks. */
export const MONOLITHIC_UPLOAD_MAX_BYTES = 16 * 1024 * 1024;
/** Size of each PATCH of a chunked upload. */
export const UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024;
/** Largest blob fetchBlob reads into memory; larger ones must be streamed with openBlob. */
export const MAX_FETCH_BLOB_BYTES = 256 * 1024 * 1024;
/** Read size when streaming a file into an upload. */
const FILE_READ_CHUNK_BYTES = 1024 * 1024;

export interface RegistryStoreOptions extends RegistryClientOptions {
  /** Talk plain HTTP even to a non-loopback host (loopback hosts always use HTTP). */
  plainHttp?: boolean;
  /** Platform resolve() picks from an index when its options give none; default the host's. */
  platform?: Platform;
  /** A client to share connections and tokens with other stores; close() then leaves it open. */
  client?: RegistryClient;
  /** Override of MONOLITHIC_UPLOAD_MAX_BYTES. */
  monolithicUploadMaxBytes?: number;
  /** Override of UPLOAD_CHUNK_BYTES. */
  uploadChunkBytes?: number;
  /** Override of MAX_FETCH_BLOB_BYTES. */
  maxFetchBlobBytes?: number;
}

function appendQuery(url: URL, name: string, value: string): URL {
  const next = new URL(url.href);
  next.search = `${next.search ? `${next.search}&` : '?'}${name}=${encodeURIComponent(value)}`;
  return next;
}

/** Yields the content in pieces of exactly `size` bytes (the last one shorter). */
async function* piecesOf(content: BlobContent, size: number): AsyncGenerator<Buffer> {
  if ('bytes' in content) {
    for (let offset = 0; offset < content.bytes.length; offset += size) yield content.bytes.subarray(offset, offset + size);
    return;
  }
  const source: Readable = 'path' in content ? createReadStream(content.path, { highWaterMark: FILE_READ_CHUNK_BYTES }) : await content.stream();
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  try {
    for await (const chunk of source) {
      let data = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as Uint8Array);
      while (pendingBytes + data.length >= size) {
        const take = size - pendingBytes;
        pending.push(data.subarray(0, take));
        yield Buffer.concat(pending, size);
        data = data.subarray(take);
        pending = [];
        pendingBytes = 0;
      }
      if (data.length > 0) {
        pending.push(data);
        pendingBytes += data.length;
      }
    }
    if (pendingBytes > 0) yield Buffer.concat(pending, pendingBytes);
  } finally {
    source.on('error', () => undefined);
    source.destroy();
  }
}

/** Reads small content whole, failing as soon as it exceeds `limit` bytes. */
async function readContent(content: BlobContent, limit: number, where: string, digest: string): Promise<Buffer> {
  if ('bytes' in content) return content.bytes;
  if ('path' in content) {
    const info = await stat(content.path);
    if (info.size > limit) throw new ContentVerificationError(`${where}: ${content.path} has ${info.size} bytes, descriptor says ${limit}`, digest, 'size');
  }
  const pieces: Buffer[] = [];
  let total = 0;
  for await (const piece of piecesOf(content, FILE_READ_CHUNK_BYTES)) {
    total += piece.length;
    if (total > limit) throw new ContentVerificationError(`${where}: content is longer than the descriptor's ${limit} bytes`, digest, 'size');
    pieces.push(piece);
  }
  return Buffer.concat(pieces, total);
}

export class RegistryStore implements ImageStore {
  readonly reference: RegistryReference;
  readonly displayName: string;
  readonly registryRepository: string;
  private readonly client: RegistryClient;
  private readonly ownsClient: boolean;
  private readonly baseUrl: string;
  private readonly platform: Platform;
  private readonly monolithicMax: number;
  private readonly chunkBytes: number;
  private readonly fetchBlobMax: number;
  private readonly pullScopes: readonly string[];
  private readonly pushScopes: readonly string[];

  constructor(reference: RegistryReference | string, options: RegistryStoreOptions = {}) {
    this.reference = typeof reference === 'string' ? parseRegistryReference(reference) : reference;
    this.displayName = this.reference.toString();
    this.registryRepository = this.reference.name;
    this.ownsClient = options.client === undefined;
    this.client = options.client ?? new RegistryClient(options);
    const host = this.reference.apiHost;
    this.baseUrl = `${registryScheme(host, options.plainHttp)}://${host}/v2/${this.reference.repository}`;
    this.platform = options.platform ?? hostPlatform();
    this.monolithicMax = options.monolithicUploadMaxBytes ?? MONOLITHIC_UPLOAD_MAX_BYTES;
    this.chunkBytes = options.uploadChunkBytes ?? UPLOAD_CHUNK_BYTES;
    this.fetchBlobMax = options.maxFetchBlobBytes ?? MAX_FETCH_BLOB_BYTES;
    if (!(this.chunkBytes > 0) || !Number.isSafeInteger(this.chunkBytes)) throw new RangeError('uploadChunkBytes must be a positive integer');
    this.pullScopes = [`repository:${this.reference.repository}:pull`];
    this.pushScopes = [`repository:${this.reference.repository}:pull,push`];
  }

  /** Scheme and host the store talks to, e.g. "https://ghcr.io" or "http://127.0.0.1:5000". */
  get endpoint(): string {
    return new URL(this.baseUrl).origin;
  }

  private url(path: string): URL {
    return new URL(`${this.baseUrl}${path}`);
  }

  private async send(
    operation: string,
    method: HttpMethod,
    url: URL,
    extra: { headers?: Record<string, string>; body?: Buffer; scopes?: readonly string[]; followRedirects?: boolean } = {},
  ): Promise<HttpResponse> {
    return this.client.send({
      operation,
      method,
      url,
      headers: extra.headers ?? {},
      ...(extra.body !== undefined ? { body: extra.body } : {}),
      scopes: extra.scopes ?? this.pullScopes,
      followRedirects: extra.followRedirects ?? (method === 'GET' || method === 'HEAD'),
    });
  }

  /** GETs a manifest by tag or digest; verifies the bytes against `expected` or Docker-Content-Digest. */
  private async getManifest(
    target: string,
    expected: { digest: string; size?: number } | undefined,
    operation: string,
  ): Promise<{ bytes: Buffer; digest: string; contentType: string | undefined }> {
    const res = await this.send(operation, 'GET', this.url(`/manifests/${target}`), { headers: { accept: MANIFEST_MEDIA_TYPES.join(', ') } });
    if (res.status !== 200) throw await responseError(res, operation, 'GET');
    const declared = Number(getHeader(res, 'content-length') ?? NaN);
    if (declared > MAX_MANIFEST_BYTES) {
      abandonBody(res);
      throw new RegistryError({ operation, url: res.url, status: res.status, reason: `manifest of ${declared} bytes exceeds ${MAX_MANIFEST_BYTES}` });
    }
    let bytes: Buffer;
    try {
      bytes = await readBodyCapped(res.body, MAX_MANIFEST_BYTES, 'manifest');
    } catch (err) {
      if (err instanceof RangeError) throw new RegistryError({ operation, url: res.url, status: res.status, reason: err.message });
      throw err;
    }
    const contentType = bareMediaType(getHeader(res, 'content-type'));
    const where = `${operation} ${this.displayName}`;
    if (expected) {
      if (expected.size !== undefined) verifyContent({ mediaType: contentType ?? '', digest: expected.digest, size: expected.size }, bytes, where);
      else if (digestLike(expected.digest, bytes) !== expected.digest) {
        throw new ContentVerificationError(`${where}: manifest hashes to ${digestLike(expected.digest, bytes)}, want ${expected.digest}`, expected.digest, 'digest');
      }
      return { bytes, digest: expected.digest, contentType };
    }
    const digest = sha256Digest(bytes);
    const announced = getHeader(res, 'docker-content-digest');
    if (announced !== undefined) {
      let algorithmOk = true;
      try {
        parseDigest(announced);
      } catch {
        algorithmOk = false;
      }
      if (algorithmOk && digestLike(announced, bytes) !== announced) {
        throw new ContentVerificationError(`${where}: manifest hashes to ${digest}, registry says ${announced}`, announced, 'digest');
      }
    }
    return { bytes, digest, contentType };
  }

  async resolve(options: ResolveOptions = {}): Promise<ResolvedImage> {
    const ref = this.reference;
    const operation = 'resolve manifest';
    const target = ref.digest ?? ref.tag;
    if (target === undefined) throw new ImageReferenceError(`${this.displayName}: reference has neither tag nor digest`);
    const top = await this.getManifest(target, ref.digest !== undefined ? { digest: ref.digest } : undefined, operation);
    const descriptor: Descriptor = { mediaType: top.contentType ?? '', digest: top.digest, size: top.bytes.length };
    return resolveThroughIndexes(
      descriptor,
      top.bytes,
      options.platform ?? this.platform,
      async (child) => {
        checkDescriptor(child);
        return (await this.getManifest(child.digest, { digest: child.digest, size: child.size }, operation)).bytes;
      },
      this.displayName,
    );
  }

  private async getBlob(desc: Descriptor, operation: string, headers: Record<string, string> = {}): Promise<HttpResponse> {
    return this.send(operation, 'GET', this.url(`/blobs/${desc.digest}`), { headers });
  }

  async fetchBlob(desc: Descriptor): Promise<Buffer> {
    checkDescriptor(desc);
    const operation = 'fetch blob';
    if (desc.size > this.fetchBlobMax) throw new RangeError(`${this.displayName}: blob ${desc.digest} has ${desc.size} bytes, more than fetchBlob reads (${this.fetchBlobMax}); stream it with openBlob`);
    if (isManifestMediaType(desc.mediaType) && desc.size <= MAX_MANIFEST_BYTES) {
      return (await this.getManifest(desc.digest, { digest: desc.digest, size: desc.size }, operation)).bytes;
    }
    const res = await this.getBlob(desc, operation);
    if (res.status !== 200) throw await responseError(res, operation, 'GET');
    let bytes: Buffer;
    try {
      bytes = await readBodyCapped(res.body, desc.size, 'blob');
    } catch (err) {
      if (err instanceof RangeError) {
        throw new ContentVerificationError(`${operation} ${this.displayName}: ${desc.digest} is longer than its ${desc.size} bytes`, desc.digest, 'size');
      }
      throw err;
    }
    verifyContent(desc, bytes, `${operation} ${this.displayName}`);
    return bytes;
  }

  async openBlob(desc: Descriptor): Promise<Readable> {
    checkDescriptor(desc);
    const operation = 'open blob';
    const res = isManifestMediaType(desc.mediaType)
      ? await this.send(operation, 'GET', this.url(`/manifests/${desc.digest}`), { headers: { accept: MANIFEST_MEDIA_TYPES.join(', ') } })
      : await this.getBlob(desc, operation);
    if (res.status !== 200) throw await responseError(res, operation, 'GET');
    const verifier = new VerifyingStream(desc, `${operation} ${this.displayName}`);
    pipeline(res.body, verifier, () => undefined);
    return verifier;
  }

  async fetchRange(desc: Descriptor, start: number, end: number): Promise<Buffer> {
    checkDescriptor(desc);
    checkRange(desc, start, end);
    const length = end - start;
    if (length === 0) return Buffer.alloc(0);
    const operation = `fetch range ${start}-${end - 1}`;
    const where = `${operation} of ${desc.digest} from ${this.displayName}`;
    const res = await this.getBlob(desc, operation, { range: `bytes=${start}-${end - 1}` });
    if (res.status === 416) {
      abandonBody(res);
      throw new RegistryError({ operation, url: res.url, status: 416, reason: `range not satisfiable (Content-Range ${getHeader(res, 'content-range') ?? 'absent'})` });
    }
    if (res.status === 206) {
      const contentRange = getHeader(res, 'content-range') ?? '';
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(contentRange.trim());
      if (!m || Number(m[1]) !== start || Number(m[2]) !== end - 1 || (m[3] !== '*' && Number(m[3]) !== desc.size)) {
        abandonBody(res);
        throw new ContentVerificationError(`${where}: registry answered Content-Range ${JSON.stringify(contentRange)}`, desc.digest, 'range');
      }
      let bytes: Buffer;
      try {
        bytes = await readBodyCapped(res.body, length, 'range');
      } catch (err) {
        if (err instanceof RangeError) throw new ContentVerificationError(`${where}: answer is longer than ${length} bytes`, desc.digest, 'range');
        throw err;
      }
      if (bytes.length !== length) throw new ContentVerificationError(`${where}: got ${bytes.length} of ${length} bytes`, desc.digest, 'range');
      return bytes;
    }
    if (res.status === 200) {
      // The registry ignored Range and sends the whole blob: keep [start, end) and cut the transfer there.
      const declared = getHeader(res, 'content-length');
      if (declared !== undefined && Number(declared) !== desc.size) {
        abandonBody(res);
        throw new ContentVerificationError(`${where}: whole-blob answer has ${declared} bytes, descriptor says ${desc.size}`, desc.digest, 'size');
      }
      res.body.on('error', () => undefined);
      const out = Buffer.allocUnsafe(length);
      let position = 0;
      let filled = 0;
      for await (const chunk of res.body) {
        const data = chunk as Buffer;
        const chunkStart = position;
        position += data.length;
        if (position <= start) continue;
        const from = Math.max(0, start - chunkStart);
        const take = Math.min(data.length - from, length - filled);
        data.copy(out, filled, from, from + take);
        filled += take;
        if (filled === length) break;
      }
      cutBody(res.body);
      if (filled !== length) throw new ContentVerificationError(`${where}: blob ended after ${position} bytes`, desc.digest, 'range');
      return out;
    }
    throw await responseError(res, operation, 'GET');
  }

  private async blobExists(desc: Descriptor, scopes: readonly string[]): Promise<boolean> {
    const operation = 'check blob';
    const path = isManifestMediaType(desc.mediaType) ? `/manifests/${desc.digest}` : `/blobs/${desc.digest}`;
    const headers: Record<string, string> = isManifestMediaType(desc.mediaType) ? { accept: MANIFEST_MEDIA_TYPES.join(', ') } : {};
    const res = await this.send(operation, 'HEAD', this.url(path), { headers, scopes });
    await discardBody(res);
    if (res.status === 404) return false;
    if (res.status !== 200) throw await responseError(res, operation, 'HEAD');
    const declared = getHeader(res, 'content-length');
    if (declared !== undefined && Number(declared) !== desc.size) {
      throw new ContentVerificationError(`${operation} ${this.displayName}: ${desc.digest} exists with ${declared} bytes, descriptor says ${desc.size}`, desc.digest, 'size');
    }
    return true;
  }

  async hasBlob(desc: Descriptor): Promise<boolean> {
    checkDescriptor(desc);
    return this.blobExists(desc, this.pullScopes);
  }

  /**
   * Tries a cross-repository mount from `from` ("host/repository", or a repository on this registry):
   * 'mounted', or the upload URL the registry started instead. Sources on other registries are skipped.
   */
  private async tryMount(desc: Descriptor, from: string): Promise<{ mounted: true } | { mounted: false; location: URL | undefined }> {
    let source: RegistryReference;
    const first = from.split('/')[0]!;
    const hasHost = from.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost');
    try {
      source = parseRegistryReference(hasHost ? from : `${this.reference.registry}/${from}`);
    } catch (err) {
      throw new ImageReferenceError(`crossMountFrom: ${(err as Error).message}`);
    }
    if (source.registry !== this.reference.registry || source.repository === this.reference.repository) return { mounted: false, location: undefined };
    const operation = 'mount blob';
    let url = appendQuery(this.url('/blobs/uploads/'), 'mount', desc.digest);
    url = appendQuery(url, 'from', source.repository);
    const res = await this.send(operation, 'POST', url, {
      body: Buffer.alloc(0),
      scopes: [...this.pushScopes, `repository:${source.repository}:pull`],
    });
    if (res.status === 201) {
      await discardBody(res);
      this.checkAnnouncedDigest(res, desc.digest, operation);
      return { mounted: true };
    }
    if (res.status === 202) {
      await discardBody(res);
      return { mounted: false, location: this.uploadLocation(res, operation) };
    }
    throw await responseError(res, operation, 'POST');
  }

  private uploadLocation(res: HttpResponse, operation: string): URL {
    const location = getHeader(res, 'location');
    if (!location) throw new RegistryError({ operation, url: res.url, status: res.status, reason: 'upload answer without a Location' });
    return new URL(location, res.url);
  }

  private checkAnnouncedDigest(res: HttpResponse, digest: string, operation: string): void {
    const announced = getHeader(res, 'docker-content-digest');
    if (announced !== undefined && announced !== digest) {
      throw new RegistryError({ operation, url: res.url, status: res.status, reason: `registry stored ${announced}, expected ${digest}` });
    }
  }

  private async startUpload(): Promise<URL> {
    const operation = 'start upload';
    const res = await this.send(operation, 'POST', this.url('/blobs/uploads/'), { body: Buffer.alloc(0), scopes: this.pushScopes });
    if (res.status !== 202) throw await responseError(res, operation, 'POST');
    await discardBody(res);
    return this.uploadLocation(res, operation);
  }

  private async finishUpload(location: URL, desc: Descriptor, body: Buffer): Promise<void> {
    const operation = 'finish upload';
    const res = await this.send(operation, 'PUT', appendQuery(location, 'digest', desc.digest), {
      headers: { 'content-type': 'application/octet-stream' },
      body,
      scopes: this.pushScopes,
      followRedirects: false,
    });
    if (res.status !== 201) throw await responseError(res, operation, 'PUT');
    await discardBody(res);
    this.checkAnnouncedDigest(res, desc.digest, operation);
  }

  /** PATCHes the content in chunks, keeping `upload.location` current; checks size and digest at the end. */
  private async chunkedUpload(upload: { location: URL }, desc: Descriptor, content: BlobContent): Promise<void> {
    const operation = 'upload chunk';
    const where = `push ${desc.digest} to ${this.displayName}`;
    const hash = newHash(desc.digest);
    let offset = 0;
    for await (const piece of piecesOf(content, this.chunkBytes)) {
      if (offset + piece.length > desc.size) throw new ContentVerificationError(`${where}: content is longer than the descriptor's ${desc.size} bytes`, desc.digest, 'size');
      hash.update(piece);
      const res = await this.send(operation, 'PATCH', upload.location, {
        headers: { 'content-type': 'application/octet-stream', 'content-range': `${offset}-${offset + piece.length - 1}` },
        body: piece,
        scopes: this.pushScopes,
        followRedirects: false,
      });
      if (res.status !== 202) throw await responseError(res, operation, 'PATCH');
      await discardBody(res);
      upload.location = this.uploadLocation(res, operation);
      offset += piece.length;
    }
    if (offset !== desc.size) throw new ContentVerificationError(`${where}: content has ${offset} bytes, descriptor says ${desc.size}`, desc.digest, 'size');
    const actual = `${parseDigest(desc.digest).algorithm}:${hash.digest('hex')}`;
    if (actual !== desc.digest) throw new ContentVerificationError(`${where}: content hashes to ${actual}`, desc.digest, 'digest');
  }

  private async cancelUpload(location: URL): Promise<void> {
    try {
      const res = await this.send('cancel upload', 'DELETE', location, { scopes: this.pushScopes, followRedirects: false });
      await discardBody(res);
    } catch {
      // Best effort: the registry expires abandoned uploads on its own.
    }
  }

  /**
   * Uploads a blob (see ImageStore.pushBlob). A descriptor with a manifest or index media type is stored
   * as a manifest by digest instead, since registries keep manifests apart from blobs; this is how the
   * children of an index get pushed before the index itself.
   */
  async pushBlob(desc: Descriptor, content: BlobContent, options: { crossMountFrom?: string } = {}): Promise<void> {
    checkDescriptor(desc);
    if (await this.blobExists(desc, this.pushScopes)) return;
    if (isManifestMediaType(desc.mediaType)) {
      const where = `push manifest ${desc.digest} to ${this.displayName}`;
      if (desc.size > MAX_MANIFEST_BYTES) throw new RangeError(`${where}: ${desc.size} bytes exceeds ${MAX_MANIFEST_BYTES}`);
      const bytes = await readContent(content, desc.size, where, desc.digest);
      verifyContent(desc, bytes, where);
      await this.putManifest(desc.mediaType, bytes, desc.digest, desc.digest);
      return;
    }
    let location: URL | undefined;
    if (options.crossMountFrom !== undefined) {
      const mount = await this.tryMount(desc, options.crossMountFrom);
      if (mount.mounted) return;
      location = mount.location;
    }
    const upload = { location: location ?? (await this.startUpload()) };
    try {
      if (desc.size <= this.monolithicMax) {
        const where = `push ${desc.digest} to ${this.displayName}`;
        const bytes = await readContent(content, desc.size, where, desc.digest);
        verifyContent(desc, bytes, where);
        await this.finishUpload(upload.location, desc, bytes);
      } else {
        await this.chunkedUpload(upload, desc, content);
        await this.finishUpload(upload.location, desc, Buffer.alloc(0));
      }
    } catch (err) {
      await this.cancelUpload(upload.location);
      throw err;
    }
  }

  async pushManifest(mediaType: string, bytes: Buffer): Promise<Descriptor> {
    if (bytes.length > MAX_MANIFEST_BYTES) throw new RangeError(`push manifest ${this.displayName}: manifest of ${bytes.length} bytes exceeds ${MAX_MANIFEST_BYTES}`);
    const digest = sha256Digest(bytes);
    await this.putManifest(mediaType, bytes, this.reference.tag ?? digest, digest);
    return { mediaType, digest, size: bytes.length };
  }

  private async putManifest(mediaType: string, bytes: Buffer, target: string, digest: string): Promise<void> {
    const operation = 'push manifest';
    const res = await this.send(operation, 'PUT', this.url(`/manifests/${target}`), {
      headers: { 'content-type': mediaType },
      body: bytes,
      scopes: this.pushScopes,
      followRedirects: false,
    });
    if (res.status !== 201) throw await responseError(res, operation, 'PUT');
    await discardBody(res);
    this.checkAnnouncedDigest(res, digest, operation);
  }

  async close(): Promise<void> {
    if (this.ownsClient) await this.client.close();
  }
}
