// The containerd API objects as the client exposes them (camelCase), and their wire forms (the proto
// field names, snake_case, as @grpc/proto-loader reads and writes them with keepCase), with converters.
import type { Descriptor } from '../oci/types.js';

/** A mount as containerd's snapshotters return it (containerd.types.Mount). */
export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export type SnapshotKind = 'UNKNOWN' | 'VIEW' | 'ACTIVE' | 'COMMITTED';

export interface SnapshotInfo {
  name: string;
  parent: string;
  kind: SnapshotKind;
  labels: Record<string, string>;
  createdAt?: Date;
  updatedAt?: Date;
}

export interface ContentInfo {
  digest: string;
  size: number;
  labels: Record<string, string>;
  createdAt?: Date;
  updatedAt?: Date;
}

export interface ImageRecord {
  name: string;
  labels: Record<string, string>;
  target: Descriptor;
  createdAt?: Date;
  updatedAt?: Date;
}

export interface Lease {
  id: string;
  labels: Record<string, string>;
  createdAt?: Date;
}

// Wire forms.

export interface WireTimestamp {
  seconds: number;
  nanos: number;
}

export interface WireDescriptor {
  media_type: string;
  digest: string;
  size: number;
  annotations: Record<string, string>;
}

export interface WireSnapshotInfo {
  name: string;
  parent: string;
  kind: SnapshotKind;
  created_at?: WireTimestamp | null;
  updated_at?: WireTimestamp | null;
  labels: Record<string, string>;
}

export interface WireContentInfo {
  digest: string;
  size: number;
  created_at?: WireTimestamp | null;
  updated_at?: WireTimestamp | null;
  labels: Record<string, string>;
}

export interface WireImage {
  name: string;
  labels: Record<string, string>;
  target?: WireDescriptor | null;
  created_at?: WireTimestamp | null;
  updated_at?: WireTimestamp | null;
}

export interface WireLease {
  id: string;
  created_at?: WireTimestamp | null;
  labels: Record<string, string>;
}

export function fromTimestamp(ts: WireTimestamp | null | undefined): Date | undefined {
  if (!ts) return undefined;
  return new Date(Number(ts.seconds) * 1000 + Math.floor(Number(ts.nanos) / 1e6));
}

export function toWireDescriptor(desc: Descriptor): WireDescriptor {
  return { media_type: desc.mediaType, digest: desc.digest, size: desc.size, annotations: { ...(desc.annotations ?? {}) } };
}

export function fromWireDescriptor(w: WireDescriptor | null | undefined): Descriptor {
  if (!w) return { mediaType: '', digest: '', size: 0 };
  const desc: Descriptor = { mediaType: w.media_type, digest: w.digest, size: Number(w.size) };
  if (w.annotations && Object.keys(w.annotations).length > 0) desc.annotations = { ...w.annotations };
  return desc;
}

export function fromWireSnapshotInfo(w: WireSnapshotInfo): SnapshotInfo {
  return {
    name: w.name,
    parent: w.parent,
    kind: w.kind,
    labels: { ...(w.labels ?? {}) },
    createdAt: fromTimestamp(w.created_at),
    updatedAt: fromTimestamp(w.updated_at),
  };
}

export function fromWireContentInfo(w: WireContentInfo): ContentInfo {
  return {
    digest: w.digest,
    size: Number(w.size),
    labels: { ...(w.labels ?? {}) },
    createdAt: fromTimestamp(w.created_at),
    updatedAt: fromTimestamp(w.updated_at),
  };
}

export function fromWireImage(w: WireImage): ImageRecord {
  return {
    name: w.name,
    labels: { ...(w.labels ?? {}) },
    target: fromWireDescriptor(w.target),
    createdAt: fromTimestamp(w.created_at),
    updatedAt: fromTimestamp(w.updated_at),
  };
}

export function fromWireLease(w: WireLease): Lease {
  return { id: w.id, labels: { ...(w.labels ?? {}) }, createdAt: fromTimestamp(w.created_at) };
}
