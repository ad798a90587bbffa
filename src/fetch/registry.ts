// ImageStore for one repository of an OCI distribution registry: manifest resolution (through indexes by
// platform), verified blob reads (whole, streamed, byte ranges; abortable; a cut body retried within the
// client's retry budget; a blob's redirect target remembered for a while and reused for its later reads),
// and pushes (existence check, cross-repository mount, monolithic or chunked upload with the digest checked
// before the final PUT, manifests by tag). Requests go to the endpoints of a containerd-style hosts.toml in
// order (mirrors, then the server; by capability: "resolve" for manifests, "pull" for blobs, the first
// "push" endpoint for pushes), falling back from a mirror to the next endpoint on network errors, 5xx, 404
// and the like.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { pipeline, Readable } from 'node:stream';
import type { BlobContent, ByteRange, ImageStore, ResolveOptions } from '../oci/store.js';
import { MANIFEST_MEDIA_TYPES, type Descriptor, type Platform, type ResolvedImage } from '../oci/types.js';
import { parseDigest, sha256Digest } from '../util/digest.js';
import { ContentVerificationError, ImageReferenceError, RegistryError } from './errors.js';
import {
  discardBody,
  abandonBody,
  cutBody,
  getHeader,
  readBodyCapped,
  readBodyExact,
  RegistryClient,
  responseError,
  isRetryableNetworkError,
  type HttpMethod,
  type HttpResponse,
  type RegistryClientOptions,
  type RegistryClientStats,
  type RetryBudget,
  type EndpointSettings,
} from './http.js';
import { loadRegistryEndpoints, readEndpointTls, type HostCapability, type RegistryEndpoint } from './hosts.js';
import { bareMediaType, isManifestMediaType, MAX_MANIFEST_BYTES, resolveThroughIndexes } from './manifest.js';
import { hostPlatform } from './platform.js';
import { parseRegistryReference, type RegistryReference } from './reference.js';
import { checkDescriptor, checkRange, digestLike, newHash, verifyContent, VerifyingStream } from './verify.js';
import { byterangesBoundary, MultipartError, parseByteranges, parseContentRange, sliceRanges, type BytePart } from './multipart.js';

/** Blobs up to this size are uploaded with one PUT; larger ones in PATCH chunks. */
export const MONOLITHIC_UPLOAD_MAX_BYTES = 16 * 1024 * 1024;
/** Size of each PATCH of a chunked upload. */
export const UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024;
/** Largest blob fetchBlob reads into memory; larger ones must be streamed with openBlob. */
export const MAX_FETCH_BLOB_BYTES = 256 * 1024 * 1024;
/** Read size when streaming a file into an upload. */
const FILE_READ_CHUNK_BYTES = 1024 * 1024;
/** How long a blob's redirect target (e.g. a signed storage URL) is reused before asking the registry again. */
export const REDIRECT_TARGET_TTL_MS = 5 * 60_000;
/** Blobs whose redirect target is remembered at most; the oldest is forgotten first. */
export const MAX_REDIRECT_TARGETS = 1024;
/** Statuses of a remembered redirect target that make the store ask the registry again (any non-2xx does). */
const REDIRECT_TARGET_OK: ReadonlySet<number> = new Set([200, 206]);
/** Room for one part's delimiter and headers in a multipart/byteranges answer (beyond its data). */
const MULTIPART_OVERHEAD_PER_PART_BYTES = 4096 + 128;
/** Room for a multipart answer's preamble and closing delimiter. */
const MULTIPART_OVERHEAD_BYTES = 4096;

/** Per-request options of blob reads. */
export interface BlobReadOptions {
  /** Aborts the read: its connection is closed at once and the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

interface BlobRequestContext {
  signal?: AbortSignal | undefined;
  budget?: RetryBudget;
}

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
  /** Override of REDIRECT_TARGET_TTL_MS (0 turns remembering off). */
  redirectTargetTtlMs?: number;
  /**
   * containerd-style hosts directory (`<dir>/<registry>/hosts.toml`, `<dir>/_default/hosts.toml`) giving
   * mirrors and per-endpoint TLS; a missing directory or file means "the registry only". Ignored when
   * `endpoints` is given.
   */
  hostsDir?: string;
  /** Endpoints to use in order (e.g. from loadRegistryEndpoints); default: from hostsDir, else the registry. */
  endpoints?: readonly RegistryEndpoint[];
}

/** Statuses of a mirror (any endpoint but the last) after which the next endpoint is tried. */
const MIRROR_FALLBACK_STATUSES: ReadonlySet<number> = new Set([401, 403, 404, 408, 429]);

/** An endpoint with its TLS material read. */
interface ActiveEndpoint {
  config: RegistryEndpoint;
  settings: EndpointSettings;
  /** Append `?ns=<registry>` (a mirror on another host). */
  ns: boolean;
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
  private readonly endpoints: readonly ActiveEndpoint[];
  private readonly platform: Platform;
  private readonly monolithicMax: number;
  private readonly chunkBytes: number;
  private readonly fetchBlobMax: number;
  private readonly pullScopes: readonly string[];
  private readonly pushScopes: readonly string[];
  private readonly redirectTtlMs: number;
  private readonly now: () => number;
  /** Redirect target per blob digest, with the time it stops being used. */
  private readonly redirectTargets = new Map<string, { url: URL; expires: number }>();
  /** Set once a registry endpoint refused a multi-range request; later ones go one range at a time. */
  private multiRangeRefused = false;

  constructor(reference: RegistryReference | string, options: RegistryStoreOptions = {}) {
    this.reference = typeof reference === 'string' ? parseRegistryReference(reference) : reference;
    this.displayName = this.reference.toString();
    this.registryRepository = this.reference.name;
    this.ownsClient = options.client === undefined;
    this.client = options.client ?? new RegistryClient(options);
    const host = this.reference.apiHost;
    const configs =
      options.endpoints ??
      loadRegistryEndpoints(options.hostsDir, this.reference.registry, {
        apiHost: host,
        ...(options.plainHttp !== undefined ? { plainHttp: options.plainHttp } : {}),
      });
    if (configs.length === 0) throw new RangeError(`${this.displayName}: no registry endpoints`);
    this.endpoints = configs.map((config) => {
      const tls = readEndpointTls(config);
      const endpointHost = new URL(config.origin).host;
      return {
        config,
        settings: { ...(tls !== undefined ? { tls } : {}), headers: config.headers },
        ns: config.mirror && endpointHost !== this.reference.registry && endpointHost !== host,
      };
    });
    const server = this.endpoints[this.endpoints.length - 1]!.config;
    this.baseUrl = `${server.origin}${server.apiRoot}/${this.reference.repository}`;
    this.platform = options.platform ?? hostPlatform();
    this.monolithicMax = options.monolithicUploadMaxBytes ?? MONOLITHIC_UPLOAD_MAX_BYTES;
    this.chunkBytes = options.uploadChunkBytes ?? UPLOAD_CHUNK_BYTES;
    this.fetchBlobMax = options.maxFetchBlobBytes ?? MAX_FETCH_BLOB_BYTES;
    if (!(this.chunkBytes > 0) || !Number.isSafeInteger(this.chunkBytes)) throw new RangeError('uploadChunkBytes must be a positive integer');
    this.pullScopes = [`repository:${this.reference.repository}:pull`];
    this.pushScopes = [`repository:${this.reference.repository}:pull,push`];
    this.redirectTtlMs = options.redirectTargetTtlMs ?? REDIRECT_TARGET_TTL_MS;
    this.now = options.now ?? Date.now;
  }

  /** Counters of the store's client (shared with other stores when the client is). */
  get stats(): RegistryClientStats {
    return this.client.stats;
  }

  /** The client this store talks through (for its stats and rangeIgnoredHosts). */
  get registryClient(): RegistryClient {
    return this.client;
  }

  /** Scheme and host the store talks to, e.g. "https://ghcr.io" or "http://127.0.0.1:5000". */
  get endpoint(): string {
    return new URL(this.baseUrl).origin;
  }

  private url(path: string): URL {
    return new URL(`${this.baseUrl}${path}`);
  }

  /** The endpoints the store uses, in order (mirrors first, the server last). */
  get registryEndpoints(): readonly RegistryEndpoint[] {
    return this.endpoints.map((e) => e.config);
  }

  private endpointUrl(endpoint: ActiveEndpoint, path: string): URL {
    const url = new URL(`${endpoint.config.origin}${endpoint.config.apiRoot}/${this.reference.repository}${path}`);
    return endpoint.ns ? appendQuery(url, 'ns', this.reference.registry) : url;
  }

  private endpointsFor(capability: HostCapability, operation: string): ActiveEndpoint[] {
    const usable = this.endpoints.filter((e) => e.config.capabilities.has(capability));
    if (usable.length === 0) {
      throw new RegistryError({ operation, url: this.url(''), reason: `no endpoint of ${this.reference.registry} has the "${capability}" capability (hosts.toml)` });
    }
    return usable;
  }

  /** The endpoint pushes go to: the first with the "push" capability (no fallback, as containerd). */
  private pushEndpoint(operation: string): ActiveEndpoint {
    return this.endpointsFor('push', operation)[0]!;
  }

  /** Settings of the push endpoint for a URL it handed out (upload locations), if on its origin. */
  private pushSettingsFor(url: URL, operation: string): EndpointSettings | undefined {
    const endpoint = this.pushEndpoint(operation);
    return url.origin === endpoint.config.origin ? endpoint.settings : undefined;
  }

  /**
   * Sends a request for `path` (below /v2/<repository>) to the endpoints with `capability` in order. Every
   * endpoint but the last is tried without retries and given up for the next one on a network error (or any
   * RegistryError, auth included), a 5xx, or 401/403/404/408/429; the last endpoint's answer or error is the
   * result. Returns the answer and the URL asked.
   */
  private async sendVia(
    capability: HostCapability,
    operation: string,
    method: HttpMethod,
    path: string,
    extra: Parameters<RegistryStore['send']>[3] = {},
  ): Promise<{ res: HttpResponse; url: URL }> {
    const endpoints = this.endpointsFor(capability, operation);
    for (let i = 0; ; i++) {
      const endpoint = endpoints[i]!;
      const last = i === endpoints.length - 1;
      const url = this.endpointUrl(endpoint, path);
      const request = { ...extra, endpoint: endpoint.settings, ...(last ? {} : { retry: false }) };
      let res: HttpResponse;
      try {
        res = await this.send(operation, method, url, request);
      } catch (err) {
        if (extra.signal?.aborted) throw extra.signal.reason;
        if (last || !(err instanceof RegistryError)) throw err;
        this.client.noteEndpointFallback();
        continue;
      }
      if (last || !(res.status >= 500 || MIRROR_FALLBACK_STATUSES.has(res.status))) return { res, url };
      await discardBody(res);
      this.client.noteEndpointFallback();
    }
  }

  private async send(
    operation: string,
    method: HttpMethod,
    url: URL,
    extra: {
      headers?: Record<string, string>;
      body?: Buffer;
      scopes?: readonly string[];
      followRedirects?: boolean;
      signal?: AbortSignal | undefined;
      retryBudget?: RetryBudget | undefined;
      auth?: boolean;
      retry?: boolean;
      endpoint?: EndpointSettings | undefined;
    } = {},
  ): Promise<HttpResponse> {
    return this.client.send({
      operation,
      method,
      url,
      headers: extra.headers ?? {},
      ...(extra.body !== undefined ? { body: extra.body } : {}),
      ...(extra.signal !== undefined ? { signal: extra.signal } : {}),
      ...(extra.retryBudget !== undefined ? { retryBudget: extra.retryBudget } : {}),
      ...(extra.auth !== undefined ? { auth: extra.auth } : {}),
      ...(extra.retry !== undefined ? { retry: extra.retry } : {}),
      ...(extra.endpoint !== undefined ? { endpoint: extra.endpoint } : {}),
      scopes: extra.scopes ?? this.pullScopes,
      followRedirects: extra.followRedirects ?? (method === 'GET' || method === 'HEAD'),
    });
  }

  /** GETs a manifest by tag or digest; verifies the bytes against `expected` or Docker-Content-Digest. */
  private async getManifest(
    target: string,
    expected: { digest: string; size?: number } | undefined,
    operation: string,
    capability: HostCapability,
  ): Promise<{ bytes: Buffer; digest: string; contentType: string | undefined }> {
    const { res } = await this.sendVia(capability, operation, 'GET', `/manifests/${target}`, { headers: { accept: MANIFEST_MEDIA_TYPES.join(', ') } });
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
    const top = await this.getManifest(target, ref.digest !== undefined ? { digest: ref.digest } : undefined, operation, 'resolve');
    const descriptor: Descriptor = { mediaType: top.contentType ?? '', digest: top.digest, size: top.bytes.length };
    return resolveThroughIndexes(
      descriptor,
      top.bytes,
      options.platform ?? this.platform,
      async (child) => {
        checkDescriptor(child);
        return (await this.getManifest(child.digest, { digest: child.digest, size: child.size }, operation, 'resolve')).bytes;
      },
      this.displayName,
    );
  }

  private dropRedirectTarget(digest: string, url: URL, operation: string, reason: string): void {
    this.redirectTargets.delete(digest);
    this.client.noteRedirectTargetDropped(url, operation, reason);
  }

  /**
   * GETs a blob: straight from its remembered redirect target while that is fresh and answers 2xx (without
   * registry auth, without retries: any failure drops it), else through the registry, remembering where a
   * redirect to another origin led.
   */
  private async getBlob(desc: Descriptor, operation: string, headers: Record<string, string> = {}, ctx: BlobRequestContext = {}): Promise<HttpResponse> {
    const cached = this.redirectTargets.get(desc.digest);
    if (cached !== undefined && cached.expires <= this.now()) this.dropRedirectTarget(desc.digest, cached.url, operation, 'expired');
    else if (cached !== undefined) {
      let res: HttpResponse | undefined;
      try {
        res = await this.send(operation, 'GET', cached.url, { headers, signal: ctx.signal, auth: false, retry: false, followRedirects: true });
      } catch (err) {
        if (ctx.signal?.aborted) throw ctx.signal.reason;
        this.dropRedirectTarget(desc.digest, cached.url, operation, (err as Error).message);
      }
      if (res !== undefined) {
        if (REDIRECT_TARGET_OK.has(res.status)) {
          this.client.noteRedirectTargetHit();
          return res;
        }
        await discardBody(res);
        this.dropRedirectTarget(desc.digest, cached.url, operation, `HTTP ${res.status}`);
      }
    }
    const { res, url } = await this.sendVia('pull', operation, 'GET', `/blobs/${desc.digest}`, { headers, signal: ctx.signal, retryBudget: ctx.budget });
    if (this.redirectTtlMs > 0 && REDIRECT_TARGET_OK.has(res.status) && res.url.origin !== url.origin) {
      this.redirectTargets.delete(desc.digest);
      this.redirectTargets.set(desc.digest, { url: res.url, expires: this.now() + this.redirectTtlMs });
      while (this.redirectTargets.size > MAX_REDIRECT_TARGETS) {
        const oldest = this.redirectTargets.keys().next().value;
        if (oldest === undefined) break;
        this.redirectTargets.delete(oldest);
      }
    }
    return res;
  }

  /**
   * Runs a blob read; when its body is cut (a connection error after the answer began) it is tried again
   * within the client's retry budget (shared with the requests' own retries).
   */
  private async withBodyRetries<T>(operation: string, signal: AbortSignal | undefined, read: (budget: RetryBudget) => Promise<T>): Promise<T> {
    signal?.throwIfAborted();
    const budget = this.client.newRetryBudget();
    for (;;) {
      try {
        return await read(budget);
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (!isRetryableNetworkError(err)) throw err;
        const url = err instanceof RegistryError ? err.url : this.url('');
        if (!(await this.client.pauseBeforeRetry(budget, { operation, url, reason: (err as Error).message }, signal))) throw err;
      }
    }
  }

  /**
   * Reads an answer body up to `max` bytes (`exact`: `max` is the length expected, read into one buffer of that
   * size); a cut connection becomes a (retryable) RegistryError.
   */
  private async readBlobBody(res: HttpResponse, max: number, what: string, operation: string, signal: AbortSignal | undefined, exact = false): Promise<Buffer> {
    try {
      return await (exact ? readBodyExact(res.body, max, what) : readBodyCapped(res.body, max, what));
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (err instanceof RangeError) throw err;
      throw this.client.bodyError(err, operation, res.url);
    }
  }

  async fetchBlob(desc: Descriptor, options: BlobReadOptions = {}): Promise<Buffer> {
    checkDescriptor(desc);
    const signal = options.signal;
    const operation = 'fetch blob';
    if (desc.size > this.fetchBlobMax) throw new RangeError(`${this.displayName}: blob ${desc.digest} has ${desc.size} bytes, more than fetchBlob reads (${this.fetchBlobMax}); stream it with openBlob`);
    if (isManifestMediaType(desc.mediaType) && desc.size <= MAX_MANIFEST_BYTES) {
      return (await this.getManifest(desc.digest, { digest: desc.digest, size: desc.size }, operation, 'pull')).bytes;
    }
    return this.withBodyRetries(operation, signal, async (budget) => {
      const res = await this.getBlob(desc, operation, {}, { signal, budget });
      if (res.status !== 200) throw await responseError(res, operation, 'GET');
      let bytes: Buffer;
      try {
        bytes = await this.readBlobBody(res, desc.size, 'blob', operation, signal, true);
      } catch (err) {
        if (err instanceof RangeError) {
          throw new ContentVerificationError(`${operation} ${this.displayName}: ${desc.digest} is longer than its ${desc.size} bytes`, desc.digest, 'size');
        }
        throw err;
      }
      verifyContent(desc, bytes, `${operation} ${this.displayName}`);
      return bytes;
    });
  }

  /**
   * Streams a whole blob, verified as it goes. A body cut mid-way (dropped connection) is resumed with a
   * Range request from the first byte not yet received, within the client's retry budget; an aborted
   * `signal` destroys the stream with the signal's reason.
   */
  async openBlob(desc: Descriptor, options: BlobReadOptions = {}): Promise<Readable> {
    checkDescriptor(desc);
    const operation = 'open blob';
    const signal = options.signal;
    signal?.throwIfAborted();
    const verifier = new VerifyingStream(desc, `${operation} ${this.displayName}`);
    if (isManifestMediaType(desc.mediaType)) {
      const res = (await this.sendVia('pull', operation, 'GET', `/manifests/${desc.digest}`, { headers: { accept: MANIFEST_MEDIA_TYPES.join(', ') }, signal })).res;
      if (res.status !== 200) throw await responseError(res, operation, 'GET');
      pipeline(res.body, verifier, () => undefined);
      return verifier;
    }
    const budget = this.client.newRetryBudget();
    const first = await this.getBlob(desc, operation, {}, { signal, budget });
    if (first.status !== 200) throw await responseError(first, operation, 'GET');
    pipeline(Readable.from(this.resumableBody(desc, first, operation, budget, signal)), verifier, () => undefined);
    return verifier;
  }

  /** The bytes of a whole-blob answer, resuming with `Range: bytes=N-` after a cut connection. */
  private async *resumableBody(desc: Descriptor, first: HttpResponse, operation: string, budget: RetryBudget, signal: AbortSignal | undefined): AsyncGenerator<Buffer> {
    let res = first;
    let received = 0;
    for (;;) {
      try {
        for await (const chunk of res.body) {
          const data = chunk as Buffer;
          received += data.length;
          yield data;
        }
        return;
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        const cut = this.client.bodyError(err, operation, res.url);
        if (!isRetryableNetworkError(cut) || received >= desc.size) throw cut;
        if (!(await this.client.pauseBeforeRetry(budget, { operation, url: cut.url, reason: cut.message }, signal))) throw cut;
      } finally {
        cutBody(res.body);
      }
      res = await this.getBlob(desc, operation, { range: `bytes=${received}-` }, { signal, budget });
      if (res.status !== 206) {
        abandonBody(res);
        throw new RegistryError({ operation, url: res.url, status: res.status, reason: `resuming at byte ${received} got HTTP ${res.status}, not 206` });
      }
      const range = parseContentRange(getHeader(res, 'content-range') ?? '');
      if (!range || range.start !== received || range.end !== desc.size) {
        abandonBody(res);
        throw new ContentVerificationError(`${operation} ${this.displayName}: resuming ${desc.digest} at byte ${received} got Content-Range ${JSON.stringify(getHeader(res, 'content-range') ?? '')}`, desc.digest, 'range');
      }
    }
  }

  async fetchRange(desc: Descriptor, start: number, end: number, options: BlobReadOptions = {}): Promise<Buffer> {
    checkDescriptor(desc);
    checkRange(desc, start, end);
    const length = end - start;
    if (length === 0) return Buffer.alloc(0);
    const operation = `fetch range ${start}-${end - 1}`;
    const signal = options.signal;
    return this.withBodyRetries(operation, signal, (budget) => this.fetchRangeOnce(desc, start, end, operation, signal, budget));
  }

  private async fetchRangeOnce(desc: Descriptor, start: number, end: number, operation: string, signal: AbortSignal | undefined, budget: RetryBudget): Promise<Buffer> {
    const length = end - start;
    const where = `${operation} of ${desc.digest} from ${this.displayName}`;
    const res = await this.getBlob(desc, operation, { range: `bytes=${start}-${end - 1}` }, { signal, budget });
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
        bytes = await this.readBlobBody(res, length, 'range', operation, signal, true);
      } catch (err) {
        if (err instanceof RangeError) throw new ContentVerificationError(`${where}: answer is longer than ${length} bytes`, desc.digest, 'range');
        throw err;
      }
      if (bytes.length !== length) throw new ContentVerificationError(`${where}: got ${bytes.length} of ${length} bytes`, desc.digest, 'range');
      return bytes;
    }
    if (res.status === 200) {
      const [bytes] = await this.readIgnoredRange(res, desc, [{ start, end }], operation, where, signal);
      return bytes!;
    }
    throw await responseError(res, operation, 'GET');
  }

  /**
   * Reads an answer to a range request that ignored Range (200, the whole blob): keeps each wanted range
   * and cuts the transfer after the last one, then remembers that the host ignores Range.
   */
  private async readIgnoredRange(
    res: HttpResponse,
    desc: Descriptor,
    ranges: readonly ByteRange[],
    operation: string,
    where: string,
    signal: AbortSignal | undefined,
  ): Promise<Buffer[]> {
    const declared = getHeader(res, 'content-length');
    if (declared !== undefined && Number(declared) !== desc.size) {
      abandonBody(res);
      throw new ContentVerificationError(`${where}: whole-blob answer has ${declared} bytes, descriptor says ${desc.size}`, desc.digest, 'size');
    }
    res.body.on('error', () => undefined);
    const outs = ranges.map(({ start, end }) => Buffer.allocUnsafe(end - start));
    const last = ranges[ranges.length - 1]!.end;
    let position = 0;
    try {
      for await (const chunk of res.body) {
        const data = chunk as Buffer;
        const chunkStart = position;
        position += data.length;
        ranges.forEach(({ start, end }, k) => {
          const from = Math.max(start, chunkStart);
          const to = Math.min(end, position);
          if (from < to) data.copy(outs[k]!, from - start, from - chunkStart, to - chunkStart);
        });
        if (position >= last) break;
      }
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      throw this.client.bodyError(err, operation, res.url);
    } finally {
      cutBody(res.body);
      this.client.noteRangeIgnored(res.url, operation, position);
    }
    if (position < last) throw new ContentVerificationError(`${where}: blob ended after ${position} bytes`, desc.digest, 'range');
    return outs;
  }

  /** Whether fetchRanges asks for several ranges in one request (false once a registry refused it). */
  get multiRangeEnabled(): boolean {
    return !this.multiRangeRefused;
  }

  /**
   * Reads several sorted, disjoint ranges of a blob in one multi-range request (`multipart/byteranges`).
   * A registry that refuses it (400/416) is remembered and asked again one range at a time; one that
   * ignores Range is read up to the last range and cut; one that merges ranges into one part is accepted.
   */
  async fetchRanges(desc: Descriptor, ranges: readonly ByteRange[], options: BlobReadOptions = {}): Promise<Buffer[]> {
    checkDescriptor(desc);
    for (const [k, { start, end }] of ranges.entries()) {
      checkRange(desc, start, end);
      if (end <= start) throw new RangeError(`range ${k} [${start}, ${end}) of ${desc.digest} is empty`);
      if (k > 0 && start < ranges[k - 1]!.end) throw new RangeError(`ranges of ${desc.digest} must be sorted and disjoint (range ${k} starts at ${start})`);
    }
    const signal = options.signal;
    if (ranges.length <= 1 || this.multiRangeRefused) {
      return Promise.all(ranges.map(({ start, end }) => this.fetchRange(desc, start, end, options)));
    }
    const operation = `fetch ${ranges.length} ranges ${ranges[0]!.start}-${ranges[ranges.length - 1]!.end - 1}`;
    const answer = await this.withBodyRetries(operation, signal, (budget) => this.fetchRangesOnce(desc, ranges, operation, signal, budget));
    if (answer !== 'refused') return answer;
    return Promise.all(ranges.map(({ start, end }) => this.fetchRange(desc, start, end, options)));
  }

  private async fetchRangesOnce(
    desc: Descriptor,
    ranges: readonly ByteRange[],
    operation: string,
    signal: AbortSignal | undefined,
    budget: RetryBudget,
  ): Promise<Buffer[] | 'refused'> {
    const where = `${operation} of ${desc.digest} from ${this.displayName}`;
    const header = `bytes=${ranges.map(({ start, end }) => `${start}-${end - 1}`).join(',')}`;
    const res = await this.getBlob(desc, operation, { range: header }, { signal, budget });
    if (res.status === 400 || res.status === 416) {
      abandonBody(res);
      this.multiRangeRefused = true;
      this.client.noteMultiRangeRefused(res.url, operation, res.status);
      return 'refused';
    }
    if (res.status === 200) return this.readIgnoredRange(res, desc, ranges, operation, where, signal);
    if (res.status !== 206) throw await responseError(res, operation, 'GET');
    const span = ranges[ranges.length - 1]!.end - ranges[0]!.start;
    const max = span + ranges.length * MULTIPART_OVERHEAD_PER_PART_BYTES + MULTIPART_OVERHEAD_BYTES;
    let body: Buffer;
    try {
      body = await this.readBlobBody(res, max, 'multi-range answer', operation, signal);
    } catch (err) {
      if (err instanceof RangeError) throw new ContentVerificationError(`${where}: answer is longer than ${max} bytes`, desc.digest, 'range');
      throw err;
    }
    let parts: BytePart[];
    try {
      const boundary = byterangesBoundary(getHeader(res, 'content-type'));
      if (boundary !== undefined) parts = parseByteranges(body, boundary);
      else {
        // One part: the registry merged the ranges into one span (allowed by RFC 9110).
        const single = parseContentRange(getHeader(res, 'content-range') ?? '');
        if (!single || single.end - single.start !== body.length) throw new MultipartError(`single-part answer with Content-Range ${JSON.stringify(getHeader(res, 'content-range') ?? '')} and ${body.length} bytes`);
        parts = [{ ...single, data: body }];
      }
    } catch (err) {
      if (err instanceof MultipartError) throw new ContentVerificationError(`${where}: ${err.message}`, desc.digest, 'range');
      throw err;
    }
    if (parts.some((p) => p.size !== undefined && p.size !== desc.size)) {
      throw new ContentVerificationError(`${where}: a part names a blob size other than ${desc.size}`, desc.digest, 'range');
    }
    const slices = sliceRanges(parts, ranges);
    const missing = slices.findIndex((slice) => slice === undefined);
    if (missing >= 0) {
      const { start, end } = ranges[missing]!;
      throw new ContentVerificationError(`${where}: no part covers bytes ${start}-${end - 1}`, desc.digest, 'range');
    }
    return slices as Buffer[];
  }

  private async blobExists(desc: Descriptor, scopes: readonly string[]): Promise<boolean> {
    const operation = 'check blob';
    const path = isManifestMediaType(desc.mediaType) ? `/manifests/${desc.digest}` : `/blobs/${desc.digest}`;
    const headers: Record<string, string> = isManifestMediaType(desc.mediaType) ? { accept: MANIFEST_MEDIA_TYPES.join(', ') } : {};
    const res =
      scopes === this.pushScopes
        ? await this.sendOnPushEndpoint(operation, 'HEAD', path, { headers, scopes })
        : (await this.sendVia('pull', operation, 'HEAD', path, { headers, scopes })).res;
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
    const endpoint = this.pushEndpoint(operation);
    let url = appendQuery(this.endpointUrl(endpoint, '/blobs/uploads/'), 'mount', desc.digest);
    url = appendQuery(url, 'from', source.repository);
    const res = await this.send(operation, 'POST', url, {
      endpoint: endpoint.settings,
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
    const res = await this.sendOnPushEndpoint(operation, 'POST', '/blobs/uploads/', { body: Buffer.alloc(0), scopes: this.pushScopes });
    if (res.status !== 202) throw await responseError(res, operation, 'POST');
    await discardBody(res);
    return this.uploadLocation(res, operation);
  }

  private async finishUpload(location: URL, desc: Descriptor, body: Buffer): Promise<void> {
    const operation = 'finish upload';
    const res = await this.send(operation, 'PUT', appendQuery(location, 'digest', desc.digest), {
      endpoint: this.pushSettingsFor(location, operation),
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
        endpoint: this.pushSettingsFor(upload.location, operation),
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
      const res = await this.send('cancel upload', 'DELETE', location, { endpoint: this.pushSettingsFor(location, 'cancel upload'), scopes: this.pushScopes, followRedirects: false });
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

  async pushManifest(mediaType: string, bytes: Buffer, options: { tag?: string; untagged?: boolean } = {}): Promise<Descriptor> {
    if (bytes.length > MAX_MANIFEST_BYTES) throw new RangeError(`push manifest ${this.displayName}: manifest of ${bytes.length} bytes exceeds ${MAX_MANIFEST_BYTES}`);
    const digest = sha256Digest(bytes);
    await this.putManifest(mediaType, bytes, options.untagged ? digest : (options.tag ?? this.reference.tag ?? digest), digest);
    return { mediaType, digest, size: bytes.length };
  }

  async fetchManifest(target: string): Promise<{ descriptor: Descriptor; bytes: Buffer } | undefined> {
    const byDigest = target.includes(':');
    try {
      const got = await this.getManifest(target, byDigest ? { digest: target } : undefined, 'fetch manifest', 'pull');
      return { descriptor: { mediaType: got.contentType ?? '', digest: got.digest, size: got.bytes.length }, bytes: got.bytes };
    } catch (err) {
      if (err instanceof RegistryError && err.status === 404) return undefined;
      throw err;
    }
  }

  private async putManifest(mediaType: string, bytes: Buffer, target: string, digest: string): Promise<void> {
    const operation = 'push manifest';
    const res = await this.sendOnPushEndpoint(operation, 'PUT', `/manifests/${target}`, {
      headers: { 'content-type': mediaType },
      body: bytes,
      scopes: this.pushScopes,
      followRedirects: false,
    });
    if (res.status !== 201) throw await responseError(res, operation, 'PUT');
    await discardBody(res);
    this.checkAnnouncedDigest(res, digest, operation);
  }

  private sendOnPushEndpoint(operation: string, method: HttpMethod, path: string, extra: Parameters<RegistryStore['send']>[3] = {}): Promise<HttpResponse> {
    const endpoint = this.pushEndpoint(operation);
    return this.send(operation, method, this.endpointUrl(endpoint, path), { ...extra, endpoint: endpoint.settings });
  }

  async close(): Promise<void> {
    if (this.ownsClient) await this.client.close();
  }
}
