// Loads containerd's gRPC API definitions (the .proto files under <repo>/proto, written from containerd
// 1.6's wire API) with @grpc/proto-loader, and hands out the method definitions (path, serializers) that
// the client in ./client.ts calls through a plain grpc-js Client.
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { MethodDefinition } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type { PackageDefinition } from '@grpc/proto-loader';

/** The top-level proto/ directory: dist/src/containerd/proto.js → ../../../proto (src/ → ../../proto). */
export const PROTO_ROOT = findProtoRoot();

function findProtoRoot(): string {
  for (const up of ['../../../proto', '../../proto']) {
    const dir = resolve(import.meta.dirname, up);
    if (existsSync(join(dir, 'containerd'))) return dir;
  }
  return resolve(import.meta.dirname, '../../../proto');
}

/** The .proto files this client uses, relative to PROTO_ROOT (the snapshots API belongs to the server side). */
export const CLIENT_PROTO_FILES = [
  'containerd/services/content/v1/content.proto',
  'containerd/services/images/v1/images.proto',
  'containerd/services/leases/v1/leases.proto',
  'containerd/services/diff/v1/diff.proto',
  'containerd/services/snapshots/v1/snapshots.proto',
] as const;

/** Fully qualified gRPC service names, as containerd registers them. */
export const SERVICE = {
  content: 'containerd.services.content.v1.Content',
  images: 'containerd.services.images.v1.Images',
  leases: 'containerd.services.leases.v1.Leases',
  diff: 'containerd.services.diff.v1.Diff',
  snapshots: 'containerd.services.snapshots.v1.Snapshots',
} as const;

/**
 * proto-loader options: field names as in the .proto files (snake_case), int64 as JS numbers (sizes stay
 * far below 2^53), enums as their names, defaults filled in so absent fields read as '' / 0 / [] / {}.
 */
const LOADER_OPTIONS = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  arrays: true,
  objects: true,
  includeDirs: [PROTO_ROOT],
};

let cached: PackageDefinition | undefined;

/** Parses the protos once per process. */
export function containerdPackage(): PackageDefinition {
  if (!cached) {
    const missing = CLIENT_PROTO_FILES.filter((f) => !existsSync(join(PROTO_ROOT, f)));
    if (missing.length > 0) throw new Error(`containerd API definitions missing under ${PROTO_ROOT}: ${missing.join(', ')}`);
    cached = loadSync([...CLIENT_PROTO_FILES], LOADER_OPTIONS);
  }
  return cached;
}

/** The definition of `service`.`method` (e.g. SERVICE.content, 'Write'). */
export function methodDefinition<Req, Res>(service: string, method: string): MethodDefinition<Req, Res> {
  const def = containerdPackage()[service];
  if (!def || 'format' in def) throw new Error(`gRPC service ${service} is not in the containerd API definitions`);
  const m = (def as unknown as Record<string, MethodDefinition<Req, Res> | undefined>)[method];
  if (!m) throw new Error(`gRPC method ${service}/${method} is not in the containerd API definitions`);
  return m;
}
