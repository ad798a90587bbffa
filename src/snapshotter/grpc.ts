// gRPC glue of the snapshotter: loads containerd's snapshots service definition from <repo>/proto with
// @grpc/proto-loader, turns requests into Snapshotter calls and results back into wire messages, maps
// SnapshotError classes to the status codes containerd's proxy client turns into errdefs, and serves it all
// on a unix socket (a stale socket file is replaced; the socket is made owner-only).
import { existsSync } from 'node:fs';
import { chmod, mkdir, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { errorMessage, SnapshotError } from './errors.js';
import type { SnapshotErrorCode } from './errors.js';
import type { MountSpec, SnapshotInfo, Snapshotter } from './snapshots.js';

export const SNAPSHOTS_SERVICE_NAME = 'containerd.services.snapshots.v1.Snapshots';
export const SNAPSHOTS_PROTO_FILE = 'containerd/services/snapshots/v1/snapshots.proto';
/** Mode of the listening socket: only root (containerd) may connect. */
export const SOCKET_MODE = 0o600;
/** Infos per List response message (containerd's client reads any batch size). */
const LIST_BATCH = 100;
/** How long stop() lets calls in progress finish before cutting them. */
const SHUTDOWN_GRACE_MS = 5_000;
/** How long the stale-socket probe waits for a connection. */
const SOCKET_PROBE_TIMEOUT_MS = 1_000;

/** The top-level proto/ directory: dist/src/snapshotter/x.js → ../../../proto, src/snapshotter/x.ts → ../../proto. */
export function protoRoot(): string {
  for (const up of ['../../../proto', '../../proto']) {
    const dir = resolve(import.meta.dirname, up);
    if (existsSync(join(dir, SNAPSHOTS_PROTO_FILE))) return dir;
  }
  throw new Error(`containerd snapshots API definition ${SNAPSHOTS_PROTO_FILE} not found above ${import.meta.dirname}`);
}

/** proto-loader options shared with clients: proto field names, int64 as numbers, enums as names, defaults filled. */
export const PROTO_LOADER_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, arrays: true, objects: true } as const;

export function loadSnapshotsService(): grpc.ServiceDefinition {
  const def = loadSync(SNAPSHOTS_PROTO_FILE, { ...PROTO_LOADER_OPTIONS, includeDirs: [protoRoot()] });
  const service = def[SNAPSHOTS_SERVICE_NAME];
  if (!service || 'format' in service) throw new Error(`${SNAPSHOTS_SERVICE_NAME} is not a service in ${SNAPSHOTS_PROTO_FILE}`);
  return service as unknown as grpc.ServiceDefinition;
}

// Wire shapes (proto field names; see proto/containerd/services/snapshots/v1/snapshots.proto).
export type WireKind = 'UNKNOWN' | 'VIEW' | 'ACTIVE' | 'COMMITTED';
export interface WireTimestamp {
  seconds: number;
  nanos: number;
}
export interface WireMount {
  type: string;
  source: string;
  target?: string;
  options: string[];
}
export interface WireInfo {
  name: string;
  parent: string;
  kind: WireKind;
  created_at: WireTimestamp | null;
  updated_at: WireTimestamp | null;
  labels: Record<string, string>;
}
interface KeyRequest {
  key: string;
}
interface CreateRequest {
  key: string;
  parent: string;
  labels: Record<string, string>;
}
interface CommitRequest {
  name: string;
  key: string;
  labels: Record<string, string>;
}
interface UpdateRequest {
  info: WireInfo | null;
  update_mask: { paths: string[] } | null;
}
interface ListRequest {
  filters: string[];
}

const KIND_TO_WIRE: Record<SnapshotInfo['kind'], WireKind> = { active: 'ACTIVE', view: 'VIEW', committed: 'COMMITTED' };

const STATUS_OF: Record<SnapshotErrorCode, grpc.status> = {
  'not-found': grpc.status.NOT_FOUND,
  'already-exists': grpc.status.ALREADY_EXISTS,
  'failed-precondition': grpc.status.FAILED_PRECONDITION,
  'invalid-argument': grpc.status.INVALID_ARGUMENT,
  unavailable: grpc.status.UNAVAILABLE,
};

export function toTimestamp(date: Date): WireTimestamp {
  const ms = date.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: (ms - seconds * 1000) * 1_000_000 };
}

export function toWireInfo(info: SnapshotInfo): WireInfo {
  return {
    name: info.name,
    parent: info.parent ?? '',
    kind: KIND_TO_WIRE[info.kind],
    created_at: toTimestamp(info.createdAt),
    updated_at: toTimestamp(info.updatedAt),
    labels: info.labels,
  };
}

function toWireMounts(mounts: MountSpec[]): { mounts: WireMount[] } {
  return { mounts: mounts.map((m) => ({ type: m.type, source: m.source, target: '', options: m.options })) };
}

function toServiceError(err: unknown): Partial<grpc.ServiceError> {
  const code = err instanceof SnapshotError ? STATUS_OF[err.code] : grpc.status.UNKNOWN;
  return { code, details: errorMessage(err), message: errorMessage(err) };
}

export class SnapshotsGrpcServer {
  readonly #server: grpc.Server;
  readonly #socket: string;

  private constructor(server: grpc.Server, socket: string) {
    this.#server = server;
    this.#socket = socket;
  }

  /** Serves `snapshotter` on the unix socket `socketPath`. */
  static async listen(snapshotter: Snapshotter, socketPath: string, log: (line: string) => void): Promise<SnapshotsGrpcServer> {
    const socket = resolve(socketPath);
    await prepareSocketPath(socket);
    const server = new grpc.Server();
    server.addService(loadSnapshotsService(), buildHandlers(snapshotter, log));
    await new Promise<void>((res, rej) => {
      server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? rej(new Error(`listening on ${socket}: ${err.message}`)) : res()));
    });
    await chmod(socket, SOCKET_MODE);
    return new SnapshotsGrpcServer(server, socket);
  }

  get socket(): string {
    return this.#socket;
  }

  /** Stops accepting calls, lets running ones finish for a short while, removes the socket. */
  async close(): Promise<void> {
    await new Promise<void>((res) => {
      const timer = setTimeout(() => {
        this.#server.forceShutdown();
        res();
      }, SHUTDOWN_GRACE_MS);
      this.#server.tryShutdown(() => {
        clearTimeout(timer);
        res();
      });
    });
    await unlink(this.#socket).catch(() => undefined);
  }
}

/** Whether something accepts connections on the unix socket. */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((res) => {
    const s = connect(path);
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      res(ok);
    };
    const timer = setTimeout(() => done(false), SOCKET_PROBE_TIMEOUT_MS);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** Creates the socket's directory and removes a stale socket (refusing when a server still answers on it). */
async function prepareSocketPath(socket: string): Promise<void> {
  await mkdir(dirname(socket), { recursive: true });
  if (!existsSync(socket)) return;
  if (await socketAnswers(socket)) throw new Error(`${socket} is in use by a running server`);
  await unlink(socket);
}

function unary<Req, Res>(log: (line: string) => void, method: string, fn: (req: Req) => Promise<Res> | Res): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => fn(call.request))
      .then(
        (res) => callback(null, res),
        (err: unknown) => {
          if (!(err instanceof SnapshotError)) log(`${method} failed: ${errorMessage(err)}`);
          callback(toServiceError(err));
        },
      );
  };
}

function buildHandlers(s: Snapshotter, log: (line: string) => void): grpc.UntypedServiceImplementation {
  const list: grpc.handleServerStreamingCall<ListRequest, { info: WireInfo[] }> = (call) => {
    try {
      const infos = s.list(call.request.filters ?? []).map(toWireInfo);
      for (let i = 0; i < infos.length; i += LIST_BATCH) call.write({ info: infos.slice(i, i + LIST_BATCH) });
      call.end();
    } catch (err) {
      if (!(err instanceof SnapshotError)) log(`List failed: ${errorMessage(err)}`);
      call.destroy(Object.assign(new Error(errorMessage(err)), toServiceError(err)));
    }
  };
  return {
    Prepare: unary<CreateRequest, { mounts: WireMount[] }>(log, 'Prepare', async (r) => toWireMounts(await s.prepare(r.key, r.parent, r.labels ?? {}))),
    View: unary<CreateRequest, { mounts: WireMount[] }>(log, 'View', async (r) => toWireMounts(await s.view(r.key, r.parent, r.labels ?? {}))),
    Mounts: unary<KeyRequest, { mounts: WireMount[] }>(log, 'Mounts', async (r) => toWireMounts(await s.mounts(r.key))),
    Commit: unary<CommitRequest, object>(log, 'Commit', async (r) => {
      await s.commit(r.name, r.key, r.labels ?? {});
      return {};
    }),
    Remove: unary<KeyRequest, object>(log, 'Remove', async (r) => {
      await s.remove(r.key);
      return {};
    }),
    Stat: unary<KeyRequest, { info: WireInfo }>(log, 'Stat', (r) => ({ info: toWireInfo(s.stat(r.key)) })),
    Update: unary<UpdateRequest, { info: WireInfo }>(log, 'Update', async (r) => {
      const info = r.info ?? { name: '', labels: {} };
      return { info: toWireInfo(await s.update({ name: info.name, labels: info.labels ?? {} }, r.update_mask?.paths ?? [])) };
    }),
    List: list,
    Usage: unary<KeyRequest, { size: number; inodes: number }>(log, 'Usage', (r) => s.usage(r.key)),
    Cleanup: unary<object, object>(log, 'Cleanup', async () => {
      await s.cleanup();
      return {};
    }),
  };
}
