// A small gRPC client for containerd's API over its unix socket: content store, images, leases,
// snapshots and diff, with the namespace (and optionally a lease) carried in every call's metadata as
// containerd expects (`containerd-namespace`, `containerd-lease`). This is what `erofs-lazy rpull` and the
// tests speak; the snapshotter server side lives in src/snapshotter.
import { Client, Metadata, credentials, status } from '@grpc/grpc-js';
import type { CallOptions, ClientDuplexStream } from '@grpc/grpc-js';
import type { Readable } from 'node:stream';
import type { Descriptor } from '../oci/types.js';
import { ContainerdError, isAlreadyExists, isNotFound, toContainerdError } from './errors.js';
import { SERVICE, methodDefinition } from './proto.js';
import {
  fromWireContentInfo,
  fromWireDescriptor,
  fromWireImage,
  fromWireLease,
  fromWireSnapshotInfo,
  toWireDescriptor,
} from './types.js';
import type {
  ContentInfo,
  ImageRecord,
  Lease,
  Mount,
  SnapshotInfo,
  WireContentInfo,
  WireDescriptor,
  WireImage,
  WireLease,
  WireSnapshotInfo,
} from './types.js';

export const NAMESPACE_HEADER = 'containerd-namespace';
export const LEASE_HEADER = 'containerd-lease';
export const DEFAULT_NAMESPACE = 'default';
/** Deadline of an ordinary (metadata) call. */
export const DEFAULT_CALL_TIMEOUT_MS = 60_000;
/** Deadline of Diff/Apply, which unpacks a whole layer. */
export const APPLY_TIMEOUT_MS = 30 * 60_000;
/** Data bytes per content Write message (containerd accepts messages up to 16 MiB). */
export const CONTENT_WRITE_CHUNK_BYTES = 1024 * 1024;
/** How long a content write waits for another writer holding the same ingest ref. */
export const WRITE_LOCKED_WAIT_MS = 10 * 60_000;
const WRITE_LOCKED_FIRST_PAUSE_MS = 100;
const WRITE_LOCKED_MAX_PAUSE_MS = 2000;
/** Largest answer the client accepts (a big snapshot List). */
const MAX_RECEIVE_MESSAGE_BYTES = 64 * 1024 * 1024;

export interface ContainerdClientOptions {
  /** containerd namespace of every call (default "default"). */
  namespace?: string;
  /** Deadline of ordinary calls in ms (default DEFAULT_CALL_TIMEOUT_MS). */
  callTimeoutMs?: number;
}

/** Content for a Write: bytes, a stream of Buffers, or a function opening one (called only if needed). */
export type ContentBody = Buffer | Readable | AsyncIterable<Buffer> | (() => Promise<Readable | AsyncIterable<Buffer> | Buffer>);

/** The unix-socket target grpc-js wants for a containerd address (a path or a unix:// URL). */
export function grpcTarget(address: string): string {
  if (address.startsWith('unix://')) return `unix://${address.slice('unix://'.length)}`;
  if (address.startsWith('unix:')) return address;
  if (!address.startsWith('/')) throw new Error(`containerd address ${JSON.stringify(address)} is not an absolute unix socket path`);
  return `unix://${address}`;
}

/** One namespace (and lease) worth of calls over a shared grpc-js client. */
class Caller {
  constructor(
    readonly grpc: Client,
    readonly namespace: string,
    readonly lease: string | undefined,
    readonly timeoutMs: number,
  ) {}

  metadata(): Metadata {
    const md = new Metadata();
    md.set(NAMESPACE_HEADER, this.namespace);
    if (this.lease) md.set(LEASE_HEADER, this.lease);
    return md;
  }

  private options(timeoutMs = this.timeoutMs): CallOptions {
    return { deadline: Date.now() + timeoutMs };
  }

  unary<Req, Res>(service: string, method: string, request: Req, timeoutMs?: number): Promise<Res> {
    const def = methodDefinition<Req, Res>(service, method);
    const name = methodName(service, method);
    return new Promise((resolve, reject) => {
      this.grpc.makeUnaryRequest<Req, Res>(
        def.path,
        def.requestSerialize,
        def.responseDeserialize,
        request,
        this.metadata(),
        this.options(timeoutMs),
        (err, value) => {
          if (err) reject(toContainerdError(name, err));
          else if (value === undefined) reject(new ContainerdError(name, status.UNKNOWN, 'empty answer'));
          else resolve(value);
        },
      );
    });
  }

  async serverStream<Req, Res>(service: string, method: string, request: Req): Promise<Res[]> {
    const def = methodDefinition<Req, Res>(service, method);
    const call = this.grpc.makeServerStreamRequest<Req, Res>(
      def.path,
      def.requestSerialize,
      def.responseDeserialize,
      request,
      this.metadata(),
      this.options(),
    );
    const out: Res[] = [];
    try {
      for await (const item of call) out.push(item as Res);
    } catch (err) {
      throw toContainerdError(methodName(service, method), err);
    }
    return out;
  }

  bidi<Req, Res>(service: string, method: string): ClientDuplexStream<Req, Res> {
    const def = methodDefinition<Req, Res>(service, method);
    return this.grpc.makeBidiStreamRequest<Req, Res>(def.path, def.requestSerialize, def.responseDeserialize, this.metadata(), {});
  }
}

/** containerd's answer when another writer holds an ingest ref: UNAVAILABLE "ref … locked for …". */
function isRefLocked(err: unknown): boolean {
  return err instanceof ContainerdError && err.code === status.UNAVAILABLE && /\blocked\b/.test(err.message);
}

function methodName(service: string, method: string): string {
  return `${service.slice(service.lastIndexOf('.') + 1)}/${method}`;
}

type WriteAction = 'STAT' | 'WRITE' | 'COMMIT';

interface WireWriteRequest {
  action: WriteAction;
  ref: string;
  total?: number;
  expected?: string;
  offset?: number;
  data?: Buffer;
  labels?: Record<string, string>;
}

interface WireWriteResponse {
  action: WriteAction;
  offset: number;
  total: number;
  digest: string;
}

async function* chunksOf(body: Buffer | Readable | AsyncIterable<Buffer>, max: number): AsyncGenerator<Buffer> {
  if (Buffer.isBuffer(body)) {
    for (let off = 0; off < body.length; off += max) yield body.subarray(off, Math.min(body.length, off + max));
    return;
  }
  for await (const piece of body as AsyncIterable<Buffer | string>) {
    const buf = typeof piece === 'string' ? Buffer.from(piece) : piece;
    for (let off = 0; off < buf.length; off += max) yield buf.subarray(off, Math.min(buf.length, off + max));
  }
}

/** containerd's content store (containerd.services.content.v1.Content). */
export class ContentApi {
  constructor(private readonly caller: Caller) {}

  /** The committed blob's info, or undefined when containerd does not have it in this namespace. */
  async info(digest: string): Promise<ContentInfo | undefined> {
    try {
      const res = await this.caller.unary<{ digest: string }, { info: WireContentInfo }>(SERVICE.content, 'Info', { digest });
      return fromWireContentInfo(res.info);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** Sets the given labels on a committed blob, leaving its other labels as they are. */
  async setLabels(digest: string, labels: Record<string, string>): Promise<ContentInfo> {
    const paths = Object.keys(labels).map((k) => `labels.${k}`);
    const res = await this.caller.unary<{ info: Partial<WireContentInfo>; update_mask: { paths: string[] } }, { info: WireContentInfo }>(
      SERVICE.content,
      'Update',
      { info: { digest, labels }, update_mask: { paths } },
    );
    return fromWireContentInfo(res.info);
  }

  async delete(digest: string): Promise<void> {
    await this.caller.unary(SERVICE.content, 'Delete', { digest });
  }

  /** Reads a whole (small) blob. */
  async read(digest: string): Promise<Buffer> {
    const parts = await this.caller.serverStream<{ digest: string; offset: number; size: number }, { offset: number; data: Buffer }>(
      SERVICE.content,
      'Read',
      { digest, offset: 0, size: 0 },
    );
    return Buffer.concat(parts.map((p) => p.data));
  }

  /**
   * Writes a blob under `ref`, verified by containerd against `desc`'s digest and size, committed with
   * `labels`. Answers 'exists' (without reading the body) when containerd already has it; containerd then
   * adds it to the caller's lease, as for its own pulls.
   */
  async write(desc: Descriptor, body: ContentBody, options: { ref: string; labels?: Record<string, string> }): Promise<'written' | 'exists'> {
    // Another writer of the same ref (a concurrent pull of the same blob) holds it: wait for it, as
    // containerd's own clients do; once it commits, the next attempt answers 'exists'.
    const deadline = Date.now() + WRITE_LOCKED_WAIT_MS;
    for (let pause = WRITE_LOCKED_FIRST_PAUSE_MS; ; pause = Math.min(pause * 2, WRITE_LOCKED_MAX_PAUSE_MS)) {
      try {
        return await this.writeOnce(desc, body, options);
      } catch (err) {
        if (!isRefLocked(err) || Date.now() + pause > deadline) throw err;
        await new Promise((r) => setTimeout(r, pause));
      }
    }
  }

  private async writeOnce(desc: Descriptor, body: ContentBody, options: { ref: string; labels?: Record<string, string> }): Promise<'written' | 'exists'> {
    const name = methodName(SERVICE.content, 'Write');
    const call = this.caller.bidi<WireWriteRequest, WireWriteResponse>(SERVICE.content, 'Write');
    const responses: WireWriteResponse[] = [];
    let failure: unknown;
    let ended = false;
    let wake: (() => void) | undefined;
    const notify = (): void => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    call.on('data', (r: WireWriteResponse) => {
      responses.push(r);
      notify();
    });
    call.on('error', (err) => {
      failure = err;
      notify();
    });
    call.on('end', () => {
      ended = true;
      notify();
    });
    call.on('drain', notify);
    const sleep = (): Promise<void> => new Promise((r) => (wake = r));
    const next = async (): Promise<WireWriteResponse> => {
      for (;;) {
        if (responses.length > 0) return responses.shift()!;
        if (failure !== undefined) throw failure;
        if (ended) throw new ContainerdError(name, status.UNKNOWN, `stream for ${desc.digest} ended without an answer`);
        await sleep();
      }
    };
    const send = async (msg: WireWriteRequest): Promise<void> => {
      if (failure !== undefined) throw failure;
      if (call.write(msg)) return;
      while (failure === undefined && ended === false && call.writableNeedDrain) await sleep();
      if (failure !== undefined) throw failure;
    };
    const base = { ref: options.ref, total: desc.size, expected: desc.digest };
    try {
      await send({ action: 'STAT', ...base });
      await next();
      let offset = 0;
      const source = typeof body === 'function' ? await body() : body;
      try {
        for await (const chunk of chunksOf(source, CONTENT_WRITE_CHUNK_BYTES)) {
          await send({ action: 'WRITE', ref: options.ref, offset, data: chunk });
          offset += chunk.length;
          // Keep the answers from piling up (one per message).
          responses.splice(0, responses.length);
        }
      } finally {
        if (typeof body === 'function' && !Buffer.isBuffer(source) && 'destroy' in source && typeof source.destroy === 'function') {
          (source as Readable).destroy();
        }
      }
      if (offset !== desc.size) throw new ContainerdError(name, status.INVALID_ARGUMENT, `${desc.digest}: source gave ${offset} bytes, descriptor says ${desc.size}`);
      await send({ action: 'COMMIT', ...base, offset, labels: options.labels ?? {} });
      for (;;) {
        const r = await next();
        if (r.action === 'COMMIT') break;
      }
      call.end();
      return 'written';
    } catch (err) {
      call.cancel();
      if (isAlreadyExists(err)) return 'exists';
      if (err instanceof ContainerdError) throw err;
      if (failure !== undefined && err === failure) throw toContainerdError(`${name} ${desc.digest}`, err);
      throw err;
    }
  }
}

/** containerd's image records (containerd.services.images.v1.Images). */
export class ImagesApi {
  constructor(private readonly caller: Caller) {}

  async get(name: string): Promise<ImageRecord | undefined> {
    try {
      const res = await this.caller.unary<{ name: string }, { image: WireImage }>(SERVICE.images, 'Get', { name });
      return fromWireImage(res.image);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async list(filters: string[] = []): Promise<ImageRecord[]> {
    const res = await this.caller.unary<{ filters: string[] }, { images: WireImage[] }>(SERVICE.images, 'List', { filters });
    return res.images.map(fromWireImage);
  }

  async create(image: { name: string; target: Descriptor; labels?: Record<string, string> }): Promise<ImageRecord> {
    const res = await this.caller.unary<{ image: WireImage }, { image: WireImage }>(SERVICE.images, 'Create', {
      image: { name: image.name, labels: image.labels ?? {}, target: toWireDescriptor(image.target) },
    });
    return fromWireImage(res.image);
  }

  /** Updates an image record; with no `paths` all mutable fields (labels, target) are replaced. */
  async update(image: { name: string; target: Descriptor; labels?: Record<string, string> }, paths: string[] = []): Promise<ImageRecord> {
    const res = await this.caller.unary<{ image: WireImage; update_mask: { paths: string[] } | null }, { image: WireImage }>(
      SERVICE.images,
      'Update',
      {
        image: { name: image.name, labels: image.labels ?? {}, target: toWireDescriptor(image.target) },
        update_mask: paths.length > 0 ? { paths } : null,
      },
    );
    return fromWireImage(res.image);
  }

  /** Deletes an image record; with `sync`, containerd's garbage collection runs before the answer. */
  async delete(name: string, options: { sync?: boolean } = {}): Promise<void> {
    await this.caller.unary(SERVICE.images, 'Delete', { name, sync: options.sync ?? false });
  }
}

/** containerd's leases (containerd.services.leases.v1.Leases). */
export class LeasesApi {
  constructor(private readonly caller: Caller) {}

  async create(options: { id?: string; labels?: Record<string, string> } = {}): Promise<Lease> {
    const res = await this.caller.unary<{ id: string; labels: Record<string, string> }, { lease: WireLease }>(SERVICE.leases, 'Create', {
      id: options.id ?? '',
      labels: options.labels ?? {},
    });
    return fromWireLease(res.lease);
  }

  async delete(id: string, options: { sync?: boolean } = {}): Promise<void> {
    await this.caller.unary(SERVICE.leases, 'Delete', { id, sync: options.sync ?? false });
  }

  async list(filters: string[] = []): Promise<Lease[]> {
    const res = await this.caller.unary<{ filters: string[] }, { leases: WireLease[] }>(SERVICE.leases, 'List', { filters });
    return res.leases.map(fromWireLease);
  }
}

/** containerd's snapshots service, for any snapshotter it knows (containerd.services.snapshots.v1.Snapshots). */
export class SnapshotsApi {
  constructor(private readonly caller: Caller) {}

  async prepare(snapshotter: string, key: string, parent: string, labels: Record<string, string> = {}): Promise<Mount[]> {
    const res = await this.caller.unary<object, { mounts: Mount[] }>(SERVICE.snapshots, 'Prepare', { snapshotter, key, parent, labels });
    return res.mounts;
  }

  async view(snapshotter: string, key: string, parent: string, labels: Record<string, string> = {}): Promise<Mount[]> {
    const res = await this.caller.unary<object, { mounts: Mount[] }>(SERVICE.snapshots, 'View', { snapshotter, key, parent, labels });
    return res.mounts;
  }

  async mounts(snapshotter: string, key: string): Promise<Mount[]> {
    const res = await this.caller.unary<object, { mounts: Mount[] }>(SERVICE.snapshots, 'Mounts', { snapshotter, key });
    return res.mounts;
  }

  async commit(snapshotter: string, name: string, key: string, labels: Record<string, string> = {}): Promise<void> {
    await this.caller.unary(SERVICE.snapshots, 'Commit', { snapshotter, name, key, labels });
  }

  async remove(snapshotter: string, key: string): Promise<void> {
    await this.caller.unary(SERVICE.snapshots, 'Remove', { snapshotter, key });
  }

  /** The snapshot's info, or undefined when it does not exist. */
  async stat(snapshotter: string, key: string): Promise<SnapshotInfo | undefined> {
    try {
      const res = await this.caller.unary<object, { info: WireSnapshotInfo }>(SERVICE.snapshots, 'Stat', { snapshotter, key });
      return fromWireSnapshotInfo(res.info);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async list(snapshotter: string, filters: string[] = []): Promise<SnapshotInfo[]> {
    const parts = await this.caller.serverStream<object, { info: WireSnapshotInfo[] }>(SERVICE.snapshots, 'List', { snapshotter, filters });
    return parts.flatMap((p) => p.info.map(fromWireSnapshotInfo));
  }
}

/** containerd's diff service (containerd.services.diff.v1.Diff): applies layer blobs onto mounts. */
export class DiffApi {
  constructor(private readonly caller: Caller) {}

  /**
   * Unpacks the layer blob `desc` (from containerd's content store) into `mounts`; answers the descriptor
   * of what was applied (the uncompressed tar: its digest is the layer's diff ID).
   */
  async apply(desc: Descriptor, mounts: Mount[]): Promise<Descriptor> {
    const res = await this.caller.unary<object, { applied: WireDescriptor }>(
      SERVICE.diff,
      'Apply',
      { diff: toWireDescriptor(desc), mounts, payloads: {} },
      APPLY_TIMEOUT_MS,
    );
    return fromWireDescriptor(res.applied);
  }
}

/** A containerd client for one namespace; `withLease` gives a view whose calls run under a lease. */
export class ContainerdClient {
  readonly content: ContentApi;
  readonly images: ImagesApi;
  readonly leases: LeasesApi;
  readonly snapshots: SnapshotsApi;
  readonly diff: DiffApi;

  private constructor(
    readonly address: string,
    private readonly caller: Caller,
    private readonly owner: boolean,
  ) {
    this.content = new ContentApi(caller);
    this.images = new ImagesApi(caller);
    this.leases = new LeasesApi(caller);
    this.snapshots = new SnapshotsApi(caller);
    this.diff = new DiffApi(caller);
  }

  /** A client for containerd at `address` (a unix socket path). Connects on the first call. */
  static connect(address: string, options: ContainerdClientOptions = {}): ContainerdClient {
    const grpc = new Client(grpcTarget(address), credentials.createInsecure(), {
      'grpc.max_receive_message_length': MAX_RECEIVE_MESSAGE_BYTES,
      // containerd's socket is local: no keepalive pings, and retry connects quickly.
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1000,
    });
    const caller = new Caller(grpc, options.namespace ?? DEFAULT_NAMESPACE, undefined, options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS);
    return new ContainerdClient(address, caller, true);
  }

  get namespace(): string {
    return this.caller.namespace;
  }

  get lease(): string | undefined {
    return this.caller.lease;
  }

  /** The same connection and namespace, every call carrying `containerd-lease: id`. */
  withLease(id: string): ContainerdClient {
    return new ContainerdClient(this.address, new Caller(this.caller.grpc, this.caller.namespace, id, this.caller.timeoutMs), false);
  }

  /** Closes the connection (only the client made by connect(); lease views share it). */
  close(): void {
    if (this.owner) this.caller.grpc.close();
  }
}
